// test_optim.cpp: AdamW, gradient clipping and LR schedules.
// Checked against: torch.optim.AdamW + torch.nn.utils.clip_grad_norm_ and transformers'
// get_*_schedule_with_warmup (golden fixture tests/fixtures/optim from
// scripts/gen_optim_fixture.py), hand-computed one-element AdamW steps, an fp64 re-statement of
// the update for a multi-chunk tensor, and thread-count invariance.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>

#include "src/model/optim.h"
#include "src/io/safetensors.h"
#include "tests/test_util.h"

using namespace frugal;
using frugal::test_util::fixture_f32;

namespace {

const std::string kFixture = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/optim/optim.safetensors";

std::vector<double> get_f64(const SafetensorsFile& f, const std::string& name) {
  const TensorView* t = f.find(name);
  if (!t || t->dtype != DType::F64) fail("fixture ", f.path(), " has no F64 tensor ", name);
  std::vector<double> out(t->numel());
  std::memcpy(out.data(), t->data, t->nbytes);
  return out;
}

// Max over i of |a - b| / (|ref| scale), NaN-propagating (returns +inf on NaN).
double max_rel_err(const float* a, const std::vector<float>& ref, double floor_abs) {
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double e = std::fabs((double)a[i] - (double)ref[i]) / std::max(std::fabs((double)ref[i]), floor_abs);
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  return worst;
}

struct Params {
  std::vector<std::vector<float>> w, g;
  std::vector<ParamRef> refs;
  void add(const std::string& name, std::vector<float> w0) {
    w.push_back(std::move(w0));
    g.emplace_back(w.back().size(), 0.f);
  }
  void bind() {  // after all add() calls: pointers are stable from here on
    refs.clear();
    for (size_t i = 0; i < w.size(); ++i) {
      ParamRef r;
      r.name = "p" + std::to_string(i);
      r.shape = {(int64_t)w[i].size()};
      r.w = w[i].data();
      r.g = g[i].data();
      r.numel = w[i].size();
      refs.push_back(r);
    }
  }
};

// Replays fixture run `tag` and compares every step's norm, weights and moments with torch.
void check_run(const std::string& tag) {
  SafetensorsFile f(kFixture);
  std::vector<float> hyper = fixture_f32(f, tag + ".hyper"), lrs = fixture_f32(f, tag + ".lr");
  AdamWConfig cfg;
  cfg.beta1 = hyper[0];
  cfg.beta2 = hyper[1];
  cfg.eps = hyper[2];
  cfg.weight_decay = hyper[3];
  const float max_norm = hyper[4];
  const int steps = (int)hyper[5];
  AdamW opt(cfg);
  Params P;
  for (int i = 0; i < 3; ++i) P.add("p" + std::to_string(i), fixture_f32(f, tag + ".p" + std::to_string(i) + ".w0"));
  P.bind();
  const double u = std::ldexp(1.0, -23);  // fp32 ulp at 1
  for (int s = 0; s < steps; ++s) {
    const std::string ss = tag + ".s" + std::to_string(s);
    for (int i = 0; i < 3; ++i) P.g[i] = fixture_f32(f, ss + ".p" + std::to_string(i) + ".g");
    P.bind();
    const double norm = clip_grad_norm(P.refs, max_norm);
    const float ref_norm = fixture_f32(f, ss + ".norm")[0];
    // torch sums squares in fp32 (per tensor, then over tensor norms); we sum in fp64.
    EXPECT_TRUE(std::fabs(norm - ref_norm) <= 4 * u * ref_norm) << ss << " norm " << norm << " vs " << ref_norm;
    opt.step(P.refs, lrs[s]);
    EXPECT_EQ(opt.t(), s + 1);
    // Bound: each step re-rounds w, m, v a handful of times (measured ≤ 2 ulp after 5 steps; incl. fma
    // contraction and the clip coefficient's 1-ulp difference), accumulated over s+1 steps.
    // m and v pass near zero by cancellation, so their scale floor is the tensor's max |value|.
    const double tol = 3 * u * (s + 1);
    for (int i = 0; i < 3; ++i) {
      const std::string pi = ss + ".p" + std::to_string(i);
      std::vector<float> rw = fixture_f32(f, pi + ".w"), rm = fixture_f32(f, pi + ".m"), rv = fixture_f32(f, pi + ".v");
      auto maxabs = [](const std::vector<float>& x) {
        double m = 0;
        for (float v : x) m = std::max(m, (double)std::fabs(v));
        return m;
      };
      const std::string name = "p" + std::to_string(i);
      double ew = max_rel_err(P.w[i].data(), rw, 1e-3);
      double em = max_rel_err(opt.m(name).data(), rm, maxabs(rm));
      double ev = max_rel_err(opt.v(name).data(), rv, maxabs(rv));
      if (getenv("FRUGAL_TEST_VERBOSE"))
        printf("%s: w %.2f m %.2f v %.2f ulp (tol %.0f)\n", pi.c_str(), ew / u, em / u, ev / u, tol / u);
      EXPECT_TRUE(ew <= tol) << pi << ".w rel err " << ew / u << " ulp";
      EXPECT_TRUE(em <= tol) << pi << ".m rel err " << em / u << " ulp";
      EXPECT_TRUE(ev <= tol) << pi << ".v rel err " << ev / u << " ulp";
    }
  }
}

}  // namespace

