// attention.cpp: FlashAttention-2 on the CPU (SPEC §6; arXiv 2307.08691 Alg. 1-2), fp32.
//   forward : per (b, h, query tile Br) x key tiles Bc: S = τ Q Kᵀ (masked → -inf), online softmax
//             (fm::online_softmax_*), O = e^{m-m'} O + P V; end: O /= ℓ, LSE = m + log ℓ.
//   backward: D = rowsum(dO∘O); per (b, kv head, key tile) x query tiles: P = exp(τ Q Kᵀ - LSE),
//             dV += Pᵀ dO, dP = dO Vᵀ, dS = τ P∘(dP - D), dK += dSᵀ Q, dQ += dS K.
// Sections: small GEMM micro-kernels, row helpers, forward, backward, naive reference.
#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace frugal {

namespace {

constexpr int kBr = 64;   // query rows per tile
constexpr int kBc = 64;   // keys per tile
constexpr int kBcp = 64;  // padded column count of the score tile (multiple of 16)

inline int round16(int n) { return (n + 15) / 16 * 16; }

// ---- small GEMM micro-kernels ---------------------------------------------------------------
// C[M, N] (+)= A[M, K] · B[K, N], fp32. A element (r, k) is A[r*ars + k*acs] (any strides, so Aᵀ
// is free); B row k starts at B + k*ldb, C row r at C + r*ldc. N is a multiple of 16 and B/C
// rows are readable/writable up to N (callers zero-pad). Register block: MR rows x NV·16 cols.
template <int MR, int NV>
inline void micro_kernel(int K, const float* A, int ars, int acs, const float* B, int ldb,
                         float* C, int ldc, bool acc) {
#if defined(__AVX512F__)
  __m512 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      c[r][v] = acc ? _mm512_loadu_ps(C + (size_t)r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + (size_t)k * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      __m512 a = _mm512_set1_ps(A[(size_t)r * ars + (size_t)k * acs]);
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, b[v], c[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + (size_t)r * ldc + 16 * v, c[r][v]);
#else
  float c[MR][NV * 16];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV * 16; ++n) c[r][n] = acc ? C[(size_t)r * ldc + n] : 0.f;
  for (int k = 0; k < K; ++k) {
    const float* b = B + (size_t)k * ldb;
    for (int r = 0; r < MR; ++r) {
      float a = A[(size_t)r * ars + (size_t)k * acs];
      for (int n = 0; n < NV * 16; ++n) c[r][n] += a * b[n];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV * 16; ++n) C[(size_t)r * ldc + n] = c[r][n];
#endif
}

using MicroFn = void (*)(int, const float*, int, int, const float*, int, float*, int, bool);
constexpr int kMR = 6;  // 6 x 4 zmm accumulators + 4 B vectors + 1 broadcast = 29 of 32 registers
const MicroFn kMicro[kMR][4] = {
    {micro_kernel<1, 1>, micro_kernel<1, 2>, micro_kernel<1, 3>, micro_kernel<1, 4>},
    {micro_kernel<2, 1>, micro_kernel<2, 2>, micro_kernel<2, 3>, micro_kernel<2, 4>},
    {micro_kernel<3, 1>, micro_kernel<3, 2>, micro_kernel<3, 3>, micro_kernel<3, 4>},
    {micro_kernel<4, 1>, micro_kernel<4, 2>, micro_kernel<4, 3>, micro_kernel<4, 4>},
    {micro_kernel<5, 1>, micro_kernel<5, 2>, micro_kernel<5, 3>, micro_kernel<5, 4>},
    {micro_kernel<6, 1>, micro_kernel<6, 2>, micro_kernel<6, 3>, micro_kernel<6, 4>},
};

// C[M,N] (+)= A·B as above; N % 16 == 0.
void tile_gemm(int M, int N, int K, const float* A, int ars, int acs, const float* B, int ldb,
               float* C, int ldc, bool acc) {
  for (int n0 = 0; n0 < N; n0 += 64) {
    int nv = std::min(4, (N - n0) / 16);
    for (int m0 = 0; m0 < M; m0 += kMR) {
      int mr = std::min(kMR, M - m0);
      kMicro[mr - 1][nv - 1](K, A + (size_t)m0 * ars, ars, acs, B + n0, ldb,
                             C + (size_t)m0 * ldc + n0, ldc, acc);
    }
  }
}

// ---- row helpers ----------------------------------------------------------------------------
#if defined(__AVX512F__)
// exp(x) for 16 lanes (Cephes expf polynomial, ~1 ulp); x < -87.3 (incl. -inf) gives exactly 0.
inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3365402f), hi = _mm512_set1_ps(88.3762626f);
  __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));  // NaN in x stays NaN (second operand)
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  y = _mm512_scalef_ps(y, n);
  return _mm512_maskz_mov_ps((__mmask16)~under, y);
}
// Horizontal max / sum (written out: GCC 12's _mm512_reduce_* trip -Wuninitialized).
inline float hmax512(__m512 x) {
  alignas(64) float t[16];
  _mm512_store_ps(t, x);
  float m = t[0];
  for (int i = 1; i < 16; ++i) m = t[i] > m ? t[i] : m;
  return m;
}
inline float hsum512(__m512 x) {
  alignas(64) float t[16];
  _mm512_store_ps(t, x);
  float a = 0.f;
  for (int i = 0; i < 16; ++i) a += t[i];
  return a;
}
inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }
#endif

