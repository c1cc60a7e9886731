// lm_head_ce.cpp: fused lm_head + cross-entropy without the [M,V] logits.
//   Valid rows (target != -100) are gathered into chunks of kRowChunk rows. Per row chunk:
//   pass 1 walks the vocab in chunks of kVocabChunk: logits chunk = x_rc·W_vcᵀ (oneDNN GEMM, fp32),
//   online max/sum-of-exp per row (fp32), target logit picked up -> lse, loss = lse - z_target.
//   pass 2 (only when dW is wanted) recomputes each logits chunk and forms
//   G = grad_scale·(softmax - onehot) in bf16, then dx_rc += G·W_vc and dW_vc += Gᵀ·x_rc.
//   dx without dW (frozen lm_head: LoRA training) needs no second pass: pass 1 also forms
//   P = exp(z - m_running) in bf16 (target entry 0) and accumulates acc_rc = Σ P·W_vc, rescaling
//   a row of acc by e^{m_old - m_new} whenever its running max grows (online softmax, as in
//   FlashAttention's O). At the end dx_r = grad_scale·(acc_r / ℓ_r + (p_t - 1)·W_t), the target
//   term in fp32. One logits GEMM instead of two: 2 GEMMs of 2·M·C·V instead of 3.
//   Scratch: O(kRowChunk·kVocabChunk) fp32 + bf16, plus O(kRowChunk·C).
// Sections: reference, fast path.
#include "kernels/cpu/lm_head_ce.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/gemm.h"

namespace frugal {

namespace {
constexpr int kRowChunk = kLmHeadRowChunk;
constexpr int kVocabChunk = kLmHeadVocabChunk;

void check_args(const int32_t* targets, int M, int C, int V, const char* who) {
  FRUGAL_CHECK(M >= 0 && C > 0 && V > 0, who, ": bad sizes M=", M, " C=", C, " V=", V);
  for (int r = 0; r < M; ++r) {
    int32_t t = targets[r];
    if (t != kIgnoreIndex && (t < 0 || t >= V))
      fail(who, ": target ", t, " at row ", r, " is outside [0, V=", V, ") and is not the ignore index ",
           kIgnoreIndex);
  }
}
}  // namespace

// ---- reference -----------------------------------------------------------------------------
double lm_head_ce_ref64(const double* x, const double* W, const int32_t* targets, int M, int C,
                        int V, double grad_scale, double* dx, double* dW, double* losses) {
  check_args(targets, M, C, V, "lm_head_ce_ref64");
  std::vector<double> z((size_t)M * V);  // logits: [M, V] fp64
  const bool par = (double)M * V * C > 1e6;  // tiny problems (finite differences) stay serial
#pragma omp parallel for schedule(static) if (par)
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < V; ++v) {
      double acc = 0.0;
      for (int c = 0; c < C; ++c) acc += x[(size_t)r * C + c] * W[(size_t)v * C + c];
      z[(size_t)r * V + v] = acc;
    }
  double total = 0.0;
  std::vector<double> G((size_t)M * V, 0.0);  // grad_scale·(softmax - onehot), 0 for ignored rows
  for (int r = 0; r < M; ++r) {
    const double* zr = &z[(size_t)r * V];
    if (targets[r] == kIgnoreIndex) {
      if (losses) losses[r] = 0.0;
      continue;
    }
    double mx = -INFINITY;
    for (int v = 0; v < V; ++v) mx = std::max(mx, zr[v]);
    double s = 0.0;
    for (int v = 0; v < V; ++v) s += std::exp(zr[v] - mx);
    double lse = mx + std::log(s);
    double loss = lse - zr[targets[r]];
    if (losses) losses[r] = loss;
    total += loss;
    for (int v = 0; v < V; ++v)
      G[(size_t)r * V + v] = grad_scale * (std::exp(zr[v] - lse) - (v == targets[r] ? 1.0 : 0.0));
  }
  if (dx) {
#pragma omp parallel for schedule(static) if (par)
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int v = 0; v < V; ++v) acc += G[(size_t)r * V + v] * W[(size_t)v * C + c];
        dx[(size_t)r * C + c] = acc;
      }
  }
  if (dW) {
#pragma omp parallel for schedule(static) if (par)
    for (int v = 0; v < V; ++v)
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int r = 0; r < M; ++r) acc += G[(size_t)r * V + v] * x[(size_t)r * C + c];
        dW[(size_t)v * C + c] += acc;
      }
  }
  return total;
}

