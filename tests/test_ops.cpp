// test_ops.cpp: embedding, RMSNorm, SwiGLU, RoPE.
// Each fast path is checked against (a) the naive `_ref` in the library and an fp64 evaluation of
// the formula written here, (b) for backwards, central finite differences in fp64 of the random
// linear functional L = sum(dout * out), and (c) for RoPE, golden inv_freq/cos/sin from transformers'
// LlamaRotaryEmbedding (tests/fixtures/rope, made by scripts/gen_rope_fixture.py).
// Tolerances are multiples of the fp32 unit roundoff u = 2^-24 times the magnitude of the terms
// summed, so cancellation does not hide real errors. Sizes are odd (59, 111, ...) to hit the tails.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/embedding.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "src/common.h"

using namespace frugal;

namespace {

constexpr double kU = 5.9604644775390625e-08;  // fp32 unit roundoff 2^-24

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// max over i of |a_i - b_i| / tol_i; NaN anywhere gives NaN (and fails `<= 1`).
double worst_ratio(const float* a, const double* b, const double* tol, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; ++i) {
    double r = std::abs((double)a[i] - b[i]) / tol[i];
    if (!(r <= w)) w = r;  // keeps NaN
  }
  return w;
}

// central difference of f at x[i] in fp64
double central_diff(std::vector<double>& x, size_t i, double h, const std::function<double()>& f) {
  double x0 = x[i];
  x[i] = x0 + h;
  double fp = f();
  x[i] = x0 - h;
  double fm_ = f();
  x[i] = x0;
  return (fp - fm_) / (2 * h);
}

}  // namespace

// ============================================ embedding ===========================================

TEST(Embedding, ForwardMatchesRefAndTable) {
  // checks: the gathered rows equal the bf16 table rows widened to fp32 exactly (bf16 -> fp32 is exact)
  const int N = 59, C = 111, V = 37;
  std::mt19937 rng(3);
  std::vector<bf16> table((size_t)V * C);
  for (auto& t : table) t = bf16::from_float(std::normal_distribution<float>(0.f, 1.f)(rng));
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = (int32_t)(rng() % V);
  ids[0] = 0; ids[1] = V - 1; ids[2] = ids[3];  // edges and a repeat
  std::vector<float> out((size_t)N * C, NAN), ref((size_t)N * C, NAN);
  embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
  embedding_forward_ref(ref.data(), ids.data(), table.data(), N, C, V);
  size_t bad = 0;
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      float want = table[(size_t)ids[n] * C + c].to_float();
      bad += !(out[(size_t)n * C + c] == want) + !(ref[(size_t)n * C + c] == want);
    }
  EXPECT_EQ(bad, 0u);
}

TEST(Embedding, BackwardScatterAddMatchesRefAndFiniteDifferences) {
  // checks: dtable += scatter(dout) against the serial ref (same summation order -> bitwise),
  // against fp64 sums, and a finite difference of L = sum(dout * forward(table)) in fp64.
  const int N = 59, C = 111, V = 13;  // V << N: many repeated ids
  std::mt19937 rng(4);
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = (int32_t)(rng() % V);
  auto dout = randn((size_t)N * C, 5);
  auto init = randn((size_t)V * C, 6);  // backward accumulates onto existing values
  std::vector<float> dt(init), dt_ref(init);
  omp_set_num_threads(2);
  embedding_backward(dt.data(), dout.data(), ids.data(), N, C, V);
  embedding_backward_ref(dt_ref.data(), dout.data(), ids.data(), N, C, V);
  std::vector<double> exact(init.begin(), init.end()), tol((size_t)V * C);
  std::vector<double> mag(init.size());
  for (size_t i = 0; i < init.size(); ++i) mag[i] = std::abs(init[i]);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      exact[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
      mag[(size_t)ids[n] * C + c] += std::abs(dout[(size_t)n * C + c]);
    }
  size_t diff_ref = 0;
  for (size_t i = 0; i < dt.size(); ++i) diff_ref += dt[i] != dt_ref[i];
  EXPECT_EQ(diff_ref, 0u);
  for (size_t i = 0; i < tol.size(); ++i) tol[i] = (N + 1) * kU * mag[i] + 1e-30;  // serial fp32 sum bound
  double w = worst_ratio(dt.data(), exact.data(), tol.data(), dt.size());
  EXPECT_TRUE(w <= 1.0) << w;

  // finite differences: table entries are multiples of 1/16 in [-2, 2] and h = 1/16, all exact in bf16
  std::vector<bf16> table((size_t)V * C);
  for (auto& t : table) t = bf16::from_float((float)((int)(rng() % 65) - 32) / 16.f);
  std::vector<float> out((size_t)N * C), g((size_t)V * C, 0.f);
  embedding_backward(g.data(), dout.data(), ids.data(), N, C, V);
  auto L = [&]() {
    embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += (double)dout[i] * out[i];
    return s;
  };
  double worst = 0;
  for (int k = 0; k < 40; ++k) {
    size_t i = rng() % table.size();
    bf16 t0 = table[i];
    const float h = 1.f / 16.f;
    table[i] = bf16::from_float(t0.to_float() + h);
    double lp = L();
    table[i] = bf16::from_float(t0.to_float() - h);
    double lm = L();
    table[i] = t0;
    double fd = (lp - lm) / (2.0 * h);
    double err = std::abs(fd - g[i]) / (N * kU * (1 + std::abs(fd)));
    if (!(err <= worst)) worst = err;
  }
  EXPECT_TRUE(worst <= 1.0) << worst;
}

