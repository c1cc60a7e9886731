// attention.h: multi-head attention with GQA and causal / sliding-window masks, FlashAttention-2
// style (arXiv 2307.08691 Alg. 1-2, SPEC §6): tiled over queries and keys, online softmax, the
// [T,S] score matrix never exists. out = softmax(scale·Q Kᵀ + mask) V, LSE saved for backward.
#pragma once
#include <cmath>
#include <cstdint>

#include "src/common.h"

namespace frugal {

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

// ---- fast path (kernels/cpu/attention.cpp) ----------------------------------------------
// Forward: OpenMP over (b, h, query tile), Br x Bc tiles, fully masked key tiles skipped.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttnShape& s);
// Backward: dq [B,T,H,D], dk/dv [B,S,Hkv,D] are OVERWRITTEN (activation gradients). Needs out and
// lse from attention_forward. OpenMP over (b, kv head, key tile): one writer per dK/dV tile, dQ
// accumulated in per-thread partials and reduced.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        const AttnShape& s);

// ---- naive reference (tests only) ---------------------------------------------------------
// Materializes the [T,S] scores per (b, h), plain softmax, all arithmetic in the element type
// (the double overloads are the fp64 "truth" used to judge both fp32 paths). The backward
// recomputes P itself (it does not read out/lse) and overwrites dq, dk, dv.
void attention_forward_ref(float* out, float* lse, const float* q, const float* k, const float* v,
                           const AttnShape& s);
void attention_forward_ref(double* out, double* lse, const double* q, const double* k,
                           const double* v, const AttnShape& s);
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const AttnShape& s);
void attention_backward_ref(double* dq, double* dk, double* dv, const double* dout,
                            const double* q, const double* k, const double* v, const AttnShape& s);

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

}  // namespace frugal
