// rope.h (CUDA): device mirror of kernels/cpu/rope.h (HF rotate_half), in place on x: [N, H, D];
// pos: [N] int32; cos/sin: [max_pos, D/2] (a RopeTable copied to the device). Positions must lie in
// [0, max_pos): the host wrappers check them; the device launchers cannot read them, and the kernel
// leaves rows with a bad position as is.
// Free of CUDA types: streams are passed as void* (cudaStream_t, null = default stream). launch_*
// take DEVICE pointers and are asynchronous; *_host take host buffers, copy in, run, copy out (for
// tests and tools). Defined in kernels/cuda/rope.cu.
#pragma once
#include <cstdint>

#include "kernels/cpu/rope.h"
#include "src/common.h"

namespace frugal::cuda {

void launch_rope_forward(float* x, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                         int H, int D, void* stream = nullptr);
void launch_rope_backward(float* dx, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                          int H, int D, void* stream = nullptr);
void rope_forward_host(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D);
void rope_backward_host(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D);

}  // namespace frugal::cuda
