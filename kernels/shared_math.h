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
// Bit-compatible with bitsandbytes 0.50 (functional.py quantize_4bit / create_dynamic_map,
// backends/default/ops.py, csrc/cpu_ops.cpp). Tables are the exact fp32 values, as hex floats.
// Used by quant/nf4.cpp (CPU) and kernels/cuda/nf4.cu (device).

// NF4 code book, index 0..15 (bitsandbytes get_4bit_type("nf4")); sorted ascending.
FRUGAL_HD float nf4_code(int i) {
  static constexpr float t[16] = {
      -0x1.0p+0f, -0x1.647362p-1f, -0x1.0cd66p-1f, -0x1.94654p-2f,
      -0x1.23449ap-2f, -0x1.7a6a7ep-3f, -0x1.74f0e2p-4f, 0x0.0p+0f,
      0x1.45f5fep-4f, 0x1.4995c6p-3f, 0x1.f809bap-3f, 0x1.5a0674p-2f,
      0x1.c3497p-2f, 0x1.200f56p-1f, 0x1.722766p-1f, 0x1.0p+0f,
  };
  return t[i & 15];
}

// fp32 midpoints (code[i] + code[i+1]) / 2, i = 0..14 (the same pivots as the CUDA decision
// tree dQuantizeNF4 in csrc/kernels.cu and the bucketize bounds of the CPU path).
FRUGAL_HD float nf4_midpoint(int i) {
  static constexpr float t[15] = {
      -0x1.b239bp-1f, -0x1.38a4ep-1f, -0x1.d709p-2f, -0x1.5bd4ecp-2f,
      -0x1.e079d8p-3f, -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f,
      0x1.ec90c4p-4f, 0x1.a0cfcp-3f, 0x1.2b05a8p-2f, 0x1.8ea7f2p-2f,
      0x1.00da08p-1f, 0x1.491b5ep-1f, 0x1.b913b4p-1f,
  };
  return t[i];
}

// Nearest NF4 code of x (x = value / absmax, in [-1, 1]): the number of midpoints strictly below
// x, i.e. torch.bucketize(x, midpoints, right=False); a value exactly on a midpoint takes the
// LOWER code (the CUDA tree uses strict '>'). Written as the 4-level decision tree.
// NaN compares false everywhere and gives code 0.
FRUGAL_HD int nf4_nearest(float x) {
  int i = 0;
  if (x > nf4_midpoint(i + 7)) i += 8;  // midpoint between codes 7 and 8
  if (x > nf4_midpoint(i + 3)) i += 4;
  if (x > nf4_midpoint(i + 1)) i += 2;
  if (x > nf4_midpoint(i + 0)) i += 1;
  return i;
}

// Signed dynamic 8-bit map: create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8),
// 256 values sorted ascending (index 127 = 0.0, 255 = 1.0, 0 = -0.99296875). It quantizes the
// per-block absmax under double quantization and is stored in checkpoints as nested_quant_map.
FRUGAL_HD float dyn8_code(int i) {
  static constexpr float t[256] = {
      -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,
      -0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
      -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f,
      -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f,
      -0x1.893334p-1f, -0x1.82p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f,
      -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f,
      -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f,
      -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
      -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f,
      -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
      -0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,
      -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f,
      -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
      -0x1.0cp-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f,
      -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f,
      -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
      -0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
      -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,
      -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
      -0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
      -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
      -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f,
      -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
      -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
      -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
      -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
      -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
      -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
      -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,
      -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
      -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
      -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0.0p+0f,
      0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
      0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
      0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
      0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
      0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
      0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
      0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
      0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
      0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f,
      0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f,
      0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
      0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
      0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
      0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
      0x1.4eb854p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,
      0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
      0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
      0x1.6b3334p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
      0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
      0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
      0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
      0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
      0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f,
      0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
      0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
      0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,
      0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
      0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
      0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f,
      0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
      0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,
      0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1.0p+0f,
  };
  return t[i & 255];
}

