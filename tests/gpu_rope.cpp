// gpu_rope.cpp: CUDA RoPE (kernels/cuda/rope.h) against the CPU reference
// (kernels/cpu/rope.h, fp64 where the ref accumulates in fp64). Label `gpu`: every test skips
// where no device exists. Tolerances are the fp32 rounding budgets of the CPU tests (u = 2^-24
// times the magnitude of the terms); the GPU's sum order differs from the CPU's, its budget is
// no larger.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/rope.h"
#include "src/common.h"
#include "tests/gpu_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

TEST(CudaOps, RopeForwardBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  fm::RopeParams p;
  p.type = fm::ROPE_LLAMA3; p.theta = 500000.f; p.head_dim = 128; p.factor = 8.f;
  p.original_max_position_embeddings = 8192; p.max_position_embeddings = 131072;
  const int N = 59, H = 5, D = 128, half = D / 2, max_pos = 20011;
  RopeTable t = rope_table(p, max_pos, N);
  std::mt19937 rng(20);
  std::vector<int32_t> pos(N);
  for (auto& q : pos) q = (int32_t)(rng() % max_pos);
  auto x = randn((size_t)N * H * D, 21);
  std::vector<float> yg(x), yc((size_t)N * H * D);
  cuda::rope_forward_host(yg.data(), pos.data(), t, N, H, D);
  rope_forward_ref(yc.data(), x.data(), pos.data(), t, N, H, D);
  // backward of the forward output gives x back (llama3: attention factor 1, orthogonal rotation)
  std::vector<float> zg(yg);
  cuda::rope_backward_host(zg.data(), pos.data(), t, N, H, D);
  double wy = 0, wz = 0;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) {
        size_t o = ((size_t)n * H + h) * D, i = o + d;
        int k = d % half, pd = (d + half) % D;
        double c = t.cos[(size_t)pos[n] * half + k], s = t.sin[(size_t)pos[n] * half + k];
        double tol = 3 * kU * (std::abs(x[i] * c) + std::abs(x[o + pd] * s)) + 1e-30;
        double e = std::abs((double)yg[i] - yc[i]) / (2 * tol);  // both sides within tol of the exact value
        if (!(e <= wy)) wy = e;
        double ez = std::abs((double)zg[i] - x[i]) / (8 * kU * (std::abs(x[i]) + std::abs(x[o + pd])) + 1e-30);
        if (!(ez <= wz)) wz = ez;
      }
  EXPECT_TRUE(wy <= 1.0) << wy;
  EXPECT_TRUE(wz <= 1.0) << wz;
  pos[3] = max_pos;
  EXPECT_THROW(cuda::rope_forward_host(yg.data(), pos.data(), t, N, H, D), Error);
}
