// test_rmsnorm.cpp: RMSNorm (kernels/cpu/rmsnorm.h).
// The fast path is checked against the naive `_ref` and an fp64 evaluation of the formula written
// here; the backward against central finite differences in fp64 of the random linear functional
// L = sum(dout * out). Tolerances: multiples of the fp32 unit roundoff times the magnitude of the
// terms summed (op_test_util.h). Sizes are odd (59, 111, ...) to hit the tails.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/cpu/rmsnorm.h"
#include "src/common.h"
#include "tests/op_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

// fp64 RMSNorm of one row (the formula of SPEC §2)
static void rmsnorm_row_f64(double* y, const double* x, const double* w, int C, double eps) {
  double ss = 0;
  for (int c = 0; c < C; ++c) ss += x[c] * x[c];
  double r = 1.0 / std::sqrt(ss / C + eps);
  for (int c = 0; c < C; ++c) y[c] = x[c] * r * w[c];
}

TEST(RmsNorm, ForwardMatchesFp64AndRef) {
  // checks: out and rstd against fp64 math; fp32 error <= ~2C/16+8 roundings of |out| (lane sums)
  for (int C : {111, 16, 7, 4099}) {
    const int N = 59;
    const float eps = 1e-5f;
    auto x = randn((size_t)N * C, 10 + C, 2.f), w = randn(C, 11 + C);
    std::vector<float> out((size_t)N * C), rstd(N), out_r((size_t)N * C), rstd_r(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    rmsnorm_forward_ref(out_r.data(), rstd_r.data(), x.data(), w.data(), N, C, eps);
    std::vector<double> want((size_t)N * C), tol((size_t)N * C), tol_r((size_t)N * C);
    std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
    for (int n = 0; n < N; ++n) rmsnorm_row_f64(&want[(size_t)n * C], &xd[(size_t)n * C], wd.data(), C, eps);
    const double k = 2.0 * C / 16 + 8;
    for (size_t i = 0; i < want.size(); ++i) {
      tol[i] = k * kU * std::abs(want[i]) + 1e-30;
      tol_r[i] = 3 * kU * std::abs(want[i]) + 1e-30;  // ref: fp64 then two roundings
    }
    double w1 = worst_ratio(out.data(), want.data(), tol.data(), want.size());
    double w2 = worst_ratio(out_r.data(), want.data(), tol_r.data(), want.size());
    EXPECT_TRUE(w1 <= 1.0) << "C=" << C << " " << w1;
    EXPECT_TRUE(w2 <= 1.0) << "C=" << C << " " << w2;
  }
}

TEST(RmsNorm, BackwardMatchesRefAndFiniteDifferences) {
  // checks: dx (overwritten) and dw (accumulated onto existing values) against (1) the fp64 ref and
  // (2) central differences of L = sum(dout * rmsnorm(x, w)) computed in fp64.
  const int N = 7, C = 59;
  const float eps = 1e-6f;
  auto x = randn((size_t)N * C, 20), w = randn(C, 21), dout = randn((size_t)N * C, 22);
  for (auto& v : w) v += 1.f;
  std::vector<float> out((size_t)N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  auto dw0 = randn(C, 23);
  std::vector<float> dx((size_t)N * C, NAN), dw(dw0), dx_r((size_t)N * C), dw_r(dw0);
  omp_set_num_threads(2);
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  rmsnorm_backward_ref(dx_r.data(), dw_r.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  // nullable dw
  std::vector<float> dx2((size_t)N * C);
  rmsnorm_backward(dx2.data(), nullptr, dout.data(), x.data(), w.data(), rstd.data(), N, C);
  EXPECT_EQ(std::memcmp(dx2.data(), dx.data(), dx.size() * 4), 0);

  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), y((size_t)N * C);
  auto L = [&]() {
    double s = 0;
    for (int n = 0; n < N; ++n) {
      rmsnorm_row_f64(&y[(size_t)n * C], &xd[(size_t)n * C], wd.data(), C, eps);
      for (int c = 0; c < C; ++c) s += dout[(size_t)n * C + c] * y[(size_t)n * C + c];
    }
    return s;
  };
  // Tolerance from the fp32 error budget: rstd comes from the fp32 forward with relative error
  // e_r <= (2C/16 + 8)u (see ForwardMatchesFp64AndRef); dx = r*w*dout - k*x with
  //   term 1: e_r + 3 roundings of |r w dout|;
  //   term 2: k = r^3 * dot / C: 3 e_r + the fp32 dot (<= (C/16 + 2)u of sum|w dout x|) + 5 roundings.
  // FD truncation/cancellation in fp64 with h = 1e-5 is ~1e-10, covered by the 1e-9 floor.
  const double e_r = 2.0 * C / 16 + 8;
  std::vector<double> fd_x(xd.size()), tol_x(xd.size()), fd_w(C), tol_w(C);
  for (int n = 0; n < N; ++n) {
    double r = rstd[n], sabs = 0;
    for (int c = 0; c < C; ++c) sabs += std::abs((double)w[c] * dout[(size_t)n * C + c] * x[(size_t)n * C + c]);
    for (int c = 0; c < C; ++c) {
      size_t i = (size_t)n * C + c;
      tol_x[i] = kU * ((e_r + 3) * std::abs(r * w[c] * dout[i]) +
                       (3 * e_r + C / 16.0 + 7) * std::abs(x[i]) * r * r * r / C * sabs) + 1e-9;
    }
  }
  for (size_t i = 0; i < xd.size(); ++i) fd_x[i] = central_diff(xd, i, 1e-5, L);
  for (int c = 0; c < C; ++c) {
    double a = 0;
    for (int n = 0; n < N; ++n) a += std::abs((double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n]);
    fd_w[c] = dw0[c] + central_diff(wd, c, 1e-5, L);
    tol_w[c] = kU * (N + e_r + 4) * (a + std::abs(dw0[c])) + 1e-9;  // N-term sum of (dout*x*r: e_r + 2)
  }
  EXPECT_TRUE(worst_ratio(dx.data(), fd_x.data(), tol_x.data(), fd_x.size()) <= 1.0);
  EXPECT_TRUE(worst_ratio(dx_r.data(), fd_x.data(), tol_x.data(), fd_x.size()) <= 1.0);
  EXPECT_TRUE(worst_ratio(dw.data(), fd_w.data(), tol_w.data(), C) <= 1.0);
  EXPECT_TRUE(worst_ratio(dw_r.data(), fd_w.data(), tol_w.data(), C) <= 1.0);
}

TEST(RmsNorm, Large4096x4096MatchesRefAndReportsBandwidth) {
  // checks: the [4096, 4096] forward against the fp64 ref on every row; prints GB/s (2 threads).
  const int N = 4096, C = 4096;
  auto x = randn((size_t)N * C, 30), w = randn(C, 31);
  std::vector<float> out((size_t)N * C), rstd(N), ref((size_t)N * C), rstd_r(N);
  omp_set_num_threads(2);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);  // warm up
  double s = 1e30;  // best of 10 (the machine may be shared)
  for (int r = 0; r < 10; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    s = std::min(s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double bytes = 2.0 * N * C * 4 + C * 4 + N * 4;  // read x, write out (+ w, rstd)
  std::printf("[ rmsnorm  ] forward [%d, %d] fp32, %d threads: %.2f ms, %.2f GB/s\n", N, C,
              omp_get_max_threads(), s * 1e3, bytes / s / 1e9);
  rmsnorm_forward_ref(ref.data(), rstd_r.data(), x.data(), w.data(), N, C, 1e-5f);
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    double r = std::abs((double)out[i] - ref[i]) / ((2.0 * C / 16 + 8) * kU * std::abs(ref[i]) + 1e-30);
    if (!(r <= worst)) worst = r;
  }
  EXPECT_TRUE(worst <= 1.0) << worst;
}
