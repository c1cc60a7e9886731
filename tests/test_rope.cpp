// test_rope.cpp: RoPE (kernels/cpu/rope.h).
// Checked against golden inv_freq/cos/sin from transformers' LlamaRotaryEmbedding
// (tests/fixtures/rope, made by scripts/gen_rope_fixture.py), the naive `_ref` and an fp64
// rotation written here; the backward against central finite differences in fp64 of
// L = sum(dout * rope(x)). Tolerances: multiples of the fp32 unit roundoff (op_test_util.h).
// Sizes are odd (59, ...) to hit the tails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/rope.h"
#include "src/common.h"
#include "tests/op_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

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
