// swiglu.h (CUDA): device mirror of kernels/cpu/swiglu.h: out = silu(gate) * up; backward dgate,
// dup overwritten. All [n] fp32 (fm::silu / fm::silu_grad from kernels/shared_math.h).
// Free of CUDA types: streams are passed as void* (cudaStream_t, null = default stream). launch_*
// take DEVICE pointers and are asynchronous; *_host take host buffers, copy in, run, copy out (for
// tests and tools). Defined in kernels/cuda/swiglu.cu.
#pragma once
#include <cstddef>

#include "src/common.h"

namespace frugal::cuda {

void launch_swiglu_forward(float* out, const float* gate, const float* up, size_t n, void* stream = nullptr);
void launch_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                            size_t n, void* stream = nullptr);
void swiglu_forward_host(float* out, const float* gate, const float* up, size_t n);
void swiglu_backward_host(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n);

}  // namespace frugal::cuda
