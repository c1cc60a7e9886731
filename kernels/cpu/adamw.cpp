// adamw.cpp: AdamW element update, gradient sum of squares and scaling over fixed chunks (see
// adamw.h; the math and torch's order of operations are in src/model/optim.h).
// Sections: the element update, fast paths (AVX-512 16 lanes, scalar tail), references.
#include "kernels/cpu/adamw.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cmath>

namespace frugal {

namespace {

// One element, torch's order of fp32 operations.
// kSmall: torch's lerp takes fma(weight, end-start, start) when weight < 0.5, else
// fma(weight-1, end-start, end) (its vectorized CPU kernel).
template <bool kSmall>
inline void adamw_elem(float& w, float g, float& m, float& v, const AdamWScalars& k) {
  const float wi = w * k.decay;  // decoupled weight decay first
  const float mi = kSmall ? std::fma(k.w1, g - m, m) : std::fma(k.w1 - 1.f, g - m, g);
  float vi = v * k.beta2;         // exp_avg_sq.mul_(beta2)
  vi = vi + k.one_m_b2 * g * g;   // .addcmul_(g, g, value=1-beta2)
  const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
  w = wi + k.neg_step * mi / denom;  // .addcdiv_(m, denom, value=-step_size)
  m = mi;
  v = vi;
}

template <bool kSmall>
void adamw_chunk(float* __restrict w, const float* __restrict g, float* __restrict m, float* __restrict v,
                 size_t n, const AdamWScalars k) {
  size_t i = 0;
#if defined(__AVX512F__)
  // The same operations 16 lanes at a time (the scalar loop does not vectorize: sqrtf may set
  // errno). Tail elements take the scalar path; which path an element takes depends only on its
  // position in the chunk, never on the thread count.
  const __m512 decay = _mm512_set1_ps(k.decay), w1 = _mm512_set1_ps(kSmall ? k.w1 : k.w1 - 1.f);
  const __m512 beta2 = _mm512_set1_ps(k.beta2), omb2 = _mm512_set1_ps(k.one_m_b2);
  const __m512 nstep = _mm512_set1_ps(k.neg_step), bc2s = _mm512_set1_ps(k.bc2_sqrt), eps = _mm512_set1_ps(k.eps);
  for (; i + 16 <= n; i += 16) {
    const __m512 gi = _mm512_loadu_ps(g + i), mo = _mm512_loadu_ps(m + i);
    const __m512 wi = _mm512_mul_ps(_mm512_loadu_ps(w + i), decay);
    const __m512 mi = _mm512_fmadd_ps(w1, _mm512_sub_ps(gi, mo), kSmall ? mo : gi);
    __m512 vi = _mm512_mul_ps(_mm512_loadu_ps(v + i), beta2);
    vi = _mm512_add_ps(vi, _mm512_mul_ps(_mm512_mul_ps(omb2, gi), gi));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2s), eps);
    _mm512_storeu_ps(w + i, _mm512_add_ps(wi, _mm512_div_ps(_mm512_mul_ps(nstep, mi), denom)));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
  }
#endif
  for (; i < n; ++i) adamw_elem<kSmall>(w[i], g[i], m[i], v[i], k);
}

}  // namespace

// ---- fast paths ----------------------------------------------------------------------------------

void adamw_update(const AdamWChunk* chunks, size_t count, const AdamWScalars& k) {
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < count; ++c) {
    const AdamWChunk& ch = chunks[c];
    if (k.small_w)
      adamw_chunk<true>(ch.w, ch.g, ch.m, ch.v, ch.n, k);
    else
      adamw_chunk<false>(ch.w, ch.g, ch.m, ch.v, ch.n, k);
  }
}

void grad_sq_sums(const GradChunk* chunks, size_t count, double* partial) {
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < count; ++c) {
    const float* g = chunks[c].g;
    double s = 0.0;
    // simd reduction: a fixed (vector-width) summation order, independent of the threads
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < chunks[c].n; ++i) s += (double)g[i] * (double)g[i];
    partial[c] = s;
  }
}

void grad_scale(const GradChunk* chunks, size_t count, float coef) {
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < count; ++c) {
    float* g = chunks[c].g;
#pragma omp simd
    for (size_t i = 0; i < chunks[c].n; ++i) g[i] *= coef;
  }
}

// ---- references ------------------------------------------------------------------------------------

void adamw_update_ref(const AdamWChunk* chunks, size_t count, const AdamWScalars& k) {
  for (size_t c = 0; c < count; ++c)
    for (size_t i = 0; i < chunks[c].n; ++i) {
      const AdamWChunk& ch = chunks[c];
      if (k.small_w)
        adamw_elem<true>(ch.w[i], ch.g[i], ch.m[i], ch.v[i], k);
      else
        adamw_elem<false>(ch.w[i], ch.g[i], ch.m[i], ch.v[i], k);
    }
}

void grad_sq_sums_ref(const GradChunk* chunks, size_t count, double* partial) {
  for (size_t c = 0; c < count; ++c) {
    double s = 0.0;
    for (size_t i = 0; i < chunks[c].n; ++i) s += (double)chunks[c].g[i] * (double)chunks[c].g[i];
    partial[c] = s;
  }
}

void grad_scale_ref(const GradChunk* chunks, size_t count, float coef) {
  for (size_t c = 0; c < count; ++c)
    for (size_t i = 0; i < chunks[c].n; ++i) chunks[c].g[i] *= coef;
}

}  // namespace frugal
