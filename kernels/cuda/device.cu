// device.cu: device queries, the bf16 conversion kernel (mirror of src/bf16_convert.cpp) and a
// cuBLAS bf16 GEMM (mirror of the oneDNN GEMM). Also references NCCL so the link is proven.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_buffer.cuh"

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
  DeviceBuffer<float> d_in(in, n);
  DeviceBuffer<uint16_t> d_out(n);
  unsigned blocks = (unsigned)((n + 255) / 256);
  float_to_bf16_kernel<<<blocks, 256>>>(d_in.data(), d_out.data(), n);
  CUDA_CHECK(cudaGetLastError());
  d_out.download(reinterpret_cast<uint16_t*>(out), n);
}

void gemm_bf16_nt_host(const bf16* A, const bf16* B, float* C, int M, int N, int K) {
  DeviceBuffer<bf16> dA(A, (size_t)M * K), dB(B, (size_t)N * K);
  DeviceBuffer<float> dC((size_t)M * N);
  struct Handle {  // the cuBLAS handle, destroyed on scope exit (also when a check throws)
    cublasHandle_t h = nullptr;
    ~Handle() {
      if (h) cublasDestroy(h);
    }
  } handle;
  CUBLAS_CHECK(cublasCreate(&handle.h));
  // Row-major C[M,N] = A·Bᵀ is column-major Cᵀ[N,M] = B·Aᵀ: op(B) = T on the [K,N] col-major view.
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasGemmEx(handle.h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, dB.data(), CUDA_R_16BF, K,
                            dA.data(), CUDA_R_16BF, K, &beta, dC.data(), CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  dC.download(C, (size_t)M * N);
}

}  // namespace frugal::cuda