TEST(AdamW, MatchesTorchWithClipAndWeightDecay) { check_run("a"); }
TEST(AdamW, MatchesTorchLargeBeta1Branch) { check_run("b"); }

// One element, values chosen so every intermediate is exact or nearly so; computed by hand from
// torch's order: decay first (w·(1 - lr·wd)), then the Adam step on the decayed weight.
TEST(AdamW, HandComputedDecoupledDecay) {
  AdamWConfig c;
  c.weight_decay = 0.5f;
  c.eps = 0.f;
  AdamW opt(c);
  float w = 1.f, g = 1.f;
  std::vector<ParamRef> p{{"x", {1}, &w, &g, 1}};
  opt.step(p, 0.5f);
  // w = 1·(1 - 0.25) = 0.75; m = 0.1, v = 0.001; m̂ = 1, v̂ = 1 -> w = 0.75 - 0.5 = 0.25
  EXPECT_TRUE(std::fabs(w - 0.25f) <= 1e-6f) << w;
  // step 2 with g = -1: w = 0.25·0.75 = 0.1875; m = 0.09 - 0.1 = -0.01, v = 0.000999 + 0.001
  // m̂ = -0.01/0.19, v̂ = 0.001999/0.001999 = 1 -> w = 0.1875 + 0.5·0.01/0.19
  g = -1.f;
  opt.step(p, 0.5f);
  const double expect = 0.1875 + 0.5 * 0.01 / 0.19;
  EXPECT_TRUE(std::fabs(w - expect) <= 1e-6) << w << " vs " << expect;
  EXPECT_EQ(opt.t(), 2);
}

