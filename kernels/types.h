// types.h: the plain data types the kernels take (shapes, weight storage, tables, optimizer
// scalars), shared by every backend (kernels/cpu, kernels/cuda) and by the model, which reaches
// the kernels only through the backend seam (src/model/backend.h). Host-only, no CUDA types.
// The functions of these types are defined where their op lives (FrozenWeight: kernels/cpu/linear.cpp,
// rope_table: kernels/cpu/rope.cpp).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "quant/nf4.h"
#include "src/common.h"

namespace frugal {

// ---- attention --------------------------------------------------------------------------------
// Shapes and masking. q: [B,T,H,D], k/v: [B,S,Hkv,D], out: [B,T,H,D], lse: [B,H,T] (all fp32,
// row-major, contiguous). Query head h reads kv head h / (H/Hkv) (GQA; H % Hkv == 0).
// scale: the softmax temperature τ; 0 means 1/sqrt(D).
// Masks are bottom-right aligned: key j is visible to query i iff
//   j ∈ [i + S - T - window_left, i + S - T + window_right], -1 = unbounded on that side.
// (-1, 0) = causal (the default), (-1, -1) = no mask, (w, 0) = causal sliding window of w+1 keys.
// A query row with no visible key gets out = 0 and lse = -inf (and zero gradients).
struct AttnShape {
  int B = 1, T = 0, S = 0, H = 0, Hkv = 0, D = 0;
  float scale = 0.f;
  int window_left = -1, window_right = 0;
};

// Throws frugal::Error when the shape is inconsistent (names the caller and the field). Inline so
// the CUDA backend (kernels/cuda/attention.cu) validates with the same code.
inline void attention_check_shape(const AttnShape& s, const char* who) {
  auto bad = [&](const char* field, int v) {
    fail(who, ": invalid attention shape: ", field, " = ", v, " (B=", s.B, " T=", s.T, " S=", s.S,
         " H=", s.H, " Hkv=", s.Hkv, " D=", s.D, " window=(", s.window_left, ",", s.window_right,
         "))");
  };
  if (s.B < 1) bad("B", s.B);
  if (s.T < 1) bad("T", s.T);
  if (s.S < 1) bad("S", s.S);
  if (s.H < 1) bad("H", s.H);
  if (s.Hkv < 1) bad("Hkv", s.Hkv);
  if (s.H % s.Hkv != 0) bad("H % Hkv (GQA needs H a multiple of Hkv)", s.H % s.Hkv);
  if (s.D < 1) bad("D", s.D);
  if (s.window_left < -1) bad("window_left (-1 = unbounded)", s.window_left);
  if (s.window_right < -1) bad("window_right (-1 = unbounded)", s.window_right);
  if (!std::isfinite(s.scale)) fail(who, ": attention scale is not finite");
}

// Softmax temperature actually used (s.scale, or 1/sqrt(D) when s.scale == 0).
inline float attention_scale(const AttnShape& s) {
  return s.scale != 0.f ? s.scale : 1.0f / std::sqrt((float)s.D);
}

// ---- RoPE -------------------------------------------------------------------------------------
// cos/sin: [max_pos, head_dim/2] fp32, already multiplied by the attention factor.
struct RopeTable {
  int head_dim = 0, max_pos = 0;
  avector<float> cos, sin;
};

// ---- frozen linear weights ----------------------------------------------------------------------
struct FrozenWeight {  // W: [out, in], frozen (no gradient)
  enum class Kind { BF16, NF4 } kind = Kind::BF16;
  int64_t out = 0, in = 0;
  Buf<bf16> w;         // Kind::BF16: [out, in]
  quant::NF4Tensor q;  // Kind::NF4

  static FrozenWeight from_bf16(avector<bf16> w, int64_t out, int64_t in);
  static FrozenWeight quantize_nf4(const bf16* w, int64_t out, int64_t in, int blocksize = 64,
                                   bool double_quant = true);
  size_t bytes() const;
};

// ---- LoRA adapter math ------------------------------------------------------------------------
// y[N,out] += s·(dropout(x)·Aᵀ)·Bᵀ, A: [r, in], B: [out, r] fp32. The mask of element (n, i) of
// x is fm::lora_keep(mask_key, (mask_row0 + n)·in + i, dropout) when dropout_active.
struct LoraDims {
  int r = 0;
  int64_t in = 0, out = 0;
  float scale = 1.f;
  float dropout = 0.f;
  bool dropout_active = false;
  uint64_t mask_key = 0, mask_row0 = 0;
};

// ---- optimizer -----------------------------------------------------------------------------------
// AdamW scalars of one step, rounded to fp32 as torch does (src/model/optim.h has the math).
// small_w: torch's lerp interpolates from m (weight w1 < 0.5) or from g.
struct AdamWScalars {
  float decay, w1, beta2, one_m_b2, neg_step, bc2_sqrt, eps;
  bool small_w;
};
// One contiguous range of one parameter: weight, gradient and moments, n elements each.
struct AdamWChunk {
  float* w;
  const float* g;
  float* m;
  float* v;
  size_t n;
};
// One contiguous range of one gradient (sum of squares, scaling, zeroing).
struct GradChunk {
  float* g;
  size_t n;
};

}  // namespace frugal
