// rope.cu: CUDA RoPE, mirror of kernels/cpu/rope.cpp (HF rotate_half: dim i pairs with i + D/2):
//   forward  y1 = x1*c - x2*s, y2 = x2*c + x1*s;  backward dx1 = dy1*c + dy2*s, dx2 = dy2*c - dy1*s.
// The cos/sin table is built on the host (rope_table, fm::rope_inv_freq) and copied to the device.
// Sections: kernel (one thread per (row, head, pair)), launchers, host wrappers.
#include "kernels/cuda/rope.h"

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"

namespace frugal::cuda {

static constexpr int kThreads = 256;

// x: [N, H, D] in place; sign = +1 forward, -1 backward (transposed rotation: s -> -s)
__global__ void rope_kernel(float* x, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                            int H, int D, float sign) {
  const int half = D / 2;
  const size_t total = (size_t)N * H * half;
  for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
    const int i = (int)(t % half);
    const size_t nh = t / half;      // n * H + h
    const int n = (int)(nh / H);
    const int p = pos[n];
    if (p < 0 || p >= max_pos) continue;  // precondition violated: leave the row untouched
    const float c = cos[(size_t)p * half + i], s = sign * sin[(size_t)p * half + i];
    float* x1 = x + nh * D;
    const float a = x1[i], b = x1[i + half];
    x1[i] = a * c - b * s;
    x1[i + half] = b * c + a * s;
  }
}

static void launch(float* x, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N, int H,
                   int D, float sign, void* stream) {
  FRUGAL_CHECK(D > 0 && D % 2 == 0 && N >= 0 && H > 0, "rope: bad shape N=", N, " H=", H, " D=", D);
  const size_t total = (size_t)N * H * (D / 2);
  if (total == 0) return;
  size_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 65535u * 8) blocks = 65535u * 8;
  rope_kernel<<<(unsigned)blocks, kThreads, 0, (cudaStream_t)stream>>>(x, pos, cos, sin, max_pos, N, H, D, sign);
  CUDA_CHECK(cudaGetLastError());
}

void launch_rope_forward(float* x, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                         int H, int D, void* stream) {
  launch(x, pos, cos, sin, max_pos, N, H, D, 1.f, stream);
}

void launch_rope_backward(float* dx, const int32_t* pos, const float* cos, const float* sin, int max_pos, int N,
                          int H, int D, void* stream) {
  launch(dx, pos, cos, sin, max_pos, N, H, D, -1.f, stream);
}

// ---- host wrappers --------------------------------------------------------------------------
namespace {
void rope_host(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D, bool fwd) {
  if (D != t.head_dim) fail("rope (cuda): head dim ", D, " does not match the rope table's head_dim ", t.head_dim);
  for (int n = 0; n < N; ++n)
    if (pos[n] < 0 || pos[n] >= t.max_pos)
      fail("rope (cuda): position ", pos[n], " at row ", n, " is outside the rope table [0, ", t.max_pos, ")");
  const size_t nx = (size_t)N * H * D;
  DeviceBuffer<float> dx(x, nx), dc(t.cos.data(), t.cos.size()), ds(t.sin.data(), t.sin.size());
  DeviceBuffer<int32_t> dp(pos, (size_t)N);
  launch(dx.data(), dp.data(), dc.data(), ds.data(), t.max_pos, N, H, D, fwd ? 1.f : -1.f, nullptr);
  dx.download(x, nx);
}
}  // namespace

void rope_forward_host(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  rope_host(x, pos, t, N, H, D, true);
}
void rope_backward_host(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  rope_host(dx, pos, t, N, H, D, false);
}

}  // namespace frugal::cuda