// s[0..n) = τ·s, masked entries (key j0+j invisible to query i) = -inf. Returns the row max.
float scale_mask_max(float* s, int n, float tau, bool unmasked, int i, int j0, const AttnShape& sh) {
  if (!unmasked)
    for (int j = 0; j < n; ++j)
      if (!fm::attn_visible(i, j0 + j, sh.T, sh.S, sh.window_left, sh.window_right))
        s[j] = -INFINITY;
#if defined(__AVX512F__)
  __m512 t = _mm512_set1_ps(tau), m = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < n; j += 16) {
    __mmask16 k = tail_mask(n - j);
    __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), t);
    _mm512_mask_storeu_ps(s + j, k, x);
    m = _mm512_mask_max_ps(m, k, m, x);
  }
  return hmax512(m);
#else
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    s[j] *= tau;
    m = std::max(m, s[j]);
  }
  return m;
#endif
}

// p[j] = exp(s[j] - m) in place for j < n (0 for s = -inf; all 0 when m = -inf). Returns Σ p.
float exp_row(float* s, int n, float m) {
  if (m == -INFINITY) {
    std::fill(s, s + n, 0.f);
    return 0.f;
  }
#if defined(__AVX512F__)
  __m512 mm = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    __mmask16 k = tail_mask(n - j);
    __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), mm));
    p = _mm512_maskz_mov_ps(k, p);
    _mm512_mask_storeu_ps(s + j, k, p);
    acc = _mm512_add_ps(acc, p);
  }
  return hsum512(acc);
#else
  float l = 0.f;
  for (int j = 0; j < n; ++j) {
    s[j] = fm::attn_prob(s[j], m);
    l += s[j];
  }
  return l;
#endif
}

// ds[j] = τ·p[j]·(dp[j] - Di) in place over dp, j < n.
void dsoftmax_row(float* dp, const float* p, int n, float Di, float tau) {
  for (int j = 0; j < n; ++j) dp[j] = tau * p[j] * (dp[j] - Di);
}

