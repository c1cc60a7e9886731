// swiglu.cpp: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)); backward
//   dgate = dout * up * s * (1 + g * (1 - s)),  dup = dout * g * s,   s = sigmoid(g).
// Sections: reference (fm::silu from shared_math.h), fast path (OpenMP + AVX-512 exp).
#include "kernels/cpu/swiglu.h"

#include <cmath>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace frugal {

// ---- reference ------------------------------------------------------------------------------
void swiglu_forward_ref(float* out, const float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = fm::silu(gate[i]) * up[i];
}

void swiglu_backward_ref(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float g = gate[i];
    dgate[i] = dout[i] * up[i] * fm::silu_grad(g);
    dup[i] = dout[i] * fm::silu(g);
  }
}

// ---- fast path ------------------------------------------------------------------------------
#if defined(__AVX512F__)
// exp(x) in fp32: x = n*ln2 + r, |r| <= ln2/2, e^r by its degree-7 Taylor polynomial (truncation
// 5e-9 relative, below fp32 rounding), 2^n by scalef (gives 0 / inf outside the fp32 range).
static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.8f)), _mm512_set1_ps(-104.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);      // ln2 high part (exact n*hi)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);         // ln2 low part
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
static inline __m512 sigmoid512(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}
#endif

static constexpr size_t kChunk = 4096;  // elements per OpenMP work item

void swiglu_forward(float* out, const float* gate, const float* up, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (long ch = 0; ch < nchunks; ++ch) {
    size_t i = (size_t)ch * kChunk, end = i + kChunk < n ? i + kChunk : n;
#if defined(__AVX512F__)
    for (; i + 16 <= end; i += 16) {
      __m512 g = _mm512_loadu_ps(gate + i);
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid512(g)), _mm512_loadu_ps(up + i)));
    }
    if (i < end) {
      __mmask16 m = (__mmask16)((1u << (end - i)) - 1);
      __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
      _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid512(g)), _mm512_maskz_loadu_ps(m, up + i)));
      i = end;
    }
#endif
    for (; i < end; ++i) out[i] = fm::silu(gate[i]) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (long ch = 0; ch < nchunks; ++ch) {
    size_t i = (size_t)ch * kChunk, end = i + kChunk < n ? i + kChunk : n;
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.f);
    for (; i < end; i += 16) {
      __mmask16 m = end - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (end - i)) - 1);
      __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
      __m512 d = _mm512_maskz_loadu_ps(m, dout + i);
      __m512 s = sigmoid512(g);
      __m512 gs = _mm512_mul_ps(g, s);                                            // silu(g)
      __m512 dsilu = _mm512_mul_ps(s, _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));  // s*(1+g*(1-s))
      _mm512_mask_storeu_ps(dgate + i, m, _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu));
      _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(d, gs));
    }
    i = end;
#endif
    for (; i < end; ++i) {
      float g = gate[i];
      dgate[i] = dout[i] * up[i] * fm::silu_grad(g);
      dup[i] = dout[i] * fm::silu(g);
    }
  }
}

}  // namespace frugal
