// gemm_f32.h: C[M,N] = alpha * op(A)·op(B) + beta*C, all fp32 (operands, accumulation, output).
// Same conventions as gemm_bf16 (kernels/cpu/gemm.h):
//   op(A) is [M,K]: A stored [M,K] row-major with leading dim lda, or stored [K,M] when transA.
//   op(B) is [K,N]: B stored [K,N] with leading dim ldb, or stored [N,K] when transB.
// Used by the LoRA adapters, whose GEMMs have one dimension equal to the rank r ≪ d, so fp32
// costs little next to the frozen bf16/NF4 GEMM of the same site.
// gemm_f32 runs the oneDNN matmul primitive (cached per shape/strides/alpha/beta);
// gemm_f32_ref is the naive fp64-accumulated loop that defines the truth.
#pragma once
#include "src/common.h"

namespace frugal {

void gemm_f32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc);

void gemm_f32_ref(bool transA, bool transB, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace frugal