// a*b + c with the product rounded to fp32 before the add (two PyTorch ops, never an FMA):
// the dequantized absmax under double quantization is dyn8_code(q) * nested_absmax + offset.
FRUGAL_HD float mul_add_unfused(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(a, b), c);
#else
  float p = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(p));  // opaque to the optimizer, so -ffp-contract cannot fuse it
#else
  volatile float vp = p;
  p = vp;
#endif
  return p + c;
#endif
}

// ---- RoPE ----------------------------------------------------------------------------------
// [section owned by kernels/cpu/rope.cpp and kernels/cuda/rope.cu: inverse frequencies for default/linear/dynamic/yarn/llama3]
// Mirrors transformers' modeling_rope_utils.py (_compute_{default,linear_scaling,dynamic_ntk,yarn,
// llama3}_rope_parameters) operation by operation in the same precision: tensor ops in fp32, Python
// scalars in fp64 and cast to fp32 where they meet a tensor. `scalar / tensor` in torch is
// reciprocal(tensor) * scalar (Tensor.__rdiv__), i.e. two roundings; products that torch rounds
// separately go through rope_mul_rn so no FMA contraction changes the last bit.
enum RopeType { ROPE_DEFAULT = 0, ROPE_LINEAR, ROPE_DYNAMIC, ROPE_YARN, ROPE_LLAMA3 };
struct RopeParams {
  RopeType type = ROPE_DEFAULT; float theta = 10000.f; int head_dim = 64;
  float factor = 1.f; float low_freq_factor = 1.f, high_freq_factor = 4.f;  // llama3
  int original_max_position_embeddings = 0; int max_position_embeddings = 2048;
  float beta_fast = 32.f, beta_slow = 1.f;                                   // yarn
  float attention_factor = -1.f;                                             // <0: derived (yarn) or 1
  bool truncate = true;                                                      // yarn: floor/ceil the correction range
  float mscale = 0.f, mscale_all_dim = 0.f;                                  // yarn: 0 = absent
};

// fp32 product rounded on its own (never fused into an FMA with a neighbouring add).
FRUGAL_HD float rope_mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  volatile float p = a * b;
  return p;
#endif
}
// torch: python_scalar / tensor == tensor.reciprocal() * scalar
FRUGAL_HD float rope_rdiv(double scalar, float t) { return rope_mul_rn(1.0f / t, (float)scalar); }

// omp as transformers' standardize_rope_params fills it (llama3/yarn: default max_position_embeddings).
FRUGAL_HD int rope_original_max_pos(const RopeParams& p) {
  return p.original_max_position_embeddings > 0 ? p.original_max_position_embeddings
                                                : p.max_position_embeddings;
}

// yarn get_mscale (fp64 Python math).
FRUGAL_HD double rope_yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * log(scale) + 1.0;
}

// The factor cos/sin are multiplied by (HF attention_scaling). Only yarn has one; the other types
// return 1.0 whatever the config says, as transformers does.
FRUGAL_HD float rope_attention_factor(const RopeParams& p) {
  if (p.type != ROPE_YARN) return 1.0f;
  if (p.attention_factor >= 0.f) return p.attention_factor;
  double f = p.factor;
  if (p.mscale != 0.f && p.mscale_all_dim != 0.f)
    return (float)(rope_yarn_get_mscale(f, p.mscale) / rope_yarn_get_mscale(f, p.mscale_all_dim));
  return (float)rope_yarn_get_mscale(f, 1.0);
}

// yarn find_correction_dim (fp64).
FRUGAL_HD double rope_yarn_correction_dim(double num_rotations, int dim, double base, double omp) {
  return (dim * log(omp / (num_rotations * 2.0 * 3.141592653589793))) / (2.0 * log(base));
}

