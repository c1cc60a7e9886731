// swiglu.cu: CUDA SwiGLU, mirror of kernels/cpu/swiglu.cpp: out = silu(g) * up,
// dgate = dout * up * silu'(g), dup = dout * silu(g); fm::silu / fm::silu_grad from shared_math.h.
// Sections: kernels (grid-stride, one element per thread), launchers, host wrappers.
#include "kernels/cuda/swiglu.h"

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"

namespace frugal::cuda {

static constexpr int kThreads = 256;

__global__ void swiglu_forward_kernel(float* out, const float* gate, const float* up, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = fm::silu(gate[i]) * up[i];
}

__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate,
                                       const float* up, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float g = gate[i], d = dout[i];
    dgate[i] = d * up[i] * fm::silu_grad(g);
    dup[i] = d * fm::silu(g);
  }
}

static unsigned grid_for(size_t n) {
  size_t b = (n + kThreads - 1) / kThreads;
  return (unsigned)(b < 65535 * 8 ? b : 65535 * 8);
}

void launch_swiglu_forward(float* out, const float* gate, const float* up, size_t n, void* stream) {
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n), kThreads, 0, (cudaStream_t)stream>>>(out, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

void launch_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                            size_t n, void* stream) {
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n), kThreads, 0, (cudaStream_t)stream>>>(dgate, dup, dout, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

// ---- host wrappers --------------------------------------------------------------------------
void swiglu_forward_host(float* out, const float* gate, const float* up, size_t n) {
  DeviceBuffer<float> dout(n), dg(gate, n), du(up, n);
  launch_swiglu_forward(dout.data(), dg.data(), du.data(), n);
  dout.download(out, n);
}

void swiglu_backward_host(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  DeviceBuffer<float> ddg(n), ddu(n), ddo(dout, n), dg(gate, n), du(up, n);
  launch_swiglu_backward(ddg.data(), ddu.data(), ddo.data(), dg.data(), du.data(), n);
  ddg.download(dgate, n);
  ddu.download(dup, n);
}

}  // namespace frugal::cuda
