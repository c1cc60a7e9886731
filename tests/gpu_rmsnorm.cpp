// gpu_rmsnorm.cpp: CUDA RMSNorm (kernels/cuda/rmsnorm.h) against the CPU reference
// (kernels/cpu/rmsnorm.h, fp64 where the ref accumulates in fp64). Label `gpu`: every test skips
// where no device exists. Tolerances are the fp32 rounding budgets of the CPU tests (u = 2^-24
// times the magnitude of the terms); the GPU's sum order differs from the CPU's, its budget is
// no larger.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/rmsnorm.h"
#include "kernels/cuda/rmsnorm.h"
#include "src/common.h"
#include "tests/gpu_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

TEST(CudaOps, RmsNormForwardBackwardMatchCpuRef) {
  SKIP_WITHOUT_GPU();
  for (int C : {111, 4099}) {
    const int N = 59;
    auto x = randn((size_t)N * C, 1 + C, 2.f), w = randn(C, 2 + C), dout = randn((size_t)N * C, 3 + C);
    std::vector<float> out((size_t)N * C), rstd(N), ref((size_t)N * C), rstd_r(N);
    cuda::rmsnorm_forward_host(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    rmsnorm_forward_ref(ref.data(), rstd_r.data(), x.data(), w.data(), N, C, 1e-5f);  // fp64 accumulation
    double worst = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      double e = std::abs((double)out[i] - ref[i]) / ((2.0 * C / 16 + 8) * kU * std::abs(ref[i]) + 1e-30);
      if (!(e <= worst)) worst = e;
    }
    EXPECT_TRUE(worst <= 1.0) << "forward C=" << C << " " << worst;

    // backward from the same rstd: dx overwritten, dw accumulated onto a non-zero start
    auto dw0 = randn(C, 4 + C);
    std::vector<float> dx((size_t)N * C, NAN), dw(dw0), dx_r((size_t)N * C), dw_r(dw0);
    cuda::rmsnorm_backward_host(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd_r.data(), N, C);
    rmsnorm_backward_ref(dx_r.data(), dw_r.data(), dout.data(), x.data(), w.data(), rstd_r.data(), N, C);
    double wx = 0, ww = 0;
    for (int n = 0; n < N; ++n) {
      double r = rstd_r[n], sabs = 0;
      for (int c = 0; c < C; ++c) sabs += std::abs((double)w[c] * dout[(size_t)n * C + c] * x[(size_t)n * C + c]);
      for (int c = 0; c < C; ++c) {
        size_t i = (size_t)n * C + c;
        double tol = kU * (3 * std::abs(r * w[c] * dout[i]) + (C / 16.0 + 8) * std::abs(x[i]) * r * r * r / C * sabs) + 1e-12;
        double e = std::abs((double)dx[i] - dx_r[i]) / tol;
        if (!(e <= wx)) wx = e;
      }
    }
    for (int c = 0; c < C; ++c) {
      double a = std::abs(dw0[c]);
      for (int n = 0; n < N; ++n) a += std::abs((double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd_r[n]);
      double e = std::abs((double)dw[c] - dw_r[c]) / (kU * (2 * N + 4) * a + 1e-12);
      if (!(e <= ww)) ww = e;
    }
    EXPECT_TRUE(wx <= 1.0) << "dx C=" << C << " " << wx;
    EXPECT_TRUE(ww <= 1.0) << "dw C=" << C << " " << ww;
  }
}
