// test_lm_head.cpp: fused chunked lm_head + cross-entropy (lm_head_ce).
//  - lm_head_ce_ref64's analytic gradients vs central finite differences (fp64 inputs).
//  - lm_head_ce (oneDNN bf16 GEMMs, fp32 softmax, bf16 gradient operand) vs the fp64 reference,
//    with error bounds derived below; odd sizes, V not a multiple of the vocab chunk, more rows
//    than the row chunk, ignored rows (-100), and the error for a target outside [0,V).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "kernels/cpu/lm_head_ce.h"

using namespace frugal;

namespace {

avector<bf16> rand_bf16(size_t n, std::mt19937& g, float a) {
  std::uniform_real_distribution<float> d(-a, a);
  avector<bf16> v(n);
  for (auto& x : v) x = bf16::from_float(d(g));
  return v;
}

std::vector<int32_t> rand_targets(int M, int V, std::mt19937& g, int ignore_every) {
  std::uniform_int_distribution<int> d(0, V - 1);
  std::vector<int32_t> t(M);
  for (int r = 0; r < M; ++r) t[r] = (ignore_every > 0 && r % ignore_every == 2) ? kIgnoreIndex : d(g);
  return t;
}

// Compares lm_head_ce with lm_head_ce_ref. Error model (u = 2^-24, ub = 2^-8 for bf16):
//  logits: bf16 products are exact in fp32, so |dz| <= dz_r = (C+2)·u·max_v Σ_c|x_rc·W_vc|.
//  lse (fp32, online over V terms): |dlse| <= e_r = dz_r + (2V+8)·u + 8u·(zmax_r + log V).
//  softmax p = exp(z - lse): relative error <= ep_r = 2·e_r (z and lse errors, plus expf).
//  G = gs·(p - onehot) rounded to bf16: |dG| <= gs·(ub·|g| + 2·ep·p) (slack 2 for the fp32 ops).
//  dx = Σ_v G·W and dW = Σ_r G·x in fp32: + (n+2)·u·Σ|G|·|W| (resp. |x|), n = V (resp. rows).
void check_vs_ref(int M, int C, int V, int ignore_every, float gs, uint32_t seed) {
  std::mt19937 g(seed);
  auto x = rand_bf16((size_t)M * C, g, 1.f);
  auto W = rand_bf16((size_t)V * C, g, 4.f / std::sqrt((float)C));  // logits of order 1..3
  auto t = rand_targets(M, V, g, ignore_every);
  std::vector<float> dW0((size_t)V * C);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (auto& v : dW0) v = d(g);  // dW accumulates
  std::vector<float> dx(M * (size_t)C, NAN), dW = dW0, loss(M, NAN);
  std::vector<float> dx_ref(M * (size_t)C), dW_ref = dW0, loss_ref(M);
  double tot = lm_head_ce(x.data(), W.data(), t.data(), M, C, V, gs, dx.data(), dW.data(), loss.data());
  double tot_ref = lm_head_ce_ref(x.data(), W.data(), t.data(), M, C, V, gs, dx_ref.data(),
                                  dW_ref.data(), loss_ref.data());

  // fp64 logits magnitudes and softmax for the bounds
  const double u = std::ldexp(1.0, -24), ub = std::ldexp(1.0, -8);
  std::vector<double> p((size_t)M * V, 0.0), ep(M, 0.0), gabs((size_t)M * V, 0.0);
  double tot_tol = 0.0, worst_loss = 0.0;
  for (int r = 0; r < M; ++r) {
    if (t[r] == kIgnoreIndex) {
      EXPECT_EQ(loss[r], 0.f) << "ignored row " << r;
      continue;
    }
    std::vector<double> z(V);
    double zmax = 0.0, mx = -INFINITY;
    for (int v = 0; v < V; ++v) {
      double acc = 0.0, mag = 0.0;
      for (int c = 0; c < C; ++c) {
        double a = (double)x[(size_t)r * C + c].to_float() * W[(size_t)v * C + c].to_float();
        acc += a;
        mag += std::fabs(a);
      }
      z[v] = acc;
      zmax = std::max(zmax, mag);
      mx = std::max(mx, acc);
    }
    double s = 0.0;
    for (int v = 0; v < V; ++v) s += std::exp(z[v] - mx);
    double lse = mx + std::log(s);
    double dz = (C + 2) * u * zmax;
    double e = dz + (2.0 * V + 8) * u + 8 * u * (zmax + std::log((double)V));
    ep[r] = 2 * e;
    for (int v = 0; v < V; ++v) {
      p[(size_t)r * V + v] = std::exp(z[v] - lse);
      gabs[(size_t)r * V + v] = std::fabs(p[(size_t)r * V + v] - (v == t[r] ? 1.0 : 0.0));
    }
    double tol = 2 * dz + e + 4 * u * std::fabs(loss_ref[r]);
    tot_tol += tol;
    double err = std::fabs((double)loss[r] - loss_ref[r]) / tol;
    if (!(err <= worst_loss)) worst_loss = std::isnan(err) ? INFINITY : err;
  }
  EXPECT_TRUE(worst_loss <= 1.0) << "per-row loss err/bound " << worst_loss;
  EXPECT_TRUE(std::fabs(tot - tot_ref) <= tot_tol) << tot << " vs " << tot_ref << " tol " << tot_tol;

  // dx[r,c] vs ref
  double worst_dx = 0.0;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < C; ++c) {
      double b = 0.0;
      if (t[r] != kIgnoreIndex)
        for (int v = 0; v < V; ++v) {
          double gv = gabs[(size_t)r * V + v], pv = p[(size_t)r * V + v];
          b += ((ub + (V + 2) * u) * gv + 2 * ep[r] * pv) * std::fabs(W[(size_t)v * C + c].to_float());
        }
      b = std::fabs(gs) * b;
      double err = std::fabs((double)dx[(size_t)r * C + c] - dx_ref[(size_t)r * C + c]);
      if (t[r] == kIgnoreIndex) {
        EXPECT_EQ(dx[(size_t)r * C + c], 0.f) << "dx of ignored row " << r;
        continue;
      }
      double q = err / (b + 1e-30);
      if (!(q <= worst_dx)) worst_dx = std::isnan(q) ? INFINITY : q;
    }
  EXPECT_TRUE(worst_dx <= 1.0) << "dx err/bound " << worst_dx;