// A tensor spanning many chunks with an odd tail, against an fp64 statement of the update.
TEST(AdamW, LargeTensorMatchesFp64Reference) {
  const size_t n = 100003;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> w(n), g(n), w0(n);
  for (size_t i = 0; i < n; ++i) w0[i] = w[i] = nd(rng);
  std::vector<double> rw(w0.begin(), w0.end()), rm(n, 0.0), rv(n, 0.0);
  AdamWConfig c;
  c.weight_decay = 0.01f;
  AdamW opt(c);
  std::vector<ParamRef> p{{"big", {(int64_t)n}, w.data(), g.data(), n}};
  const float lr = 1e-2f;
  for (int t = 1; t <= 3; ++t) {
    for (size_t i = 0; i < n; ++i) g[i] = nd(rng);
    opt.step(p, lr);
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
    for (size_t i = 0; i < n; ++i) {
      rw[i] *= 1 - (double)lr * 0.01;
      rm[i] = 0.9 * rm[i] + 0.1 * g[i];
      rv[i] = 0.999 * rv[i] + 0.001 * (double)g[i] * g[i];
      rw[i] -= lr / bc1 * rm[i] / (std::sqrt(rv[i]) / std::sqrt(bc2) + 1e-8);
    }
  }
  // fp32 vs fp64 over 3 steps: the update lr·m̂/√v̂ ~ lr carries ~1e-6 relative error
  // (m̂/√v̂ can be ill-conditioned where m cancels) on weights of magnitude ~1.
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    double e = std::fabs(w[i] - rw[i]);
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  // (an element skipped at a chunk boundary would be off by ~lr = 1e-2)
  EXPECT_TRUE(worst <= 1e-5) << worst;
}

TEST(AdamW, ThreadCountInvariant) {
  const size_t n = 50001;
  std::vector<float> base(n), grads(n);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < n; ++i) base[i] = nd(rng), grads[i] = nd(rng);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> w = base, g = grads;
    std::vector<ParamRef> p{{"w", {(int64_t)n}, w.data(), g.data(), n}};
    AdamW opt(AdamWConfig{0.9f, 0.999f, 1e-8f, 0.1f});
    double norm = 0;
    for (int s = 0; s < 3; ++s) {
      norm = clip_grad_norm(p, 1.0);
      opt.step(p, 1e-3f);
    }
    return std::make_pair(w, norm);
  };
  const int saved = omp_get_max_threads();
  auto a = run(1), b = run(2);
  omp_set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(a.first.data(), b.first.data(), n * sizeof(float)));
  EXPECT_EQ(a.second, b.second);  // bitwise: fixed chunk order
}

TEST(AdamW, StateSizeMismatchNamesParam) {
  AdamW opt(AdamWConfig{});
  std::vector<float> w(5, 1.f), g(5, 1.f);
  std::vector<ParamRef> p{{"layer.lora_A.weight", {5}, w.data(), g.data(), 5}};
  opt.step(p, 1e-3f);
  p[0].numel = 4;
  try {
    opt.step(p, 1e-3f);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer.lora_A.weight"), std::string::npos) << e.what();
  }
  // A state filled by a checkpoint loader (m(), v() by name) is used as is.
  AdamW opt2(AdamWConfig{});
  opt2.m("q").assign(2, 0.5f);
  opt2.v("q").assign(2, 0.25f);
  opt2.set_t(10);
  std::vector<float> w2(2, 0.f), g2(2, 0.f);
  std::vector<ParamRef> q{{"q", {2}, w2.data(), g2.data(), 2}};
  opt2.step(q, 1.f);
  EXPECT_EQ(opt2.t(), 11);
  EXPECT_FLOAT_EQ(opt2.m("q")[0], 0.45f);  // 0.9·0.5 + 0.1·0
  EXPECT_TRUE(w2[0] < 0.f);                 // moved against the stored momentum
}

TEST(GradNorm, Fp64SumAndTorchClipSemantics) {
  std::vector<float> a{3.f, 4.f}, b(9, 0.f), wa(2), wb(9);
  b[8] = 12.f;
  std::vector<ParamRef> p{{"a", {2}, wa.data(), a.data(), 2}, {"b", {9}, wb.data(), b.data(), 9}};
  EXPECT_DOUBLE_EQ(grad_norm(p), 13.0);
  // max_norm above the norm: untouched (coef = 20/13 > 1)
  EXPECT_DOUBLE_EQ(clip_grad_norm(p, 20.0), 13.0);
  EXPECT_EQ(a[0], 3.f);
  // max_norm <= 0: no clipping
  EXPECT_DOUBLE_EQ(clip_grad_norm(p, 0.0), 13.0);
  EXPECT_EQ(b[8], 12.f);
  // clip to 1.3: coef = 1.3 / (13 + 1e-6) in fp32
  EXPECT_DOUBLE_EQ(clip_grad_norm(p, 1.3), 13.0);
  const float coef = 1.3f / (13.f + 1e-6f);
  EXPECT_EQ(a[0], 3.f * coef);
  EXPECT_EQ(b[8], 12.f * coef);
  EXPECT_TRUE(std::fabs(grad_norm(p) - 1.3) <= 1e-6);
  zero_grads(p);
  EXPECT_EQ(grad_norm(p), 0.0);
  EXPECT_EQ(b[8], 0.f);
}