TEST(Embedding, BadIdThrowsNamingIdAndVocab) {
  const int N = 5, C = 3, V = 7;
  std::vector<bf16> table((size_t)V * C, bf16::from_float(1.f));
  std::vector<int32_t> ids = {0, 1, 7, 2, 3};
  std::vector<float> out((size_t)N * C), dt((size_t)V * C, 0.f);
  try {
    embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
    FAIL() << "no throw for id 7 with V = 7";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("id 7"), std::string::npos) << m;
    EXPECT_NE(m.find("[0, 7)"), std::string::npos) << m;
  }
  ids[2] = -1;
  EXPECT_THROW(embedding_backward(dt.data(), out.data(), ids.data(), N, C, V), Error);
  EXPECT_THROW(embedding_forward_ref(out.data(), ids.data(), table.data(), N, C, V), Error);
}

// ============================================ RMSNorm =============================================

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

// ============================================= SwiGLU =============================================

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

// ============================================== RoPE ==============================================

namespace {

struct RopeCase {
  std::string name;
  fm::RopeParams p;
  int seq_len = 0;
  float attention_factor = 1.f;
  std::vector<int32_t> positions;
  std::vector<float> inv_freq, cos, sin;  // [D/2], [P, D/2], [P, D/2]
};

std::vector<float> read_f32(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open fixture ", path);
  std::vector<float> v(n);
  f.read(reinterpret_cast<char*>(v.data()), (std::streamsize)(n * 4));
  if ((size_t)f.gcount() != n * 4) fail("fixture ", path, " is shorter than ", n, " floats");
  return v;
}

std::vector<RopeCase> load_rope_fixture() {
  const std::string dir = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/rope/";
  std::ifstream f(dir + "index.json");
  if (!f) fail("cannot open ", dir, "index.json (run scripts/gen_rope_fixture.py)");
  nlohmann::json j = nlohmann::json::parse(f);
  std::vector<RopeCase> cases;
  for (const auto& c : j.at("cases")) {
    RopeCase rc;
    rc.name = c.at("name");
    std::string t = c.at("rope_type");
    rc.p.type = t == "default" ? fm::ROPE_DEFAULT : t == "linear" ? fm::ROPE_LINEAR : t == "dynamic" ? fm::ROPE_DYNAMIC
              : t == "yarn" ? fm::ROPE_YARN : t == "llama3" ? fm::ROPE_LLAMA3 : (fail("unknown rope_type ", t), fm::ROPE_DEFAULT);
    rc.p.theta = c.at("rope_theta").get<float>();
    rc.p.head_dim = c.at("head_dim");
    rc.p.factor = c.at("factor").get<float>();
    rc.p.low_freq_factor = c.at("low_freq_factor").get<float>();
    rc.p.high_freq_factor = c.at("high_freq_factor").get<float>();
    rc.p.original_max_position_embeddings = c.at("original_max_position_embeddings");
    rc.p.max_position_embeddings = c.at("max_position_embeddings");
    rc.p.truncate = c.at("truncate").get<bool>();
    rc.p.mscale = c.at("mscale").get<float>();
    rc.p.mscale_all_dim = c.at("mscale_all_dim").get<float>();
    rc.seq_len = c.at("seq_len");
    rc.attention_factor = c.at("attention_factor").get<float>();
    rc.positions = c.at("positions").get<std::vector<int32_t>>();
    size_t half = rc.p.head_dim / 2, P = rc.positions.size();
    rc.inv_freq = read_f32(dir + c.at("files").at("inv_freq").get<std::string>(), half);
    rc.cos = read_f32(dir + c.at("files").at("cos").get<std::string>(), P * half);
    rc.sin = read_f32(dir + c.at("files").at("sin").get<std::string>(), P * half);
    cases.push_back(rc);
  }
  return cases;
}

}  // namespace