  // dW[v,c] vs ref (both accumulated onto dW0)
  double worst_dW = 0.0;
  const int n = std::max(V, M);
  for (int v = 0; v < V; ++v)
    for (int c = 0; c < C; ++c) {
      double b = 0.0;
      for (int r = 0; r < M; ++r) {
        if (t[r] == kIgnoreIndex) continue;
        double gv = gabs[(size_t)r * V + v], pv = p[(size_t)r * V + v];
        b += ((ub + (n + 2) * u) * gv + 2 * ep[r] * pv) * std::fabs(x[(size_t)r * C + c].to_float());
      }
      b = std::fabs(gs) * b + 2 * u * std::fabs(dW_ref[(size_t)v * C + c]);
      double err = std::fabs((double)dW[(size_t)v * C + c] - dW_ref[(size_t)v * C + c]);
      double q = err / (b + 1e-30);
      if (!(q <= worst_dW)) worst_dW = std::isnan(q) ? INFINITY : q;
    }
  EXPECT_TRUE(worst_dW <= 1.0) << "dW err/bound " << worst_dW;
  std::printf("M=%d C=%d V=%d: worst err/bound loss %.3g dx %.3g dW %.3g\n", M, C, V, worst_loss,
              worst_dx, worst_dW);
}

}  // namespace

// The fp64 reference's analytic gradient vs central finite differences of grad_scale·Σ loss.
TEST(LmHeadCE, RefGradientVsFiniteDifferences) {
  const int M = 5, C = 7, V = 13;
  std::mt19937 g(7);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> x((size_t)M * C), W((size_t)V * C);
  for (auto& v : x) v = d(g);
  for (auto& v : W) v = d(g);
  std::vector<int32_t> t = {3, kIgnoreIndex, 0, 12, 3};
  const double gs = 0.37;
  std::vector<double> dx((size_t)M * C), dW((size_t)V * C, 0.0);
  lm_head_ce_ref64(x.data(), W.data(), t.data(), M, C, V, gs, dx.data(), dW.data(), nullptr);
  auto f = [&]() { return gs * lm_head_ce_ref64(x.data(), W.data(), t.data(), M, C, V, gs, nullptr, nullptr, nullptr); };
  // central differences: truncation ~h²·f'''/6 ~ 1e-10, roundoff ~1e-16·|f|/h ~ 1e-10
  const double h = 1e-5, tol = 1e-7;
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    double s = x[i];
    x[i] = s + h; double fp = f();
    x[i] = s - h; double fm_ = f();
    x[i] = s;
    worst = std::max(worst, std::fabs((fp - fm_) / (2 * h) - dx[i]));
  }
  for (size_t i = 0; i < W.size(); ++i) {
    double s = W[i];
    W[i] = s + h; double fp = f();
    W[i] = s - h; double fm_ = f();
    W[i] = s;
    worst = std::max(worst, std::fabs((fp - fm_) / (2 * h) - dW[i]));
  }
  EXPECT_TRUE(worst <= tol) << "max |fd - analytic| = " << worst;
  for (int c = 0; c < C; ++c) EXPECT_EQ(dx[1 * C + c], 0.0);  // ignored row
}

