// attention_decode.h: one query row per head against a KV cache (generation's decode step):
//   out[h,:] = softmax(scale·q[h]·Kᵀ)·V over keys 0..S-1, all visible (the new token is the last
//   key), query head h reads kv head h / (H/Hkv).
// Plain two-pass softmax in fp32; equals attention_forward's online softmax up to summation order.
#pragma once
#include "src/common.h"

namespace frugal {

// out: [H,D], q: [H,D], K/V: [S,Hkv,D] fp32; scores: [H, ld_scores >= S] scratch.
void attention_decode(float* out, const float* q, const float* K, const float* V, int S, int H,
                      int Hkv, int D, float scale, float* scores, int ld_scores);

// naive reference (fp64 accumulation, the truth for tests); same contract, no scratch.
void attention_decode_ref(float* out, const float* q, const float* K, const float* V, int S, int H,
                          int Hkv, int D, float scale);

}  // namespace frugal
