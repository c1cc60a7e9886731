// gemm.cpp: bf16 GEMM with fp32 accumulation through the oneDNN matmul primitive.
//   C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C
// Transposes and leading dimensions are expressed as memory-descriptor strides, alpha as an
// output scale and beta as a sum post-op (beta == 0 means C is only written, never read).
// Sections: reference, fast path (the shared oneDNN matmul).
#include "kernels/cpu/gemm.h"

#include "kernels/cpu/dnnl_matmul.h"

namespace frugal {

// ---- reference ---------------------------------------------------------------------------
void gemm_bf16_ref(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A,
                   int lda, const bf16* B, int ldb, float beta, float* C, int ldc) {
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        float a = transA ? A[(size_t)k * lda + m].to_float() : A[(size_t)m * lda + k].to_float();
        float b = transB ? B[(size_t)n * ldb + k].to_float() : B[(size_t)k * ldb + n].to_float();
        acc += (double)a * (double)b;
      }
      float* c = C + (size_t)m * ldc + n;
      double r = (double)alpha * acc;
      if (beta != 0.f) r += (double)beta * (double)*c;
      *c = (float)r;
    }
  }
}

// ---- fast path: oneDNN (kernels/cpu/dnnl_matmul.cpp) -------------------------------------
void gemm_bf16(bool transA, bool transB, int M, int N, int K, float alpha, const bf16* A, int lda,
               const bf16* B, int ldb, float beta, float* C, int ldc) {
  dnnl_matmul(MatmulInput::BF16, "gemm_bf16", transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

size_t gemm_primitive_cache_size() { return dnnl_matmul_cache_size(); }

}  // namespace frugal