// Small vocab (one vocab chunk), odd sizes, some ignored rows.
TEST(LmHeadCE, FastVsRefSmallVocab) { check_vs_ref(111, 59, 1000 + 7, 5, 1.f / 89, 11); }

// V = 2·vocab chunk + 7: three vocab chunks, the last one partial; 611 rows of which 543 are
// valid: two row chunks, the last one partial.
TEST(LmHeadCE, FastVsRefMultiChunk) {
  static_assert(kLmHeadRowChunk < 543 && 543 < 2 * kLmHeadRowChunk);
  check_vs_ref(611, 37, 2 * kLmHeadVocabChunk + 7, 9, 0.5f, 12);
}

// M = 1, no ignored rows, grad_scale 1.
TEST(LmHeadCE, FastVsRefSingleRow) { check_vs_ref(1, 59, 1000 + 7, 0, 1.f, 13); }

// Ignored rows contribute nothing: results equal a call on the valid rows only (bit for bit,
// since the gathered row chunks are identical), all-ignored gives 0 and leaves dW alone, and
// forward-only gives the same losses as forward+backward.
TEST(LmHeadCE, IgnoredRowsAndForwardOnly) {
  const int M = 59, C = 37, V = 1007;
  std::mt19937 g(5);
  auto x = rand_bf16((size_t)M * C, g, 1.f);
  auto W = rand_bf16((size_t)V * C, g, 0.5f);
  auto t = rand_targets(M, V, g, 4);
  std::vector<float> dx((size_t)M * C), dW((size_t)V * C, 0.f), loss(M);
  double tot = lm_head_ce(x.data(), W.data(), t.data(), M, C, V, 0.25f, dx.data(), dW.data(), loss.data());
  avector<bf16> xs;
  std::vector<int32_t> ts;
  for (int r = 0; r < M; ++r)
    if (t[r] != kIgnoreIndex) {
      xs.insert(xs.end(), x.begin() + (size_t)r * C, x.begin() + (size_t)(r + 1) * C);
      ts.push_back(t[r]);
    }
  const int Ms = (int)ts.size();
  ASSERT_LT(Ms, M);
  std::vector<float> dxs((size_t)Ms * C), dWs((size_t)V * C, 0.f), losss(Ms);
  double tots = lm_head_ce(xs.data(), W.data(), ts.data(), Ms, C, V, 0.25f, dxs.data(), dWs.data(), losss.data());
  EXPECT_EQ(tot, tots);
  EXPECT_TRUE(dW == dWs);
  for (int r = 0, k = 0; r < M; ++r) {
    if (t[r] == kIgnoreIndex) {
      EXPECT_EQ(loss[r], 0.f);
      for (int c = 0; c < C; ++c) EXPECT_EQ(dx[(size_t)r * C + c], 0.f);
    } else {
      EXPECT_EQ(loss[r], losss[k]);
      for (int c = 0; c < C; ++c) EXPECT_EQ(dx[(size_t)r * C + c], dxs[(size_t)k * C + c]);
      ++k;
    }
  }
  std::vector<float> loss_fwd(M);
  double tot_fwd = lm_head_ce(x.data(), W.data(), t.data(), M, C, V, 0.25f, nullptr, nullptr, loss_fwd.data());
  EXPECT_EQ(tot_fwd, tot);
  EXPECT_TRUE(loss_fwd == loss);

  std::vector<int32_t> none(M, kIgnoreIndex);
  std::vector<float> dW1(dW);
  double z = lm_head_ce(x.data(), W.data(), none.data(), M, C, V, 1.f, dx.data(), dW1.data(), loss.data());
  EXPECT_EQ(z, 0.0);
  EXPECT_TRUE(dW1 == dW);
  for (float v : dx) EXPECT_EQ(v, 0.f);
}

// A target outside [0,V) that is not -100 throws frugal::Error naming the target and row.
TEST(LmHeadCE, BadTargetThrows) {
  const int M = 4, C = 3, V = 7;
  std::mt19937 g(1);
  auto x = rand_bf16((size_t)M * C, g, 1.f);
  auto W = rand_bf16((size_t)V * C, g, 1.f);
  for (int32_t bad : {7, -1, 1 << 30}) {
    std::vector<int32_t> t = {0, 1, bad, 2};
    try {
      lm_head_ce(x.data(), W.data(), t.data(), M, C, V, 1.f, nullptr, nullptr, nullptr);
      FAIL() << "expected frugal::Error for target " << bad;
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(str("target ", bad, " at row 2")), std::string::npos) << msg;
    }
  }
}
