// rmsnorm.cpp: RMSNorm forward/backward in fp32 (SPEC §2):
//   rstd = 1/sqrt(mean(x^2) + eps), out = x * rstd * w
//   dx = rstd*(w*dout) - x * rstd^3/C * sum_j(w_j*dout_j*x_j),  dw += sum_n dout*x*rstd
// Sections: reference (fp64 accumulation), fast path (OpenMP over rows, AVX-512 over C).
#include "kernels/cpu/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace frugal {

// ---- reference ------------------------------------------------------------------------------
void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) {
  for (int n = 0; n < N; ++n) {
    const float* xr = x + (size_t)n * C;
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += (double)xr[c] * xr[c];
    double r = 1.0 / std::sqrt(ss / C + (double)eps);
    rstd[n] = (float)r;
    for (int c = 0; c < C; ++c) out[(size_t)n * C + c] = (float)(xr[c] * r * w[c]);
  }
}

void rmsnorm_backward_ref(float* dx, float* dw, const float* dout, const float* x, const float* w,
                          const float* rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* xr = x + (size_t)n * C;
    const float* dr = dout + (size_t)n * C;
    double r = rstd[n], dot = 0;
    for (int c = 0; c < C; ++c) dot += (double)w[c] * dr[c] * xr[c];
    double k = r * r * r * dot / C;
    for (int c = 0; c < C; ++c) {
      dx[(size_t)n * C + c] = (float)(r * w[c] * dr[c] - k * xr[c]);
      if (dw) dw[c] += (float)((double)dr[c] * xr[c] * r);
    }
  }
}

// ---- fast path ------------------------------------------------------------------------------
// sum of squares of a row, fp32 with 16 (AVX-512) or 8 independent partial sums
static inline float row_sumsq(const float* x, int C) {
  int c = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (; c + 32 <= C; c += 32) {
    __m512 v0 = _mm512_loadu_ps(x + c), v1 = _mm512_loadu_ps(x + c + 16);
    a0 = _mm512_fmadd_ps(v0, v0, a0);
    a1 = _mm512_fmadd_ps(v1, v1, a1);
  }
  for (; c + 16 <= C; c += 16) {
    __m512 v = _mm512_loadu_ps(x + c);
    a0 = _mm512_fmadd_ps(v, v, a0);
  }
  if (c < C) {
    __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(m, x + c);
    a1 = _mm512_fmadd_ps(v, v, a1);
    c = C;
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
  for (; c < C; ++c) s += x[c] * x[c];
  return s;
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* xr = x + (size_t)n * C;
    float* yr = out + (size_t)n * C;
    float r = 1.0f / std::sqrt(row_sumsq(xr, C) / (float)C + eps);
    rstd[n] = r;
    int c = 0;
#if defined(__AVX512F__)
    __m512 vr = _mm512_set1_ps(r);
    for (; c + 16 <= C; c += 16)
      _mm512_storeu_ps(yr + c, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(xr + c), vr), _mm512_loadu_ps(w + c)));
    if (c < C) {
      __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + c), vr), _mm512_maskz_loadu_ps(m, w + c));
      _mm512_mask_storeu_ps(yr + c, m, v);
      c = C;
    }
#endif
    for (; c < C; ++c) yr[c] = xr[c] * r * w[c];
  }
}

// One pass per row for dot = sum(w*dout*x), one for dx (and the thread's private dw partial).
// dw partials ([nthreads, C]) are summed in thread order at the end, so results are deterministic.
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C) {
  const int nt_max = omp_get_max_threads();
  std::vector<float> part(dw ? (size_t)nt_max * C : 0, 0.f);
  int nt_used = 1;
#pragma omp parallel
  {
    const int t = omp_get_thread_num();
#pragma omp single
    nt_used = omp_get_num_threads();
    float* dwp = dw ? part.data() + (size_t)t * C : nullptr;
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const float* xr = x + (size_t)n * C;
      const float* dr = dout + (size_t)n * C;
      float* dxr = dx + (size_t)n * C;
      const float r = rstd[n];
      float dot = 0.f;
      int c = 0;
#if defined(__AVX512F__)
      __m512 acc = _mm512_setzero_ps();
      for (; c + 16 <= C; c += 16)
        acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(w + c), _mm512_loadu_ps(dr + c)), _mm512_loadu_ps(xr + c), acc);
      if (c < C) {
        __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, dr + c)),
                              _mm512_maskz_loadu_ps(m, xr + c), acc);
        c = C;
      }
      dot = _mm512_reduce_add_ps(acc);
#endif
      for (; c < C; ++c) dot += w[c] * dr[c] * xr[c];
      const float k = r * r * r * dot / (float)C;
      c = 0;
#if defined(__AVX512F__)
      const __m512 vr = _mm512_set1_ps(r), vk = _mm512_set1_ps(k);
      for (; c + 16 <= C; c += 16) {
        __m512 vx = _mm512_loadu_ps(xr + c), vd = _mm512_loadu_ps(dr + c);
        __m512 g = _mm512_fmsub_ps(_mm512_mul_ps(vr, _mm512_loadu_ps(w + c)), vd, _mm512_mul_ps(vk, vx));
        _mm512_storeu_ps(dxr + c, g);
        if (dwp) _mm512_storeu_ps(dwp + c, _mm512_fmadd_ps(_mm512_mul_ps(vd, vx), vr, _mm512_loadu_ps(dwp + c)));
      }
      if (c < C) {
        __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
        __m512 vx = _mm512_maskz_loadu_ps(m, xr + c), vd = _mm512_maskz_loadu_ps(m, dr + c);
        __m512 g = _mm512_fmsub_ps(_mm512_mul_ps(vr, _mm512_maskz_loadu_ps(m, w + c)), vd, _mm512_mul_ps(vk, vx));
        _mm512_mask_storeu_ps(dxr + c, m, g);
        if (dwp)
          _mm512_mask_storeu_ps(dwp + c, m, _mm512_fmadd_ps(_mm512_mul_ps(vd, vx), vr, _mm512_maskz_loadu_ps(m, dwp + c)));
        c = C;
      }
#endif
      for (; c < C; ++c) {
        dxr[c] = r * w[c] * dr[c] - k * xr[c];
        if (dwp) dwp[c] += dr[c] * xr[c] * r;
      }
    }
  }
  if (dw) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; ++c) {
      float s = 0.f;
      for (int t = 0; t < nt_used; ++t) s += part[(size_t)t * C + c];
      dw[c] += s;
    }
  }
}

}  // namespace frugal