TEST(Rope, MatchesTransformersFixtureForAllTypes) {
  // checks: inv_freq, attention factor, cos/sin against transformers 5.x LlamaRotaryEmbedding.
  // Both sides evaluate the same fp32 operations in the same order, so inv_freq may differ only by
  // the pow implementation (torch's vectorized Sleef powf is <= 1 ulp, glibc powf ~0.5 ulp ->
  // tolerance 2 ulp; in practice almost all are bitwise equal). cos/sin of the same fp32 argument
  // pos*inv_freq differ by <= 1 ulp of each libm plus the attention-factor product (3u * af,
  // absolute). Where inv_freq differs by d, the fp32 argument moves by pos*d plus at most one ulp
  // of the argument, and cos/sin (1-Lipschitz) by as much: that is added to the tolerance for that
  // frequency only, so any other difference (e.g. fp64 instead of fp32 arguments, off by up to
  // 1e5 * 2^-24 rad at position 1e5) fails.
  auto cases = load_rope_fixture();
  ASSERT_EQ(cases.size(), 6u);  // default, linear, dynamic, yarn, yarn_mscale, llama3
  for (const auto& rc : cases) {
    SCOPED_TRACE(rc.name);
    const int half = rc.p.head_dim / 2;
    std::vector<float> inv(half);
    fm::rope_inv_freq(rc.p, rc.seq_len, inv.data());
    int inv_bad = 0, inv_exact = 0;
    for (int i = 0; i < half; ++i) {
      double ulp = std::abs((double)inv[i] - rc.inv_freq[i]) / (std::ldexp(1.0, std::ilogb(rc.inv_freq[i]) - 23));
      inv_bad += !(ulp <= 2.0);
      inv_exact += inv[i] == rc.inv_freq[i];
    }
    EXPECT_EQ(inv_bad, 0);
    std::printf("[ rope     ] %-8s inv_freq bitwise equal %d/%d\n", rc.name.c_str(), inv_exact, half);
    EXPECT_FLOAT_EQ(fm::rope_attention_factor(rc.p), rc.attention_factor);
    int maxp = 0;
    for (int p : rc.positions) maxp = std::max(maxp, p);
    RopeTable t = rope_table(rc.p, maxp + 1, rc.seq_len);
    double worst = 0;
    for (size_t k = 0; k < rc.positions.size(); ++k)
      for (int i = 0; i < half; ++i) {
        size_t a = (size_t)rc.positions[k] * half + i, b = k * half + i;
        double d = std::abs((double)inv[i] - rc.inv_freq[i]);
        double arg = (double)rc.positions[k] * rc.inv_freq[i];
        double arg_ulp = arg > 0 ? std::ldexp(1.0, std::ilogb(arg) - 23) : 0.0;
        double tol = rc.attention_factor * (3 * kU + (d > 0 ? rc.positions[k] * d + arg_ulp : 0.0));
        double e = std::max(std::abs((double)t.cos[a] - rc.cos[b]), std::abs((double)t.sin[a] - rc.sin[b])) / tol;
        if (!(e <= worst)) worst = e;
      }
    EXPECT_TRUE(worst <= 1.0) << worst;
  }
}

TEST(Rope, DynamicKeepsDefaultFrequenciesUpToMaxPositions) {
  // checks: HF's dynamic NTK only rescales once seq_len > max_position_embeddings
  fm::RopeParams p;
  p.type = fm::ROPE_DYNAMIC; p.factor = 2.f; p.head_dim = 64; p.max_position_embeddings = 2048;
  fm::RopeParams d = p;
  d.type = fm::ROPE_DEFAULT;
  std::vector<float> a(32), b(32), c(32);
  fm::rope_inv_freq(p, 2048, a.data());
  fm::rope_inv_freq(d, 2048, b.data());
  fm::rope_inv_freq(p, 2049, c.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 32 * 4), 0);
  EXPECT_EQ(c[0], b[0]);  // i = 0 is base^0 = 1 always
  EXPECT_LT(c[31], b[31]);  // larger base -> lower frequencies
}

// fp64 rotation with table values, for the fp64 references below
static void rope_rotate_f64(double* y, const double* x, const float* c, const float* s, int D) {
  const int half = D / 2;
  for (int i = 0; i < half; ++i) {
    y[i] = x[i] * c[i] - x[i + half] * s[i];
    y[i + half] = x[i + half] * c[i] + x[i] * s[i];
  }
}

