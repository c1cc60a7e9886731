// rope.h: rotary position embedding, Hugging Face rotate_half convention: dim i pairs with i + D/2,
//   y[i]       = x[i] * cos - x[i+D/2] * sin
//   y[i + D/2] = x[i+D/2] * cos + x[i] * sin       (cos/sin of pos * inv_freq[i], times attention_factor)
// Frequencies for default/linear/dynamic/yarn/llama3 come from fm::rope_inv_freq (shared_math.h).
#pragma once
#include <cstdint>

#include "kernels/types.h"
#include "src/common.h"

namespace frugal {

// Positions 0..max_pos-1. seq_len selects the dynamic-NTK frequencies (HF uses max(position_ids)+1);
// other types ignore it. Computed as transformers does: freqs = float(pos) * inv_freq in fp32,
// cos/sin in fp32, times attention_factor.
RopeTable rope_table(const fm::RopeParams& p, int max_pos, int seq_len);

// x: [N, H, D] fp32 rotated in place; pos: [N] int32 in [0, t.max_pos) (else throws); D == t.head_dim.
void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D);
// dx: [N, H, D] in place: the transposed rotation (dx_in = Rᵀ dy).
void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D);

// naive reference: out = x * cos_full + rotate_half(x) * sin_full, as HF apply_rotary_pos_emb.
void rope_forward_ref(float* out, const float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D);
// naive reference of the backward: dx = dy * cos_full - rotate_half(dy) * sin_full (= Rᵀ dy).
void rope_backward_ref(float* dx, const float* dy, const int32_t* pos, const RopeTable& t, int N, int H, int D);

}  // namespace frugal
