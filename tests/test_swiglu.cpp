// test_swiglu.cpp: SwiGLU (kernels/cpu/swiglu.h).
// The fast path and the naive `_ref` are checked against an fp64 evaluation of the formula written
// here; the backward against central finite differences in fp64 of L = sum(dout * out).
// Tolerances: multiples of the fp32 unit roundoff (op_test_util.h). Sizes are odd to hit the tails.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/swiglu.h"
#include "src/common.h"
#include "tests/op_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

TEST(SwiGlu, ForwardMatchesFp64AndRef) {
  // checks: out = silu(g) * up against fp64 math; gate spans [-90, 90] to reach exp over/underflow.
  for (size_t n : {size_t(1001), size_t(10007), size_t(15)}) {
    auto g = randn(n, 40 + n, 4.f), u = randn(n, 41 + n);
    g[0] = 90.f; g[1] = -90.f; g[2] = 0.f; g[3] = -20.f; g[4] = 30.f;
    std::vector<float> out(n), ref(n);
    swiglu_forward(out.data(), g.data(), u.data(), n);
    swiglu_forward_ref(ref.data(), g.data(), u.data(), n);
    std::vector<double> want(n), tol(n);
    for (size_t i = 0; i < n; ++i) {
      double gd = g[i];
      want[i] = gd / (1.0 + std::exp(-gd)) * u[i];
      // exp (~2 ulp) -> 1+e, /, *g, *u: each one rounding, relative to |out|
      tol[i] = 8 * kU * std::abs(want[i]) + 1e-37;
    }
    EXPECT_TRUE(worst_ratio(out.data(), want.data(), tol.data(), n) <= 1.0) << n;
    EXPECT_TRUE(worst_ratio(ref.data(), want.data(), tol.data(), n) <= 1.0) << n;
  }
}

TEST(SwiGlu, BackwardMatchesFp64AndFiniteDifferences) {
  // checks: dgate, dup against the fp64 derivative and fp64 central differences of L = sum(dout*out).
  const size_t n = 10007;
  auto g = randn(n, 50, 3.f), u = randn(n, 51), dout = randn(n, 52);
  std::vector<float> dg(n, NAN), du(n, NAN), dg_r(n), du_r(n);
  swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
  swiglu_backward_ref(dg_r.data(), du_r.data(), dout.data(), g.data(), u.data(), n);
  std::vector<double> fd_g(n), fd_u(n), tol_g(n), tol_u(n);
  for (size_t i = 0; i < n; ++i) {
    // L is a sum of independent terms, so the partial derivative only needs term i
    auto term = [&](double gd, double ud) { return dout[i] * gd / (1.0 + std::exp(-gd)) * ud; };
    const double h = 1e-4;
    fd_g[i] = (term(g[i] + h, u[i]) - term(g[i] - h, u[i])) / (2 * h);
    fd_u[i] = (term(g[i], u[i] + h) - term(g[i], u[i] - h)) / (2 * h);
    double s = 1.0 / (1.0 + std::exp(-(double)g[i]));
    double scale = std::abs((double)dout[i] * u[i]);
    // s*(1 + g*(1-s)): the terms s and s*|g|*(1-s) each carry a few roundings; FD truncation ~h^2
    tol_g[i] = 16 * kU * scale * (s + s * std::abs(g[i]) * (1 - s)) + 1e-7 * scale;
    tol_u[i] = 8 * kU * std::abs(fd_u[i]) + 1e-9;
  }
  EXPECT_TRUE(worst_ratio(dg.data(), fd_g.data(), tol_g.data(), n) <= 1.0);
  EXPECT_TRUE(worst_ratio(du.data(), fd_u.data(), tol_u.data(), n) <= 1.0);
  EXPECT_TRUE(worst_ratio(dg_r.data(), fd_g.data(), tol_g.data(), n) <= 1.0);
  EXPECT_TRUE(worst_ratio(du_r.data(), fd_u.data(), tol_u.data(), n) <= 1.0);
}
