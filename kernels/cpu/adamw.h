// adamw.h: the optimizer's element loops over fixed chunks of the trainable tensors.
//   adamw_update   per element, torch _single_tensor_adam order (src/model/optim.h):
//                  w *= decay; m = lerp(m, g, w1); v = v·β2 + (1-β2)·g·g;
//                  w += neg_step · m / (sqrt(v) / bc2_sqrt + eps)
//   grad_sq_sums   partial[c] = Σ g² over chunk c (fp64, a fixed vector-width summation order)
//   grad_scale     g *= coef (gradient clipping)
// Chunks are independent (OpenMP over chunks); which code path an element takes depends only on
// its position in its chunk, so results never depend on the thread count.
#pragma once
#include <cstddef>

#include "kernels/types.h"

namespace frugal {

void adamw_update(const AdamWChunk* chunks, size_t count, const AdamWScalars& k);
void grad_sq_sums(const GradChunk* chunks, size_t count, double* partial);
void grad_scale(const GradChunk* chunks, size_t count, float coef);

// ---- scalar references (the truth for tests: the same operations, one element at a time) ----
void adamw_update_ref(const AdamWChunk* chunks, size_t count, const AdamWScalars& k);
void grad_sq_sums_ref(const GradChunk* chunks, size_t count, double* partial);  // plain fp64 loop
void grad_scale_ref(const GradChunk* chunks, size_t count, float coef);

}  // namespace frugal
