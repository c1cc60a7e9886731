// device.cu: device queries, the bf16 conversion kernel (mirror of src/bf16_convert.cpp) and a
// cuBLAS bf16 GEMM (mirror of the oneDNN GEMM). Also references NCCL so the link is proven.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device.h"

namespace frugal::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string toolkit_summary() {
  int rt = 0, nccl = 0;
  cudaRuntimeGetVersion(&rt);
  ncclGetVersion(&nccl);
  return str("CUDA runtime ", rt / 1000, ".", (rt % 1000) / 10, ", cuBLAS ", CUBLAS_VER_MAJOR, ".",
             CUBLAS_VER_MINOR, ", NCCL ", nccl / 10000, ".", (nccl / 100) % 100, ".", nccl % 100);
}

__global__ void float_to_bf16_kernel(const float* in, uint16_t* out, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = fm::float_to_bf16_bits(in[i]);
}

void float_to_bf16_host(const float* in, bf16* out, std::size_t n) {
  if (n == 0) return;
  float* d_in = nullptr;
  uint16_t* d_out = nullptr;
  CUDA_CHECK(cudaMalloc(&d_in, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_out, n * sizeof(uint16_t)));
  CUDA_CHECK(cudaMemcpy(d_in, in, n * sizeof(float), cudaMemcpyHostToDevice));
  unsigned blocks = (unsigned)((n + 255) / 256);
  float_to_bf16_kernel<<<blocks, 256>>>(d_in, d_out, n);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaMemcpy(out, d_out, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(d_in));
  CUDA_CHECK(cudaFree(d_out));
}

void gemm_bf16_nt_host(const bf16* A, const bf16* B, float* C, int M, int N, int K) {
  void *dA, *dB, *dC;
  CUDA_CHECK(cudaMalloc(&dA, (size_t)M * K * 2));
  CUDA_CHECK(cudaMalloc(&dB, (size_t)N * K * 2));
  CUDA_CHECK(cudaMalloc(&dC, (size_t)M * N * 4));
  CUDA_CHECK(cudaMemcpy(dA, A, (size_t)M * K * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dB, B, (size_t)N * K * 2, cudaMemcpyHostToDevice));
  cublasHandle_t h;
  CUBLAS_CHECK(cublasCreate(&h));
  // Row-major C[M,N] = A·Bᵀ is column-major Cᵀ[N,M] = B·Aᵀ: op(B) = T on the [K,N] col-major view.
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, dB, CUDA_R_16BF, K, dA,
                            CUDA_R_16BF, K, &beta, dC, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  CUBLAS_CHECK(cublasDestroy(h));
  CUDA_CHECK(cudaMemcpy(C, dC, (size_t)M * N * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dA));
  CUDA_CHECK(cudaFree(dB));
  CUDA_CHECK(cudaFree(dC));
}

}  // namespace frugal::cuda
