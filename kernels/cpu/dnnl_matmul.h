// dnnl_matmul.h: the one place frugal talks to oneDNN. C[M,N] (fp32) = alpha·op(A)·op(B) + beta·C
// with A and B both bf16 or both fp32 (fp32 accumulation either way), through a matmul primitive
// cached per (dtype, shape, strides, alpha, beta, nested). gemm_bf16 and gemm_f32 are its faces.
//   op(A) is [M,K]: A stored [M,K] with leading dim lda, or [K,M] when transA.
//   op(B) is [K,N]: B stored [K,N] with leading dim ldb, or [N,K] when transB.
// Safe to call from inside an OpenMP parallel region (each thread gets a one-thread plan, its own
// stream and its own scratchpad). Errors: frugal::Error naming `who` and the shape.
#pragma once
#include <cstddef>
#include <cstdint>

namespace frugal {

enum class MatmulInput { BF16, F32 };

void dnnl_matmul(MatmulInput in, const char* who, bool transA, bool transB, int M, int N, int K,
                 float alpha, const void* A, int lda, const void* B, int ldb, float beta, float* C,
                 int ldc);

size_t dnnl_matmul_cache_size();  // cached primitives (tests)

// Numerics probe for tests: while seed != 0, every GEMM output element is moved one fp32 ulp up
// or down (chosen by a hash of seed, its position and its value; deterministic). That is the size
// of the change a different fp32 summation order makes (another oneDNN kernel, e.g. AMX brgemm
// against avx512 gemm:jit, or another M per rank), so a test can measure how far its model's
// results move under such a change in the same run instead of assuming bitwise-equal kernels.
// Process-wide; 0 (the default) turns it off. Not for production use.
void set_gemm_output_jitter(uint64_t seed);

}  // namespace frugal
