// ops.h: CUDA mirrors of the CPU elementwise ops (kernels/cpu/{rmsnorm,swiglu,rope}.h), same math
// from kernels/shared_math.h. Free of CUDA types: streams are passed as void* (cudaStream_t, null =
// default stream). launch_* take DEVICE pointers and are asynchronous; *_host take host buffers,
// copy in, run, copy out (for tests and tools). Defined in kernels/cuda/{rmsnorm,swiglu,rope}.cu.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/rope.h"
#include "src/common.h"

namespace frugal::cuda {

// ---- RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps); x, out: [N, C], w: [C], rstd: [N]
void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                            void* stream = nullptr);
// dx: [N, C] overwritten; dw: [C] += (nullable)
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const float* rstd, int N, int C, void* stream = nullptr);
void rmsnorm_forward_host(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
void rmsnorm_backward_host(float* dx, float* dw, const float* dout, const float* x, const float* w,
                           const float* rstd, int N, int C);

// ---- SwiGLU: out = silu(gate) * up; backward dgate, dup overwritten. All [n] fp32.
void launch_swiglu_forward(float* out, const float* gate, const float* up, size_t n, void* stream = nullptr);
void launch_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                            size_t n, void* stream = nullptr);
void swiglu_forward_host(float* out, const float* gate, const float* up, size_t n);
void swiglu_backward_host(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n);

// ---- RoPE (HF rotate_half), in place on x: [N, H, D]; pos: [N] int32; cos/sin: [max_pos, D/2]
// (a RopeTable copied to the device). Positions must lie in [0, max_pos): the host wrappers check
// them; the device launchers cannot read them, and the kernel leaves rows with a bad position as is.
void launch_rope_forward(float* x, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                         int H, int D, void* stream = nullptr);
void launch_rope_backward(float* dx, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                          int H, int D, void* stream = nullptr);
void rope_forward_host(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D);
void rope_backward_host(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D);

}  // namespace frugal::cuda
