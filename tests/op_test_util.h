// op_test_util.h: numeric helpers shared by the op-family tests (tests/test_<op>.cpp and
// tests/gpu_<op>.cpp, one op family each, header only). Tolerances in those tests are multiples of
// the fp32 unit roundoff kU = 2^-24 times the magnitude of the terms summed, so cancellation does
// not hide real errors.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace frugal::op_test {

inline constexpr double kU = 5.9604644775390625e-08;  // fp32 unit roundoff 2^-24

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// max over i of |a_i - b_i| / tol_i; NaN anywhere gives NaN (and fails `<= 1`).
inline double worst_ratio(const float* a, const double* b, const double* tol, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; ++i) {
    double r = std::abs((double)a[i] - b[i]) / tol[i];
    if (!(r <= w)) w = r;  // keeps NaN
  }
  return w;
}

// central difference of f at x[i] in fp64
inline double central_diff(std::vector<double>& x, size_t i, double h, const std::function<double()>& f) {
  double x0 = x[i];
  x[i] = x0 + h;
  double fp = f();
  x[i] = x0 - h;
  double fm_ = f();
  x[i] = x0;
  return (fp - fm_) / (2 * h);
}

}  // namespace frugal::op_test
