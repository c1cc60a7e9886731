// gemm.h: C[M,N] = alpha * op(A)·op(B) + beta*C with bf16 operands and fp32 accumulation/output.
//   op(A) is [M,K]: A stored [M,K] row-major with leading dim lda, or stored [K,M] when transA.
//   op(B) is [K,N]: B stored [K,N] with leading dim ldb, or stored [N,K] when transB.
// gemm_bf16 runs the oneDNN matmul primitive (cached per shape/strides/alpha/beta);
// gemm_bf16_ref is the naive fp64-accumulated loop that defines the truth.
#pragma once
#include "src/common.h"

namespace frugal {

void gemm_bf16(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A, int lda,
               const bf16* B, int ldb, float beta, float* C, int ldc);

void gemm_bf16_ref(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A,
                   int lda, const bf16* B, int ldb, float beta, float* C, int ldc);

// Number of distinct oneDNN matmul primitives created so far (for tests of the cache).
size_t gemm_primitive_cache_size();

}  // namespace frugal