// Copy rows [r0, r0+nr) of a [.., stride] tensor (D valid columns) into dst[nr, ld], zero-padded
// to ld columns (and to nr_pad rows).
void copy_rows_padded(float* dst, int ld, int nr_pad, const float* src, size_t stride, int nr,
                      int D) {
  for (int r = 0; r < nr; ++r) {
    std::memcpy(dst + (size_t)r * ld, src + (size_t)r * stride, sizeof(float) * D);
    std::fill(dst + (size_t)r * ld + D, dst + (size_t)(r + 1) * ld, 0.f);
  }
  std::fill(dst + (size_t)nr * ld, dst + (size_t)nr_pad * ld, 0.f);
}
// Transposed copy: dst[D, ld] with dst[d, r] = src[r*stride + d] for r < nr, zero for r ≥ nr.
void copy_rows_transposed(float* dst, int ld, const float* src, size_t stride, int nr, int D) {
  for (int d = 0; d < D; ++d) std::fill(dst + (size_t)d * ld + nr, dst + (size_t)(d + 1) * ld, 0.f);
  for (int r = 0; r < nr; ++r) {
    const float* s = src + (size_t)r * stride;
    for (int d = 0; d < D; ++d) dst[(size_t)d * ld + r] = s[d];
  }
}

}  // namespace

