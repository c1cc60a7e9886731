// shared_math.h: math shared by host (CPU kernels) and device (CUDA kernels) code, so the CPU
// tests cover the GPU's arithmetic too. Plain C++ with FRUGAL_HD; no CUDA types, no STL
// containers. Namespace fm ("frugal math").
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define FRUGAL_HD __host__ __device__ __forceinline__
#else
#define FRUGAL_HD inline
#endif

namespace fm {

// ---- bf16 <-> fp32 ----------------------------------------------------------------------
FRUGAL_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
FRUGAL_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
// Round to nearest, ties to even (what PyTorch's .to(torch.bfloat16) does); NaN stays NaN.
FRUGAL_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
FRUGAL_HD float bf16_bits_to_float(uint16_t b) { return bits_f32((uint32_t)b << 16); }

// IEEE half -> float (for F16 checkpoints).
FRUGAL_HD float f16_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    // subnormal: normalize
    float v = (float)mant * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---- online softmax (FlashAttention-2 update) --------------------------------------------
// Running row state (m = max so far, l = sum of exp(s - m)). Merging a tile whose row max is
// m_tile: m' = max(m, m_tile); the old sum and accumulator are rescaled by exp(m - m').
struct OnlineSoftmax {
  float m;
  float l;
};
FRUGAL_HD OnlineSoftmax online_softmax_init() { return OnlineSoftmax{-INFINITY, 0.0f}; }
// Returns the factor by which the previous accumulator must be scaled; updates st.m only.
// (The caller adds the tile's row sum of exp(s - st.m) to st.l after rescaling.)
FRUGAL_HD float online_softmax_rescale(OnlineSoftmax& st, float m_tile) {
  float m_new = st.m > m_tile ? st.m : m_tile;
  float scale = (st.m == -INFINITY) ? 0.0f : expf(st.m - m_new);
  st.l *= scale;
  st.m = m_new;
  return scale;
}
// log-sum-exp of the row at the end (fully masked row: -inf).
FRUGAL_HD float online_softmax_lse(const OnlineSoftmax& st) {
  return st.l > 0.0f ? st.m + logf(st.l) : -INFINITY;
}

// ---- NF4 (bitsandbytes) --------------------------------------------------------------------
// [section owned by quant/nf4: code book, nearest-code decision tree, dynamic 8-bit map]

// ---- RoPE ----------------------------------------------------------------------------------
// [section owned by kernels/rope: inverse frequencies for default/linear/dynamic/yarn/llama3]

}  // namespace fm
