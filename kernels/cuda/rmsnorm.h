// rmsnorm.h (CUDA): device mirror of kernels/cpu/rmsnorm.h, same math (fp32):
//   out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
// Free of CUDA types: streams are passed as void* (cudaStream_t, null = default stream). launch_*
// take DEVICE pointers and are asynchronous; *_host take host buffers, copy in, run, copy out (for
// tests and tools). Defined in kernels/cuda/rmsnorm.cu.
#pragma once

#include "src/common.h"

namespace frugal::cuda {

// x, out: [N, C], w: [C], rstd: [N]
void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                            void* stream = nullptr);
// dx: [N, C] overwritten; dw: [C] += (nullable)
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const float* rstd, int N, int C, void* stream = nullptr);
void rmsnorm_forward_host(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
void rmsnorm_backward_host(float* dx, float* dw, const float* dout, const float* x, const float* w,
                           const float* rstd, int N, int C);

}  // namespace frugal::cuda
