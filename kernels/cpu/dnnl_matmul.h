// dnnl_matmul.h: the one place frugal talks to oneDNN. C[M,N] (fp32) = alpha·op(A)·op(B) + beta·C
// with A and B both bf16 or both fp32 (fp32 accumulation either way), through a matmul primitive
// cached per (dtype, shape, strides, alpha, beta, nested). gemm_bf16 and gemm_f32 are its faces.
//   op(A) is [M,K]: A stored [M,K] with leading dim lda, or [K,M] when transA.
//   op(B) is [K,N]: B stored [K,N] with leading dim ldb, or [N,K] when transB.
// Safe to call from inside an OpenMP parallel region (each thread gets a one-thread plan, its own
// stream and its own scratchpad). Errors: frugal::Error naming `who` and the shape.
#pragma once
#include <cstddef>

namespace frugal {

enum class MatmulInput { BF16, F32 };

void dnnl_matmul(MatmulInput in, const char* who, bool transA, bool transB, int M, int N, int K,
                 float alpha, const void* A, int lda, const void* B, int ldb, float beta, float* C,
                 int ldc);

size_t dnnl_matmul_cache_size();  // cached primitives (tests)

}  // namespace frugal
