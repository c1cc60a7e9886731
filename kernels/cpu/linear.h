// linear.h: frozen linear layers y = x·Wᵀ with W: [out, in] in bf16 or NF4 (QLoRA base weights).
//   forward          y[M,out]  = x[M,in]·Wᵀ + beta·y      (fp32 out, bf16 operands)
//   backward_input   dx[M,in]  = dy[M,out]·W + beta·dx
//   backward_weight  dW[out,in] += dyᵀ·x                  (for trainable bf16 weights)
// NF4 weights are dequantized tile by tile (a block of rows of W into a bounded bf16 scratch),
// never the whole matrix.
#pragma once
#include "kernels/types.h"
#include "src/common.h"

namespace frugal {

// y[M,out] (fp32) = x[M,in] (bf16) · Wᵀ + beta*y
void linear_forward(float* y, const bf16* x, const FrozenWeight& W, int M, float beta = 0.f);
// dx[M,in] (fp32) = dy[M,out] (bf16) · W + beta*dx
void linear_backward_input(float* dx, const bf16* dy, const FrozenWeight& W, int M, float beta = 0.f);
// dW[out,in] (fp32) += dyᵀ · x      (dy: [M,out] bf16, x: [M,in] bf16)
void linear_backward_weight(float* dW, const bf16* dy, const bf16* x, int M, int64_t out, int64_t in);

// Rows of W dequantized per NF4 tile (bounded scratch: tile_rows·in bf16).
int linear_nf4_tile_rows(int64_t in);

// How linear_forward / linear_backward_input tile an NF4 W [out, in] over nthr threads. Exposed
// so the memory planner (src/train/plan.cpp) sizes the dequant scratch with the kernels' own numbers.
struct Nf4ForwardTiles {   // forward: `count` tiles of `rows` rows of W, scratch [rows, in] bf16
  int rows = 0, count = 0;
};
struct Nf4BackwardTiles {  // backward_input: `slabs` column slabs of `cols`, walked `rows` rows
  int rows = 0, cols = 0, slabs = 0;  // at a time, scratch [min(rows, out), cols] bf16
};
Nf4ForwardTiles linear_nf4_forward_tiles(int64_t out, int64_t in, int nthr);
Nf4BackwardTiles linear_nf4_backward_tiles(int64_t in, int nthr);
// bf16 elements of one thread's dequant scratch: the larger tile of forward and backward_input.
size_t linear_nf4_scratch_elems(int64_t out, int64_t in, int nthr);

}  // namespace frugal
