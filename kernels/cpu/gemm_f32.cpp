// gemm_f32.cpp: fp32 GEMM (see gemm_f32.h): the naive reference and the oneDNN fast path.
#include "kernels/cpu/gemm_f32.h"

#include "kernels/cpu/dnnl_matmul.h"

namespace frugal {

// ---- reference ---------------------------------------------------------------------------
void gemm_f32_ref(bool transA, bool transB, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc) {
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        double a = transA ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
        double b = transB ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
        acc += a * b;
      }
      float* c = C + (size_t)m * ldc + n;
      double r = (double)alpha * acc;
      if (beta != 0.f) r += (double)beta * (double)*c;
      *c = (float)r;
    }
  }
}

// ---- fast path: oneDNN (kernels/cpu/dnnl_matmul.cpp) -------------------------------------
void gemm_f32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
  dnnl_matmul(MatmulInput::F32, "gemm_f32", transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace frugal