double lm_head_ce_ref(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V,
                      float grad_scale, float* dx, float* dW, float* losses) {
  std::vector<double> x64((size_t)M * C), W64((size_t)V * C);
  for (size_t i = 0; i < x64.size(); ++i) x64[i] = x[i].to_float();
  for (size_t i = 0; i < W64.size(); ++i) W64[i] = W[i].to_float();
  std::vector<double> dx64(dx ? (size_t)M * C : 0), dW64(dW ? (size_t)V * C : 0, 0.0), l64(M);
  double total = lm_head_ce_ref64(x64.data(), W64.data(), targets, M, C, V, grad_scale,
                                  dx ? dx64.data() : nullptr, dW ? dW64.data() : nullptr, l64.data());
  if (dx)
    for (size_t i = 0; i < dx64.size(); ++i) dx[i] = (float)dx64[i];
  if (dW)
    for (size_t i = 0; i < dW64.size(); ++i) dW[i] += (float)dW64[i];
  if (losses)
    for (int r = 0; r < M; ++r) losses[r] = (float)l64[r];
  return total;
}

// ---- fast path -----------------------------------------------------------------------------
double lm_head_ce(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V,
                  float grad_scale, float* dx, float* dW, float* losses) {
  check_args(targets, M, C, V, "lm_head_ce");
  const bool want_grad = dx || dW;
  if (dx) std::memset(dx, 0, sizeof(float) * (size_t)M * C);
  if (losses) std::memset(losses, 0, sizeof(float) * (size_t)M);

  std::vector<int> rows;  // indices of non-ignored rows
  rows.reserve(M);
  for (int r = 0; r < M; ++r)
    if (targets[r] != kIgnoreIndex) rows.push_back(r);
  const int nrows = (int)rows.size();
  if (nrows == 0) return 0.0;

  const int RC = std::min(kRowChunk, nrows);
  const int VC = std::min(kVocabChunk, V);
  avector<bf16> xg((size_t)RC * C);        // gathered rows: [rc, C] bf16
  avector<float> z((size_t)RC * VC);       // logits chunk: [rc, vc] fp32 (ld VC)
  avector<bf16> G(want_grad ? (size_t)RC * VC : 0);  // gradient chunk: [rc, vc] bf16 (ld VC)
  avector<float> dxg(dx ? (size_t)RC * C : 0);       // dx of the gathered rows: [rc, C] fp32
  std::vector<fm::OnlineSoftmax> st(RC);
  std::vector<float> lse(RC), zt(RC);
  double total = 0.0;

  for (int r0 = 0; r0 < nrows; r0 += RC) {
    const int rc = std::min(RC, nrows - r0);
    for (int i = 0; i < rc; ++i)
      std::memcpy(&xg[(size_t)i * C], x + (size_t)rows[r0 + i] * C, sizeof(bf16) * C);
    for (int i = 0; i < rc; ++i) st[i] = fm::online_softmax_init();
    if (dx && !dW) {  // single pass: loss and dx together (see the header comment)
      for (int v0 = 0; v0 < V; v0 += VC) {
        const int vc = std::min(VC, V - v0);
        gemm_bf16(false, true, rc, vc, C, 1.f, xg.data(), C, W + (size_t)v0 * C, C, 0.f, z.data(), VC);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < rc; ++i) {
          const float* zi = &z[(size_t)i * VC];
          bf16* gi = &G[(size_t)i * VC];
          float mx = -INFINITY;
          for (int j = 0; j < vc; ++j) mx = std::max(mx, zi[j]);
          const float alpha = fm::online_softmax_rescale(st[i], mx);
          const float m = st[i].m;
          float s = 0.f;
          for (int j = 0; j < vc; ++j) {
            const float e = expf(zi[j] - m);
            s += e;
            gi[j] = bf16::from_float(e);
          }
          st[i].l += s;
          const int t = targets[rows[r0 + i]];
          if (t >= v0 && t < v0 + vc) {
            zt[i] = zi[t - v0];
            gi[t - v0] = bf16::from_float(0.f);  // the target's term is added in fp32 at the end
          }
          if (v0 > 0 && alpha != 1.f) {  // acc_i *= e^{m_old - m_new}
            float* ai = &dxg[(size_t)i * C];
            for (int c = 0; c < C; ++c) ai[c] *= alpha;
          }
        }
        // acc_rc[rc, C] (+)= P[rc, vc] · W_vc[vc, C]
        gemm_bf16(false, false, rc, C, vc, 1.f, G.data(), VC, W + (size_t)v0 * C, C,
                  v0 == 0 ? 0.f : 1.f, dxg.data(), C);
      }
      for (int i = 0; i < rc; ++i) {
        lse[i] = fm::online_softmax_lse(st[i]);
        const float loss = lse[i] - zt[i];
        if (losses) losses[rows[r0 + i]] = loss;
        total += loss;
      }
#pragma omp parallel for schedule(static)
      for (int i = 0; i < rc; ++i) {
        const int t = targets[rows[r0 + i]];
        const float inv_l = grad_scale / st[i].l;                    // ℓ >= 1 (the max term is e^0)
        const float gt = grad_scale * (expf(zt[i] - lse[i]) - 1.f);  // grad_scale·(p_t - 1)
        const float* ai = &dxg[(size_t)i * C];
        const bf16* wt = W + (size_t)t * C;
        float* d = dx + (size_t)rows[r0 + i] * C;
        for (int c = 0; c < C; ++c) d[c] = ai[c] * inv_l + gt * wt[c].to_float();
      }
      continue;
    }

    // pass 1: online logsumexp over vocab chunks
    for (int v0 = 0; v0 < V; v0 += VC) {
      const int vc = std::min(VC, V - v0);
      gemm_bf16(false, true, rc, vc, C, 1.f, xg.data(), C, W + (size_t)v0 * C, C, 0.f, z.data(), VC);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < rc; ++i) {
        const float* zi = &z[(size_t)i * VC];
        float mx = -INFINITY;
        for (int j = 0; j < vc; ++j) mx = std::max(mx, zi[j]);
        fm::online_softmax_rescale(st[i], mx);
        const float m = st[i].m;
        float s = 0.f;
        for (int j = 0; j < vc; ++j) s += expf(zi[j] - m);
        st[i].l += s;
        const int t = targets[rows[r0 + i]];
        if (t >= v0 && t < v0 + vc) zt[i] = zi[t - v0];
      }
    }
    for (int i = 0; i < rc; ++i) {
      lse[i] = fm::online_softmax_lse(st[i]);
      const float loss = lse[i] - zt[i];
      if (losses) losses[rows[r0 + i]] = loss;
      total += loss;
    }
    if (!want_grad) continue;

    // pass 2: recompute logits, G = grad_scale·(softmax - onehot) -> dx, dW
    for (int v0 = 0; v0 < V; v0 += VC) {
      const int vc = std::min(VC, V - v0);
      gemm_bf16(false, true, rc, vc, C, 1.f, xg.data(), C, W + (size_t)v0 * C, C, 0.f, z.data(), VC);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < rc; ++i) {
        const float* zi = &z[(size_t)i * VC];
        bf16* gi = &G[(size_t)i * VC];
        const float l = lse[i];
        for (int j = 0; j < vc; ++j) gi[j] = bf16::from_float(grad_scale * expf(zi[j] - l));
        const int t = targets[rows[r0 + i]];
        if (t >= v0 && t < v0 + vc)
          gi[t - v0] = bf16::from_float(grad_scale * (expf(zi[t - v0] - l) - 1.f));
      }
      // dx_rc[rc, C] (+)= G[rc, vc] · W_vc[vc, C]
      if (dx)
        gemm_bf16(false, false, rc, C, vc, 1.f, G.data(), VC, W + (size_t)v0 * C, C,
                  v0 == 0 ? 0.f : 1.f, dxg.data(), C);
      // dW_vc[vc, C] += Gᵀ[vc, rc] · x_rc[rc, C]
      if (dW)
        gemm_bf16(true, false, vc, C, rc, 1.f, G.data(), VC, xg.data(), C, 1.f,
                  dW + (size_t)v0 * C, C);
    }
    if (dx)
      for (int i = 0; i < rc; ++i)
        std::memcpy(dx + (size_t)rows[r0 + i] * C, &dxg[(size_t)i * C], sizeof(float) * C);
  }
  return total;
}

}  // namespace frugal