TEST(Rope, ForwardMatchesRefAndBackwardMatchesFiniteDifferences) {
  // checks: fast forward vs the rotate_half ref and fp64; backward vs fp64 central differences of
  // L = sum(dout * rope(x)); forward then backward gives attention_factor^2 * x (rotation is orthogonal).
  for (auto type : {fm::ROPE_DEFAULT, fm::ROPE_YARN}) {
    fm::RopeParams p;
    p.type = type; p.head_dim = 22; p.factor = 4.f; p.original_max_position_embeddings = 64;
    p.max_position_embeddings = 256;
    const int N = 59, H = 3, D = 22, half = D / 2;
    RopeTable t = rope_table(p, 301, N);
    std::mt19937 rng(60);
    std::vector<int32_t> pos(N);
    for (auto& q : pos) q = (int32_t)(rng() % 301);
    pos[0] = 0; pos[1] = 300;
    auto x = randn((size_t)N * H * D, 61), dout = randn((size_t)N * H * D, 62);
    std::vector<float> y(x), yr((size_t)N * H * D);
    rope_forward(y.data(), pos.data(), t, N, H, D);
    rope_forward_ref(yr.data(), x.data(), pos.data(), t, N, H, D);
    std::vector<double> want((size_t)N * H * D), tol((size_t)N * H * D), xd(x.begin(), x.end());
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < H; ++h) {
        size_t o = ((size_t)n * H + h) * D;
        const float* c = &t.cos[(size_t)pos[n] * half];
        const float* s = &t.sin[(size_t)pos[n] * half];
        rope_rotate_f64(&want[o], &xd[o], c, s, D);
        for (int i = 0; i < half; ++i) {
          tol[o + i] = 3 * kU * (std::abs(x[o + i] * c[i]) + std::abs(x[o + i + half] * s[i])) + 1e-30;
          tol[o + i + half] = 3 * kU * (std::abs(x[o + i + half] * c[i]) + std::abs(x[o + i] * s[i])) + 1e-30;
        }
      }
    EXPECT_TRUE(worst_ratio(y.data(), want.data(), tol.data(), want.size()) <= 1.0);
    EXPECT_TRUE(worst_ratio(yr.data(), want.data(), tol.data(), want.size()) <= 1.0);

    // backward vs finite differences (L is linear in x; FD in fp64 on 3 rows to keep it small)
    std::vector<float> dx(dout);
    rope_backward(dx.data(), pos.data(), t, N, H, D);
    const int Nf = 3;
    std::vector<double> xs(xd.begin(), xd.begin() + (size_t)Nf * H * D), ys(xs.size());
    auto L = [&]() {
      double s = 0;
      for (int n = 0; n < Nf; ++n)
        for (int h = 0; h < H; ++h) {
          size_t o = ((size_t)n * H + h) * D;
          rope_rotate_f64(&ys[o], &xs[o], &t.cos[(size_t)pos[n] * half], &t.sin[(size_t)pos[n] * half], D);
          for (int d = 0; d < D; ++d) s += dout[o + d] * ys[o + d];
        }
      return s;
    };
    std::vector<double> fd(xs.size()), ftol(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) {
      fd[i] = central_diff(xs, i, 1e-3, L);
      size_t row = i / D * D;
      int d = (int)(i % D), k = d % half;
      int n = (int)(i / ((size_t)H * D));
      double c = t.cos[(size_t)pos[n] * half + k], s = t.sin[(size_t)pos[n] * half + k];
      // fp32 backward: two products and one add (<= 3u of the terms); the fp64 FD of a linear L is exact to ~1e-12
      ftol[i] = 3 * kU * (std::abs(dout[row + k] * (d < half ? c : s)) + std::abs(dout[row + k + half] * (d < half ? s : c))) + 1e-9;
    }
    EXPECT_TRUE(worst_ratio(dx.data(), fd.data(), ftol.data(), fd.size()) <= 1.0);

    // forward then backward: Rᵀ R = af^2 I
    const double af = fm::rope_attention_factor(p);
    std::vector<float> z(y);
    rope_backward(z.data(), pos.data(), t, N, H, D);
    std::vector<double> back((size_t)N * H * D), btol((size_t)N * H * D);
    for (size_t i = 0; i < back.size(); ++i) {
      back[i] = af * af * x[i];
      btol[i] = 8 * kU * af * af * (std::abs(x[i]) + std::abs(x[(i / D) * D + (i % D + half) % D])) + 1e-30;
    }
    EXPECT_TRUE(worst_ratio(z.data(), back.data(), btol.data(), back.size()) <= 1.0) << "type " << type;
  }
}

TEST(Rope, BadPositionAndHeadDimThrow) {
  fm::RopeParams p;
  p.head_dim = 8;
  RopeTable t = rope_table(p, 10, 10);
  std::vector<float> x(2 * 8);
  std::vector<int32_t> pos = {3, 10};
  try {
    rope_forward(x.data(), pos.data(), t, 2, 1, 8);
    FAIL() << "position 10 accepted by a 10-row table";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 10"), std::string::npos) << e.what();
  }
  pos[1] = 2;
  EXPECT_THROW(rope_backward(x.data(), pos.data(), t, 1, 1, 6), Error);
  p.head_dim = 7;
  EXPECT_THROW(rope_table(p, 10, 10), Error);
}