TEST(LRSchedule, MatchesTransformers) {
  SafetensorsFile f(kFixture);
  struct Case {
    const char* name;
    const char* type;
    int warmup, total;
    float min_ratio;
  } cases[] = {{"sched.constant", "constant", 3, 20, 0.f},
               {"sched.linear", "linear", 3, 20, 0.f},
               {"sched.cosine", "cosine", 3, 20, 0.f},
               {"sched.cosine_min", "cosine", 3, 20, 0.1f},
               {"sched.cosine_w0", "cosine", 0, 7, 0.f}};
  for (const Case& c : cases) {
    LRSchedule s;
    s.type = c.type;
    s.lr = 3e-3f;
    s.warmup_steps = c.warmup;
    s.total_steps = c.total;
    s.min_lr_ratio = c.min_ratio;
    s.validate();
    std::vector<double> ref = get_f64(f, c.name);
    for (size_t k = 0; k < ref.size(); ++k) {
      // Same fp64 formula as transformers, then one rounding to fp32 (≤ 0.5 ulp); 0.1f is
      // not 0.1 exactly, which moves cosine_min by ≤ 2^-24 relative of the lr as well.
      const double got = s.at((int64_t)k);
      EXPECT_TRUE(std::fabs(got - ref[k]) <= std::ldexp(1.0, -23) * std::max(ref[k], 1e-6))
          << c.name << " step " << k << ": " << got << " vs " << ref[k];
    }
  }
}

TEST(LRSchedule, ValidationErrors) {
  auto err = [](LRSchedule s) -> std::string {
    try {
      s.validate();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  LRSchedule ok;
  EXPECT_EQ(err(ok), "");
  LRSchedule a = ok;
  a.type = "cosin";
  EXPECT_NE(err(a).find("cosin"), std::string::npos);
  LRSchedule b = ok;
  b.lr = 0.f;
  EXPECT_NE(err(b).find("lr"), std::string::npos);
  LRSchedule c = ok;
  c.min_lr_ratio = 1.5f;
  EXPECT_NE(err(c).find("min_lr_ratio"), std::string::npos);
  LRSchedule d = ok;
  d.total_steps = 0;
  EXPECT_NE(err(d).find("total_steps"), std::string::npos);
}

// The min_lr_ratio extension for linear (no transformers counterpart): λ' = λ·(1-r) + r,
// hand-computed; constant ignores it; step 0 of a warmup is lr 0 (transformers semantics).
TEST(LRSchedule, MinLrRatioLinearByHand) {
  LRSchedule s;
  s.type = "linear";
  s.lr = 1.f;
  s.warmup_steps = 0;
  s.total_steps = 10;
  s.min_lr_ratio = 0.25f;
  EXPECT_FLOAT_EQ(s.at(0), 1.f);
  EXPECT_FLOAT_EQ(s.at(5), 0.5f * 0.75f + 0.25f);
  EXPECT_FLOAT_EQ(s.at(10), 0.25f);
  EXPECT_FLOAT_EQ(s.at(15), 0.25f);  // past the end: floored, never negative
  s.type = "constant";
  EXPECT_FLOAT_EQ(s.at(7), 1.f);
  s.warmup_steps = 4;
  EXPECT_EQ(s.at(0), 0.f);
  EXPECT_FLOAT_EQ(s.at(2), 0.5f);
}
