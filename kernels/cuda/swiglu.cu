// swiglu.cu: CUDA SwiGLU, mirror of kernels/cpu/swiglu.cpp: out = silu(g) * up,
// dgate = dout * up * silu'(g), dup = dout * silu(g); fm::silu / fm::silu_grad from shared_math.h.
// Sections: kernels (grid-stride, one element per thread), launchers, host wrappers.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/ops.h"

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
namespace {
struct DevBuf {  // owning device buffer, freed on scope exit (also when a CUDA_CHECK throws)
  void* p = nullptr;
  explicit DevBuf(size_t bytes) { CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 4)); }
  ~DevBuf() { cudaFree(p); }
  float* f() const { return static_cast<float*>(p); }
};
}  // namespace

void swiglu_forward_host(float* out, const float* gate, const float* up, size_t n) {
  const size_t b = n * 4;
  DevBuf dout(b), dg(b), du(b);
  CUDA_CHECK(cudaMemcpy(dg.p, gate, b, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(du.p, up, b, cudaMemcpyHostToDevice));
  launch_swiglu_forward(dout.f(), dg.f(), du.f(), n);
  CUDA_CHECK(cudaMemcpy(out, dout.p, b, cudaMemcpyDeviceToHost));
}

void swiglu_backward_host(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  const size_t b = n * 4;
  DevBuf ddg(b), ddu(b), ddo(b), dg(b), du(b);
  CUDA_CHECK(cudaMemcpy(ddo.p, dout, b, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dg.p, gate, b, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(du.p, up, b, cudaMemcpyHostToDevice));
  launch_swiglu_backward(ddg.f(), ddu.f(), ddo.f(), dg.f(), du.f(), n);
  CUDA_CHECK(cudaMemcpy(dgate, ddg.p, b, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(dup, ddu.p, b, cudaMemcpyDeviceToHost));
}

}  // namespace frugal::cuda
