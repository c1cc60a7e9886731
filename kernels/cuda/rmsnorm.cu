// rmsnorm.cu: CUDA RMSNorm, mirror of kernels/cpu/rmsnorm.cpp (fp32):
//   rstd = 1/sqrt(mean(x^2) + eps), out = x * rstd * w
//   dx = rstd*w*dout - x * rstd^3/C * sum(w*dout*x),  dw += sum_n dout*x*rstd
// Sections: kernels (one block per row; dw one thread per column, deterministic), launchers, host wrappers.
#include "kernels/cuda/rmsnorm.h"

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"

namespace frugal::cuda {

static constexpr int kThreads = 256;

// sum over the block; every thread gets the result. `sh` holds kThreads/32 floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x / 32) ? sh[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid: N blocks; x, out: [N, C]
__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* w, int C, float eps) {
  __shared__ float sh[kThreads / 32];
  const size_t row = blockIdx.x;
  const float* xr = x + row * C;
  float ss = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_sum(ss, sh);
  const float r = 1.0f / sqrtf(ss / (float)C + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[row * C + c] = xr[c] * r * w[c];
}

// grid: N blocks; dx: [N, C]
__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                           const float* rstd, int C) {
  __shared__ float sh[kThreads / 32];
  const size_t row = blockIdx.x;
  const float* xr = x + row * C;
  const float* dr = dout + row * C;
  float dot = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += w[c] * dr[c] * xr[c];
  dot = block_sum(dot, sh);
  const float r = rstd[row];
  const float k = r * r * r * dot / (float)C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dx[row * C + c] = r * w[c] * dr[c] - k * xr[c];
}

// one thread per column c, rows in order (coalesced across the warp, deterministic)
__global__ void rmsnorm_backward_dw_kernel(float* dw, const float* dout, const float* x, const float* rstd, int N,
                                           int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int n = 0; n < N; ++n) s += dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
  dw[c] += s;
}

void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                            void* stream) {
  FRUGAL_CHECK(N >= 0 && C > 0, "rmsnorm: bad shape N=", N, " C=", C);
  if (N == 0) return;
  rmsnorm_forward_kernel<<<N, kThreads, 0, (cudaStream_t)stream>>>(out, rstd, x, w, C, eps);
  CUDA_CHECK(cudaGetLastError());
}

void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const float* rstd, int N, int C, void* stream) {
  FRUGAL_CHECK(N >= 0 && C > 0, "rmsnorm: bad shape N=", N, " C=", C);
  if (N == 0) return;
  rmsnorm_backward_dx_kernel<<<N, kThreads, 0, (cudaStream_t)stream>>>(dx, dout, x, w, rstd, C);
  CUDA_CHECK(cudaGetLastError());
  if (dw) {
    rmsnorm_backward_dw_kernel<<<(C + kThreads - 1) / kThreads, kThreads, 0, (cudaStream_t)stream>>>(dw, dout, x,
                                                                                                     rstd, N, C);
    CUDA_CHECK(cudaGetLastError());
  }
}

// ---- host wrappers --------------------------------------------------------------------------
void rmsnorm_forward_host(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) {
  const size_t nc = (size_t)N * C;
  DeviceBuffer<float> dout(nc), drstd((size_t)N), dx(x, nc), dw(w, (size_t)C);
  launch_rmsnorm_forward(dout.data(), drstd.data(), dx.data(), dw.data(), N, C, eps);
  dout.download(out, nc);
  drstd.download(rstd, (size_t)N);
}

void rmsnorm_backward_host(float* dx, float* dw, const float* dout, const float* x, const float* w,
                           const float* rstd, int N, int C) {
  const size_t nc = (size_t)N * C;
  DeviceBuffer<float> ddx(nc), ddw((size_t)C), ddout(dout, nc), dxx(x, nc), dww(w, (size_t)C), drstd(rstd, (size_t)N);
  if (dw) ddw.upload(dw, (size_t)C);
  launch_rmsnorm_backward(ddx.data(), dw ? ddw.data() : nullptr, ddout.data(), dxx.data(), dww.data(), drstd.data(),
                          N, C);
  ddx.download(dx, nc);
  if (dw) ddw.download(dw, (size_t)C);
}

}  // namespace frugal::cuda