// inv_freq[i], i < head_dim/2 (frequency of dims i and i + head_dim/2). seq_len matters only for
// ROPE_DYNAMIC: HF keeps the init-time (= default) frequencies while seq_len <= max_position_embeddings
// and recomputes them in fp32 from the tensor seq_len = max(position_ids)+1 beyond that
// (dynamic_rope_update -> _compute_dynamic_ntk_parameters with a tensor seq_len).
FRUGAL_HD void rope_inv_freq(const RopeParams& p, int seq_len, float* inv_freq) {
  const int dim = p.head_dim, half = p.head_dim / 2;
  float base = (float)p.theta;
  if (p.type == ROPE_DYNAMIC && seq_len > p.max_position_embeddings) {
    // base * ((factor * seq_len / mpe) - (factor - 1)) ** (dim / (dim - 2)), all fp32 tensor ops
    float t = (float)p.factor * (float)seq_len;
    t = t / (float)p.max_position_embeddings;
    t = t - (float)((double)p.factor - 1.0);
    // 0-dim tensor ** python float: torch's scalar loop evaluates std::pow(float, double) in fp64
    float tp = (float)pow((double)t, (double)dim / (double)(dim - 2));
    base = (float)p.theta * tp;
  }
  // default: 1 / base ** (arange(0, dim, 2).float() / dim)
  for (int i = 0; i < half; ++i) inv_freq[i] = 1.0f / powf(base, (float)(2 * i) / (float)dim);
  if (p.type == ROPE_LINEAR) {
    for (int i = 0; i < half; ++i) inv_freq[i] = inv_freq[i] / p.factor;
  } else if (p.type == ROPE_YARN) {
    const double omp = (double)rope_original_max_pos(p);
    const double beta_fast = p.beta_fast != 0.f ? p.beta_fast : 32.0;  // HF: get("beta_fast") or 32
    const double beta_slow = p.beta_slow != 0.f ? p.beta_slow : 1.0;
    double low = rope_yarn_correction_dim(beta_fast, dim, p.theta, omp);
    double high = rope_yarn_correction_dim(beta_slow, dim, p.theta, omp);
    if (p.truncate) {
      low = floor(low);
      high = ceil(high);
    }
    if (low < 0.0) low = 0.0;
    if (high > (double)(dim - 1)) high = (double)(dim - 1);
    if (low == high) high += 0.001;  // prevent singularity
    const float lowf = (float)low, rangef = (float)(high - low);
    for (int i = 0; i < half; ++i) {
      float pos_freq = powf(base, (float)(2 * i) / (float)dim);
      float extrap = 1.0f / pos_freq;
      float interp = 1.0f / rope_mul_rn((float)p.factor, pos_freq);
      float ramp = ((float)i - lowf) / rangef;
      ramp = ramp < 0.f ? 0.f : (ramp > 1.f ? 1.f : ramp);
      float ef = 1.0f - ramp;  // inv_freq_extrapolation_factor
      inv_freq[i] = rope_mul_rn(interp, 1.0f - ef) + rope_mul_rn(extrap, ef);
    }
  } else if (p.type == ROPE_LLAMA3) {
    const double old_ctx = (double)rope_original_max_pos(p);
    const float low_wl = (float)(old_ctx / p.low_freq_factor);
    const float high_wl = (float)(old_ctx / p.high_freq_factor);
    const float lf = p.low_freq_factor, fd = (float)((double)p.high_freq_factor - p.low_freq_factor);
    for (int i = 0; i < half; ++i) {
      float inv = inv_freq[i];
      float wl = rope_rdiv(2.0 * 3.141592653589793, inv);        // 2*pi / inv_freq
      float il = wl > low_wl ? inv / p.factor : inv;            // inv_freq_llama
      float sf = (rope_rdiv(old_ctx, wl) - lf) / fd;            // smooth_factor
      float smoothed = rope_mul_rn(1.0f - sf, il) / p.factor + rope_mul_rn(sf, il);
      bool medium = !(wl < high_wl) && !(wl > low_wl);
      inv_freq[i] = medium ? smoothed : il;
    }
  }
}

// ---- elementwise (kernels/cpu/swiglu.cpp, kernels/cpu/rmsnorm.cpp and their kernels/cuda mirrors) ----------------------------------
FRUGAL_HD float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
// silu(g) = g * sigmoid(g); d silu/dg = s * (1 + g * (1 - s))
FRUGAL_HD float silu(float g) { return g * sigmoidf_(g); }
FRUGAL_HD float silu_grad(float g) {
  float s = sigmoidf_(g);
  return s * (1.0f + g * (1.0f - s));
}

