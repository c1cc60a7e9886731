// gpu_attention.cpp: CUDA FlashAttention-2 (kernels/cuda/attention.h) cross-checked against the
// CPU naive reference in fp64 (kernels/cpu/attention.h), with the same rule as the CPU test: the
// CUDA kernel's max error vs fp64 is at most 2x the naive fp32 kernel's error plus a few ulps.
// Also compared with the CPU flash path (both fp32, same tiling math and shared fm:: helpers).
// Label `gpu`: tests needing a device skip without one.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device.h"

using namespace frugal;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

namespace {

struct Case {
  const char* name;
  int B, T, S, H, Hkv, D, left, right;
};
// Test names print the case name, not the struct's bytes (keeps ctest names stable).
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }


std::vector<float> randn(size_t n, uint32_t seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  return x;
}
// max |a - ref| over finite reference entries; NaN in a gives +inf.
template <class A, class R>
double max_err(const std::vector<A>& a, const std::vector<R>& ref) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf((double)ref[i])) {
      if (!((double)a[i] == (double)ref[i])) e = INFINITY;  // -inf LSE must match exactly
      continue;
    }
    double d = std::abs((double)a[i] - (double)ref[i]);
    if (!(d <= e)) e = std::isnan(d) ? INFINITY : d;
  }
  return e;
}
double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x)
    if (std::isfinite(v)) m = std::max(m, std::abs(v));
  return m;
}
double max_row_norm(const std::vector<float>& x, int D) {
  double m = 0;
  for (size_t r = 0; r < x.size() / D; ++r) {
    double a = 0;
    for (int d = 0; d < D; ++d) a += (double)x[r * D + d] * x[r * D + d];
    m = std::max(m, std::sqrt(a));
  }
  return m;
}
double max_abs_f(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, (double)std::abs(v));
  return m;
}
// eps as in tests/test_attention.cpp: 4 ulps of the largest value, or one rounding of dP - D
// per dS term for dq/dk (term_bound = τ·max‖dO‖·max‖v‖·max|k or q|).
void expect_within_rule(const char* what, double err, double err_naive, double ref_max,
                        double term_bound = 0) {
  const double eps = FLT_EPSILON * std::max(4.0 * ref_max, term_bound);
  EXPECT_TRUE(err <= 2.0 * err_naive + eps)
      << what << ": cuda err " << err << " vs naive fp32 err " << err_naive << " (eps " << eps << ")";
}

class CudaAttention : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttention, MatchesFp64ReferenceWithinTwiceNaiveFp32Error) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  AttnShape s;
  s.B = c.B; s.T = c.T; s.S = c.S; s.H = c.H; s.Hkv = c.Hkv; s.D = c.D;
  s.window_left = c.left; s.window_right = c.right;
  const size_t nq = (size_t)s.B * s.T * s.H * s.D, nkv = (size_t)s.B * s.S * s.Hkv * s.D;
  const size_t nl = (size_t)s.B * s.H * s.T;
  auto q = randn(nq, 31, 1.5f), k = randn(nkv, 32, 1.5f), v = randn(nkv, 33, 1.f);
  auto g = randn(nq, 34, 1.f);
  std::vector<double> q64(q.begin(), q.end()), k64(k.begin(), k.end()), v64(v.begin(), v.end()),
      g64(g.begin(), g.end());

  std::vector<double> o64(nq), l64(nl), dq64(nq), dk64(nkv), dv64(nkv);
  std::vector<float> o32(nq), l32(nl), dq32(nq), dk32(nkv), dv32(nkv);
  attention_forward_ref(o64.data(), l64.data(), q64.data(), k64.data(), v64.data(), s);
  attention_forward_ref(o32.data(), l32.data(), q.data(), k.data(), v.data(), s);
  attention_backward_ref(dq64.data(), dk64.data(), dv64.data(), g64.data(), q64.data(), k64.data(),
                         v64.data(), s);
  attention_backward_ref(dq32.data(), dk32.data(), dv32.data(), g.data(), q.data(), k.data(),
                         v.data(), s);

  std::vector<float> og(nq, NAN), lg(nl, NAN), dqg(nq, NAN), dkg(nkv, NAN), dvg(nkv, NAN);
  cuda::attention_forward_host(og.data(), lg.data(), q.data(), k.data(), v.data(), s);
  cuda::attention_backward_host(dqg.data(), dkg.data(), dvg.data(), g.data(), q.data(), k.data(),
                                v.data(), og.data(), lg.data(), s);
  expect_within_rule("out", max_err(og, o64), max_err(o32, o64), max_abs(o64));
  expect_within_rule("lse", max_err(lg, l64), max_err(l32, l64), max_abs(l64));
  const double ds_bound =
      attention_scale(s) * max_row_norm(g, s.D) * max_row_norm(v, s.D);
  expect_within_rule("dq", max_err(dqg, dq64), max_err(dq32, dq64), max_abs(dq64),
                     ds_bound * max_abs_f(k));
  expect_within_rule("dk", max_err(dkg, dk64), max_err(dk32, dk64), max_abs(dk64),
                     ds_bound * max_abs_f(q));
  expect_within_rule("dv", max_err(dvg, dv64), max_err(dv32, dv64), max_abs(dv64));

  // CPU flash path on the same inputs: both fp32 with the same online-softmax math, so they agree
  // to within the sum of their (already bounded) errors vs fp64.
  std::vector<float> oc(nq), lc(nl);
  attention_forward(oc.data(), lc.data(), q.data(), k.data(), v.data(), s);
  EXPECT_TRUE(max_err(og, oc) <= max_err(og, o64) + max_err(oc, o64) + 1e-12);
  EXPECT_TRUE(max_err(lg, lc) <= max_err(lg, l64) + max_err(lc, l64) + 1e-12);
}

// (name, B, T, S, H, Hkv, D, window_left, window_right)
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttention,
    ::testing::Values(Case{"causal_gqa4_d64", 2, 111, 111, 4, 1, 64, -1, 0},
                      Case{"nomask_d40_T59_S111", 2, 59, 111, 8, 8, 40, -1, -1},
                      Case{"window_l20_r13_gqa8_d40", 2, 111, 111, 8, 1, 40, 20, 13},
                      Case{"causal_S_gt_T_d128", 2, 59, 111, 4, 2, 128, -1, 0},
                      Case{"causal_S_lt_T_masked_rows", 2, 111, 59, 4, 4, 64, -1, 0},
                      Case{"causal_gqa8_d128_T257", 1, 257, 257, 8, 1, 128, -1, 0}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// Shape validation happens before any CUDA call, so this runs without a device too.
TEST(CudaAttentionShape, RejectsBadShapeBeforeTouchingTheDevice) {
  AttnShape s;
  s.B = 1; s.T = 4; s.S = 4; s.H = 6; s.Hkv = 4; s.D = 8;
  std::vector<float> buf(1024);
  EXPECT_THROW(cuda::attention_forward_host(buf.data(), buf.data(), buf.data(), buf.data(),
                                            buf.data(), s),
               Error);
}

}  // namespace
