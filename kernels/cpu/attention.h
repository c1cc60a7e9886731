// attention.h: multi-head attention with GQA and causal / sliding-window masks, FlashAttention-2
// style (arXiv 2307.08691 Alg. 1-2, SPEC §6): tiled over queries and keys, online softmax, the
// [T,S] score matrix never exists. out = softmax(scale·Q Kᵀ + mask) V, LSE saved for backward.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/types.h"
#include "src/common.h"

namespace frugal {

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

}  // namespace frugal