// ---- attention (FlashAttention-2 masks and probabilities: kernels/cpu/attention.cpp, kernels/cuda/attention.cu)
// Bottom-right aligned mask: key j is visible to query i iff j ∈ [c - left, c + right] with
// c = i + S - T; a negative left/right is unbounded on that side. causal = (-1, 0).
FRUGAL_HD bool attn_visible(int i, int j, int T, int S, int left, int right) {
  int c = i + S - T;
  if (left >= 0 && j < c - left) return false;
  if (right >= 0 && j > c + right) return false;
  return true;
}
// Keys visible to at least one query of [i0, i1) (i0 < i1): [*lo, *hi) clipped to [0, S).
FRUGAL_HD void attn_key_range(int i0, int i1, int T, int S, int left, int right, int* lo, int* hi) {
  int a = 0, b = S;
  if (left >= 0 && i0 + S - T - left > a) a = i0 + S - T - left;
  if (right >= 0 && i1 - 1 + S - T + right + 1 < b) b = i1 - 1 + S - T + right + 1;
  *lo = a;
  *hi = b > a ? b : a;
}
// Queries that see at least one key of [j0, j1) (j0 < j1): [*lo, *hi) clipped to [0, T).
FRUGAL_HD void attn_query_range(int j0, int j1, int T, int S, int left, int right, int* lo,
                                int* hi) {
  int a = 0, b = T;
  if (right >= 0 && j0 - (S - T) - right > a) a = j0 - (S - T) - right;
  if (left >= 0 && j1 - 1 - (S - T) + left + 1 < b) b = j1 - 1 - (S - T) + left + 1;
  *lo = a;
  *hi = b > a ? b : a;
}
// True when every (query, key) pair of the tile [i0,i1) x [j0,j1) is visible (no mask needed).
FRUGAL_HD bool attn_tile_unmasked(int i0, int i1, int j0, int j1, int T, int S, int left,
                                  int right) {
  return attn_visible(i1 - 1, j0, T, S, left, right) && attn_visible(i0, j1 - 1, T, S, left, right);
}
// Softmax probability p = exp(s - m) (forward: m = running max; backward: m = LSE). A masked
// score (s = -inf) or a row with nothing visible (m = -inf) gives 0, never NaN.
FRUGAL_HD float attn_prob(float s, float m) {
  return (s == -INFINITY || m == -INFINITY) ? 0.0f : expf(s - m);
}

// ---- counter-based randomness (LoRA dropout masks, LoRA init, sampling) -------------------------
// Every backend draws the same masks: a mask is a pure function of (key, element index).
// splitmix64 finalizer of z + golden ratio (stream position z)
FRUGAL_HD uint64_t lora_mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0,1) with 24 random bits, element `e` of the stream `key`.
FRUGAL_HD float counter_uniform(uint64_t key, uint64_t e) {
  return (float)(lora_mix64(key + e * 0x9E3779B97F4A7C15ull) >> 40) * (1.0f / 16777216.0f);
}
// Key of the dropout stream of (seed, optimizer step, micro-batch, layer, site).
FRUGAL_HD uint64_t lora_mask_key(uint64_t seed, uint64_t step, uint64_t micro, int layer, int site) {
  uint64_t k = lora_mix64(seed ^ 0x4C6F5241446F7574ull);  // "LoRADout"
  k = lora_mix64(k ^ step);
  k = lora_mix64(k ^ micro);
  return lora_mix64(k ^ ((uint64_t)(uint32_t)layer << 8 | (uint64_t)(uint32_t)site));
}
// Dropout keep decision for element e = (mask_row0 + n)·in + i of a LoRA site input x [N,in].
FRUGAL_HD bool lora_keep(uint64_t key, uint64_t e, float p) { return counter_uniform(key, e) >= p; }

}  // namespace fm