// ---- forward ----------------------------------------------------------------------------------
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttnShape& s) {
  attention_check_shape(s, "attention_forward");
  const int T = s.T, S = s.S, H = s.H, Hkv = s.Hkv, D = s.D, G = H / Hkv;
  const int Dp = round16(D);
  const float tau = attention_scale(s);
  const int nTq = (T + kBr - 1) / kBr;
  const long long items = (long long)s.B * H * nTq;

#pragma omp parallel
  {
    // per-thread scratch, O(Br·Bc + (Br+2·Bc)·D): S/P [Br, Bcp], O [Br, Dp], Kᵀ [D, Bcp], V [Bc, Dp]
    avector<float> Sb((size_t)kBr * kBcp), Ob((size_t)kBr * Dp), Kt((size_t)D * kBcp),
        Vp((size_t)kBc * Dp);
    fm::OnlineSoftmax st[kBr];

#pragma omp for schedule(dynamic, 1)
    for (long long item = 0; item < items; ++item) {
      // heavy (late) query tiles first: under a causal mask they see the most keys
      const int it = nTq - 1 - (int)(item % nTq);
      const int h = (int)((item / nTq) % H), b = (int)(item / ((long long)nTq * H));
      const int kvh = h / G;
      const int i0 = it * kBr, i1 = std::min(T, i0 + kBr), nr = i1 - i0;
      const size_t qrow = (size_t)H * D, kvrow = (size_t)Hkv * D;
      const float* qt = q + (((size_t)b * T + i0) * H + h) * D;         // [nr, D], row stride H·D
      const float* kb = k + ((size_t)b * S * Hkv + kvh) * D;              // [S, D], row stride Hkv·D
      const float* vb = v + ((size_t)b * S * Hkv + kvh) * D;
      float* ot = out + (((size_t)b * T + i0) * H + h) * D;
      float* lt = lse + ((size_t)b * H + h) * T + i0;

      for (int r = 0; r < nr; ++r) st[r] = fm::online_softmax_init();
      std::fill(Ob.begin(), Ob.end(), 0.f);
      int klo, khi;
      fm::attn_key_range(i0, i1, T, S, s.window_left, s.window_right, &klo, &khi);

      for (int j0 = klo; j0 < khi; j0 += kBc) {
        const int j1 = std::min(khi, j0 + kBc), kc = j1 - j0, nc = round16(kc);
        copy_rows_transposed(Kt.data(), kBcp, kb + (size_t)j0 * kvrow, kvrow, kc, D);
        copy_rows_padded(Vp.data(), Dp, kc, vb + (size_t)j0 * kvrow, kvrow, kc, D);
        // S[nr, nc] = Q · Kᵀ
        tile_gemm(nr, nc, D, qt, (int)qrow, 1, Kt.data(), kBcp, Sb.data(), kBcp, false);
        const bool unmasked =
            fm::attn_tile_unmasked(i0, i1, j0, j1, T, S, s.window_left, s.window_right);
        for (int r = 0; r < nr; ++r) {
          float* srow = Sb.data() + (size_t)r * kBcp;
          float m_tile = scale_mask_max(srow, kc, tau, unmasked, i0 + r, j0, s);
          float alpha = fm::online_softmax_rescale(st[r], m_tile);
          st[r].l += exp_row(srow, kc, st[r].m);
          if (alpha != 1.f) {
            float* orow = Ob.data() + (size_t)r * Dp;
            for (int d = 0; d < Dp; ++d) orow[d] *= alpha;
          }
        }
        // O[nr, Dp] += P[nr, kc] · V[kc, Dp]
        tile_gemm(nr, Dp, kc, Sb.data(), kBcp, 1, Vp.data(), Dp, Ob.data(), Dp, true);
      }
      for (int r = 0; r < nr; ++r) {
        const float inv = st[r].l > 0.f ? 1.0f / st[r].l : 0.f;  // fully masked row → O = 0
        const float* orow = Ob.data() + (size_t)r * Dp;
        float* o = ot + (size_t)r * qrow;
        for (int d = 0; d < D; ++d) o[d] = orow[d] * inv;
        lt[r] = fm::online_softmax_lse(st[r]);
      }
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        const AttnShape& s) {
  attention_check_shape(s, "attention_backward");
  const int B = s.B, T = s.T, S = s.S, H = s.H, Hkv = s.Hkv, D = s.D, G = H / Hkv;
  const int Dp = round16(D);
  const float tau = attention_scale(s);
  const size_t qrow = (size_t)H * D, kvrow = (size_t)Hkv * D;

  // Drow[b, h, t] = Σ_d dO·O  ([B,H,T] fp32)
  avector<float> Drow((size_t)B * H * T);
#pragma omp parallel for schedule(static)
  for (long long bt = 0; bt < (long long)B * T; ++bt) {
    const int b = (int)(bt / T), t = (int)(bt % T);
    for (int h = 0; h < H; ++h) {
      const float* o = out + (((size_t)b * T + t) * H + h) * D;
      const float* g = dout + (((size_t)b * T + t) * H + h) * D;
      float acc = 0.f;
      for (int d = 0; d < D; ++d) acc += o[d] * g[d];
      Drow[((size_t)b * H + h) * T + t] = acc;
    }
  }

  // Work items: (pair = b·Hkv + kvh, key tile). dQ of a query row gets contributions from every
  // key tile, so each thread accumulates into its own dQ partial [w pairs, T, G, Dp], reduced
  // after each wave of w pairs; w is chosen so a wave has >= 4 items per thread, but the partials
  // of all threads stay under 64 MB unless w = 1 (then they take threads·T·G·Dp floats).
  const int nK = (S + kBc - 1) / kBc;
  const int npairs = B * Hkv;
  const int maxth = omp_get_max_threads();
  const size_t one_pair_all_threads = sizeof(float) * (size_t)maxth * T * G * Dp;
  const int w_mem = (int)std::max<size_t>(1, (size_t(64) << 20) / one_pair_all_threads);
  const int w = std::clamp((4 * maxth + nK - 1) / nK, 1, std::min(npairs, w_mem));
  const size_t part_size = (size_t)w * T * G * Dp;
  std::vector<float*> parts(maxth, nullptr);
  int nth_used = 1;

#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    nth_used = omp_get_num_threads();
    avector<float> part(part_size);
    parts[tid] = part.data();
    // scratch: K [Bc, Dp], Kᵀ [D, Bcp], Vᵀ [D, Bcp], dK/dV acc [Bc, Dp], Q/dO [Br, Dp], P/dS [Br, Bcp]
    avector<float> Kp((size_t)kBc * Dp), Kt((size_t)D * kBcp), Vt((size_t)D * kBcp),
        dKa((size_t)kBc * Dp), dVa((size_t)kBc * Dp), Qp((size_t)kBr * Dp), dOp((size_t)kBr * Dp),
        Pb((size_t)kBr * kBcp), dSb((size_t)kBr * kBcp);
#pragma omp barrier

    for (int p0 = 0; p0 < npairs; p0 += w) {
      const int wn = std::min(w, npairs - p0);
      std::fill(part.begin(), part.end(), 0.f);

#pragma omp for schedule(dynamic, 1)
      for (long long item = 0; item < (long long)wn * nK; ++item) {
        const int pw = (int)(item / nK), jt = (int)(item % nK);
        const int pair = p0 + pw, b = pair / Hkv, kvh = pair % Hkv;
        const int j0 = jt * kBc, j1 = std::min(S, j0 + kBc), kc = j1 - j0, nc = round16(kc);
        const float* kt = k + (((size_t)b * S + j0) * Hkv + kvh) * D;  // [kc, D], stride Hkv·D
        const float* vt = v + (((size_t)b * S + j0) * Hkv + kvh) * D;
        copy_rows_padded(Kp.data(), Dp, kc, kt, kvrow, kc, D);
        copy_rows_transposed(Kt.data(), kBcp, kt, kvrow, kc, D);
        copy_rows_transposed(Vt.data(), kBcp, vt, kvrow, kc, D);
        std::fill(dKa.begin(), dKa.end(), 0.f);
        std::fill(dVa.begin(), dVa.end(), 0.f);
        int qlo, qhi;
        fm::attn_query_range(j0, j1, T, S, s.window_left, s.window_right, &qlo, &qhi);

        for (int g = 0; g < G; ++g) {
          const int h = kvh * G + g;
          const float* lseh = lse + ((size_t)b * H + h) * T;
          const float* Dh = Drow.data() + ((size_t)b * H + h) * T;
          for (int i0 = qlo; i0 < qhi; i0 += kBr) {
            const int i1 = std::min(qhi, i0 + kBr), nr = i1 - i0;
            copy_rows_padded(Qp.data(), Dp, nr, q + (((size_t)b * T + i0) * H + h) * D, qrow, nr, D);
            copy_rows_padded(dOp.data(), Dp, nr, dout + (((size_t)b * T + i0) * H + h) * D, qrow,
                             nr, D);
            // S[nr, nc] = Q · Kᵀ, then P = exp(τ S - LSE) with the mask re-applied
            tile_gemm(nr, nc, D, Qp.data(), Dp, 1, Kt.data(), kBcp, Pb.data(), kBcp, false);
            const bool unmasked =
                fm::attn_tile_unmasked(i0, i1, j0, j1, T, S, s.window_left, s.window_right);
            for (int r = 0; r < nr; ++r) {
              float* prow = Pb.data() + (size_t)r * kBcp;
              scale_mask_max(prow, kc, tau, unmasked, i0 + r, j0, s);
              exp_row(prow, kc, lseh[i0 + r]);  // LSE = -inf (fully masked row) → P = 0
            }
            // dV[kc, Dp] += Pᵀ · dO
            tile_gemm(kc, Dp, nr, Pb.data(), 1, kBcp, dOp.data(), Dp, dVa.data(), Dp, true);
            // dP[nr, nc] = dO · Vᵀ; dS = τ P∘(dP - D)
            tile_gemm(nr, nc, D, dOp.data(), Dp, 1, Vt.data(), kBcp, dSb.data(), kBcp, false);
            for (int r = 0; r < nr; ++r)
              dsoftmax_row(dSb.data() + (size_t)r * kBcp, Pb.data() + (size_t)r * kBcp, kc,
                           Dh[i0 + r], tau);
            // dK[kc, Dp] += dSᵀ · Q
            tile_gemm(kc, Dp, nr, dSb.data(), 1, kBcp, Qp.data(), Dp, dKa.data(), Dp, true);
            // dQ[nr, Dp] += dS · K   (this thread's partial, rows (pw, i0+r, g))
            float* dqp = part.data() + (((size_t)pw * T + i0) * G + g) * Dp;
            tile_gemm(nr, Dp, kc, dSb.data(), kBcp, 1, Kp.data(), Dp, dqp, G * Dp, true);
          }
        }
        // single writer for this (b, key tile, kv head): overwrite dK, dV
        for (int r = 0; r < kc; ++r) {
          float* dkr = dk + (((size_t)b * S + j0 + r) * Hkv + kvh) * D;
          float* dvr = dv + (((size_t)b * S + j0 + r) * Hkv + kvh) * D;
          std::memcpy(dkr, dKa.data() + (size_t)r * Dp, sizeof(float) * D);
          std::memcpy(dvr, dVa.data() + (size_t)r * Dp, sizeof(float) * D);
        }
      }  // implicit barrier: all partials of this wave are complete

#pragma omp for schedule(static)
      for (long long pt = 0; pt < (long long)wn * T; ++pt) {
        const int pw = (int)(pt / T), t = (int)(pt % T);
        const int pair = p0 + pw, b = pair / Hkv, kvh = pair % Hkv;
        for (int g = 0; g < G; ++g) {
          float* dqr = dq + (((size_t)b * T + t) * H + kvh * G + g) * D;
          const size_t off = (((size_t)pw * T + t) * G + g) * Dp;
          for (int d = 0; d < D; ++d) dqr[d] = parts[0][off + d];
          for (int th = 1; th < nth_used; ++th)
            for (int d = 0; d < D; ++d) dqr[d] += parts[th][off + d];
        }
      }  // implicit barrier before partials are cleared for the next wave
    }
  }
}

// ---- naive reference ----------------------------------------------------------------------------
namespace {

template <class R>
void forward_ref_impl(R* out, R* lse, const R* q, const R* k, const R* v, const AttnShape& s) {
  attention_check_shape(s, "attention_forward_ref");
  const int T = s.T, S = s.S, H = s.H, Hkv = s.Hkv, D = s.D, G = H / Hkv;
  const R tau = (R)attention_scale(s);
  std::vector<R> P((size_t)T * S);  // scores / probabilities of one (b, h): [T, S]
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / G;
      for (int i = 0; i < T; ++i) {
        const R* qi = q + (((size_t)b * T + i) * H + h) * D;
        R m = -std::numeric_limits<R>::infinity();
        for (int j = 0; j < S; ++j) {
          R sc = -std::numeric_limits<R>::infinity();
          if (fm::attn_visible(i, j, T, S, s.window_left, s.window_right)) {
            const R* kj = k + (((size_t)b * S + j) * Hkv + kvh) * D;
            R dot = 0;
            for (int d = 0; d < D; ++d) dot += qi[d] * kj[d];
            sc = tau * dot;
          }
          P[(size_t)i * S + j] = sc;
          m = std::max(m, sc);
        }
        R* oi = out + (((size_t)b * T + i) * H + h) * D;
        R* li = lse + ((size_t)b * H + h) * T + i;
        if (m == -std::numeric_limits<R>::infinity()) {  // nothing visible
          for (int d = 0; d < D; ++d) oi[d] = 0;
          *li = m;
          continue;
        }
        R l = 0;
        for (int j = 0; j < S; ++j) {
          R& p = P[(size_t)i * S + j];
          p = std::exp(p - m);
          l += p;
        }
        for (int d = 0; d < D; ++d) oi[d] = 0;
        for (int j = 0; j < S; ++j) {
          const R p = P[(size_t)i * S + j] / l;
          const R* vj = v + (((size_t)b * S + j) * Hkv + kvh) * D;
          for (int d = 0; d < D; ++d) oi[d] += p * vj[d];
        }
        *li = m + std::log(l);
      }
    }
}

template <class R>
void backward_ref_impl(R* dq, R* dk, R* dv, const R* dout, const R* q, const R* k, const R* v,
                       const AttnShape& s) {
  attention_check_shape(s, "attention_backward_ref");
  const int T = s.T, S = s.S, H = s.H, Hkv = s.Hkv, D = s.D, G = H / Hkv;
  const R tau = (R)attention_scale(s);
  std::fill(dk, dk + (size_t)s.B * S * Hkv * D, R(0));
  std::fill(dv, dv + (size_t)s.B * S * Hkv * D, R(0));
  std::vector<R> P((size_t)T * S), dP((size_t)T * S);  // [T, S] of one (b, h)
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / G;
      auto kp = [&](int j) { return k + (((size_t)b * S + j) * Hkv + kvh) * D; };
      auto vp = [&](int j) { return v + (((size_t)b * S + j) * Hkv + kvh) * D; };
      for (int i = 0; i < T; ++i) {
        const R* qi = q + (((size_t)b * T + i) * H + h) * D;
        const R* gi = dout + (((size_t)b * T + i) * H + h) * D;
        R* Pi = P.data() + (size_t)i * S;
        R* dPi = dP.data() + (size_t)i * S;
        R m = -std::numeric_limits<R>::infinity();
        for (int j = 0; j < S; ++j) {
          Pi[j] = -std::numeric_limits<R>::infinity();
          if (fm::attn_visible(i, j, T, S, s.window_left, s.window_right)) {
            R dot = 0;
            for (int d = 0; d < D; ++d) dot += qi[d] * kp(j)[d];
            Pi[j] = tau * dot;
          }
          m = std::max(m, Pi[j]);
        }
        R l = 0;
        for (int j = 0; j < S; ++j) {
          Pi[j] = m == -std::numeric_limits<R>::infinity() ? R(0) : std::exp(Pi[j] - m);
          l += Pi[j];
        }
        for (int j = 0; j < S; ++j) Pi[j] = l > 0 ? Pi[j] / l : R(0);
        // dP = dO Vᵀ; Drow = Σ_j P dP; dS = P (dP - Drow)
        R Di = 0;
        for (int j = 0; j < S; ++j) {
          R dot = 0;
          for (int d = 0; d < D; ++d) dot += gi[d] * vp(j)[d];
          dPi[j] = dot;
          Di += Pi[j] * dot;
        }
        for (int j = 0; j < S; ++j) dPi[j] = Pi[j] * (dPi[j] - Di);  // dS
        R* dqi = dq + (((size_t)b * T + i) * H + h) * D;
        for (int d = 0; d < D; ++d) dqi[d] = 0;
        for (int j = 0; j < S; ++j) {
          const R ds = tau * dPi[j], p = Pi[j];
          R* dkj = dk + (((size_t)b * S + j) * Hkv + kvh) * D;
          R* dvj = dv + (((size_t)b * S + j) * Hkv + kvh) * D;
          for (int d = 0; d < D; ++d) {
            dqi[d] += ds * kp(j)[d];
            dkj[d] += ds * qi[d];
            dvj[d] += p * gi[d];
          }
        }
      }
    }
}

}  // namespace

void attention_forward_ref(float* out, float* lse, const float* q, const float* k, const float* v,
                           const AttnShape& s) {
  forward_ref_impl<float>(out, lse, q, k, v, s);
}
void attention_forward_ref(double* out, double* lse, const double* q, const double* k,
                           const double* v, const AttnShape& s) {
  forward_ref_impl<double>(out, lse, q, k, v, s);
}
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const AttnShape& s) {
  backward_ref_impl<float>(dq, dk, dv, dout, q, k, v, s);
}
void attention_backward_ref(double* dq, double* dk, double* dv, const double* dout,
                            const double* q, const double* k, const double* v,
                            const AttnShape& s) {
  backward_ref_impl<double>(dq, dk, dv, dout, q, k, v, s);
}

}  // namespace frugal
