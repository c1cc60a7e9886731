// gpu_swiglu.cpp: CUDA SwiGLU (kernels/cuda/swiglu.h) forward and backward against an fp64
// evaluation of the formula. Label `gpu`: every test skips where no device exists. Tolerances are
// the fp32 rounding budgets of the CPU test (u = 2^-24 times the magnitude of the terms).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cuda/swiglu.h"
#include "src/common.h"
#include "tests/gpu_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

TEST(CudaOps, SwiGluMatchesFp64) {
  SKIP_WITHOUT_GPU();
  const size_t n = 100003;
  auto g = randn(n, 10, 4.f), u = randn(n, 11), d = randn(n, 12);
  g[0] = 90.f; g[1] = -90.f; g[2] = 0.f;
  std::vector<float> out(n), dg(n), du(n);
  cuda::swiglu_forward_host(out.data(), g.data(), u.data(), n);
  cuda::swiglu_backward_host(dg.data(), du.data(), d.data(), g.data(), u.data(), n);
  double wf = 0, wg = 0, wu = 0;
  for (size_t i = 0; i < n; ++i) {
    double gd = g[i], s = 1.0 / (1.0 + std::exp(-gd));
    double o = gd * s * u[i], dgg = d[i] * u[i] * s * (1 + gd * (1 - s)), duu = d[i] * gd * s;
    double ef = std::abs(out[i] - o) / (8 * kU * std::abs(o) + 1e-37);
    double eg = std::abs(dg[i] - dgg) / (16 * kU * std::abs((double)d[i] * u[i]) * (s + s * std::abs(gd) * (1 - s)) + 1e-37);
    double eu = std::abs(du[i] - duu) / (8 * kU * std::abs(duu) + 1e-37);
    if (!(ef <= wf)) wf = ef;
    if (!(eg <= wg)) wg = eg;
    if (!(eu <= wu)) wu = eu;
  }
  EXPECT_TRUE(wf <= 1.0) << wf;
  EXPECT_TRUE(wg <= 1.0) << wg;
  EXPECT_TRUE(wu <= 1.0) << wu;
}
