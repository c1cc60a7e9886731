// lm_head_ce.h: fused lm_head + cross-entropy, chunked so the [M,V] logits never exist.
//   z = x·Wᵀ (x: [M,C] bf16, W: [V,C] bf16), loss_r = logsumexp(z_r) - z_r[target_r]
//   d(sum of losses)/dz = softmax(z) - onehot(target); dx = G·W, dW += Gᵀ·x (G scaled by grad_scale)
// Rows with target -100 are ignored (loss 0, no gradient); other targets outside [0,V) throw.
#pragma once
#include "src/common.h"

namespace frugal {


// Chunking of the fast path: rows (non-ignored, gathered) x vocab entries per logits chunk.
// Scratch: [row chunk, vocab chunk] fp32 logits + bf16 gradient (4 MB + 2 MB), plus
// [row chunk, C] bf16 rows and fp32 dx. Large row chunks mean fewer passes over W and dW.
constexpr int kLmHeadRowChunk = 512;
constexpr int kLmHeadVocabChunk = 2048;

// Returns the SUM of losses over non-ignored rows (fp64).
// dx (nullable): [M,C] fp32 = grad_scale * d(sum)/dx, overwritten (0 for ignored rows).
// dW (nullable): [V,C] fp32 += grad_scale * d(sum)/dW.
// losses (nullable): [M] per-row loss (0 for ignored rows).
double lm_head_ce(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V,
                  float grad_scale, float* dx, float* dW, float* losses);

// Naive fp64 reference (materializes [M,V] logits; tests only). Same contract as lm_head_ce.
double lm_head_ce_ref(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V,
                      float grad_scale, float* dx, float* dW, float* losses);

// The fp64 core of the reference on fp64 inputs (for finite-difference checks).
// dx: [M,C] overwritten, dW: [V,C] +=, losses: [M]; all nullable, all fp64.
double lm_head_ce_ref64(const double* x, const double* W, const int32_t* targets, int M, int C,
                        int V, double grad_scale, double* dx, double* dW, double* losses);

}  // namespace frugal
