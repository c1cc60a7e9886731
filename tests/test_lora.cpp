// test_lora.cpp: LoRA adapters (src/model/lora.h) at the linear call sites of LlamaModel.
// Checked against: the base model itself (B = 0 must change nothing, bitwise, bf16 and NF4 bases);
// the fp64 reference lora_linear_ref and central finite differences of it (one site, with and
// without dropout), plus a naive fp64 backward on a site large enough to be processed in several
// row chunks; PyTorch + PEFT (tests/fixtures/lora, scripts/gen_lora_fixture.py): step-0 LoRA
// gradients and 3 AdamW steps with clipping and weight decay; the model against itself for
// gradient accumulation, activation checkpointing and the dropout stream.
//
// Tolerances vs PEFT. frugal rounds every GEMM operand of the frozen path to bf16 (u = 2^-9); the
// LoRA GEMMs are fp32 but read the site's bf16 input x and bf16 output gradient dy. The fixture
// script measures the effect on this exact model by emulating that rounding in torch: it moves the
// step-0 LoRA gradients by 1.6e-2 (rel L2) from fp32, in line with test_model.cpp (0.7-1.8e-2 for
// weight gradients). Bounds: 3e-2 vs fp32 (the inherent bf16 error with 2× margin) and 1e-2 vs the
// emulated run (only fp32 summation order and the rounding flips it causes remain; see the
// measured figures printed by the tests). AdamW's first steps divide g by |g|, so the update of an
// element whose gradient is within the bf16 error of zero can flip sign (±lr): the final weights
// differ by ~80 flipped elements in 11264: measured figures and bounds in WeightsAfterThreeSteps.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/dnnl_matmul.h"
#include "kernels/cpu/gemm_f32.h"
#include "src/model/lora.h"
#include "src/model/model.h"
#include "src/model/optim.h"
#include "src/io/safetensors.h"

using namespace frugal;

namespace {

const std::string kModel = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/model/gqa";
const std::string kRef = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/lora/reference.safetensors";

struct Fixture {
  SafetensorsFile f{kRef};
  const TensorView& t(const std::string& n) const {
    const TensorView* v = f.find(n);
    if (!v) fail("fixture tensor ", n, " missing in ", kRef);
    return *v;
  }
  std::vector<float> floats(const std::string& n) const {
    std::vector<float> v((size_t)t(n).numel());
    to_float(t(n), v.data());
    return v;
  }
  std::vector<int32_t> ints(const std::string& n) const {
    const TensorView& v = t(n);
    std::vector<int32_t> r((size_t)v.numel());
    std::memcpy(r.data(), v.data, v.nbytes);
    return r;
  }
};

// ||a - b|| / ||b|| in fp64 over several tensors (NaN propagates, so `err <= tol` fails)
struct RelL2 {
  double num = 0, den = 0;
  void add(const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i++) {
      double d = (double)a[i] - b[i];
      num += d * d;
      den += (double)b[i] * b[i];
    }
  }
  double value() const { return std::sqrt(num / den); }
};

LoraConfig fixture_lora(bool rslora) {
  LoraConfig c;
  c.rank = 4;
  c.alpha = 8;
  c.rslora = rslora;
  c.target_modules = {"all-linear"};
  return c;
}

// The fixture batch and the gqa model with LoRA initialized to the fixture's init.* tensors.
struct LoraSetup {
  Fixture fx;
  std::vector<int32_t> ids, targets;
  int B = 2, T = 37;
  Batch batch() const { return Batch{B, T, ids.data(), nullptr, targets.data()}; }
  LoraSetup() {
    ids = fx.ints("input_ids");
    auto labels = fx.ints("labels");
    targets = shift_labels(labels.data(), B, T);
  }
  LlamaModel model(bool rslora, QuantMode q = QuantMode::None, bool ckpt = false) {
    ModelOptions o;
    o.quant = q;
    o.checkpoint = ckpt;
    LlamaModel m = LlamaModel::load(kModel, o);
    m.add_lora(fixture_lora(rslora), 1);
    auto ps = m.trainable_params();
    size_t n_init = 0;
    for (const auto& t : fx.f.tensors()) n_init += t.name.rfind("init.", 0) == 0;
    EXPECT_EQ(ps.size(), n_init);  // names and count match PEFT's exactly
    for (auto& p : ps) {
      auto v = fx.floats("init." + p.name);
      EXPECT_EQ(v.size(), p.numel) << p.name;
      std::memcpy(p.w, v.data(), p.numel * sizeof(float));
    }
    m.sync_lora();
    return m;
  }
};

std::vector<std::vector<float>> grads_of(LlamaModel& m) {
  std::vector<std::vector<float>> g;
  for (auto& p : m.trainable_params()) g.emplace_back(p.g, p.g + p.numel);
  return g;
}

void randomize_B(LlamaModel& m, uint64_t seed, float stdv) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, stdv);
  for (auto& p : m.trainable_params())
    if (p.name.find("lora_B") != std::string::npos)
      for (size_t i = 0; i < p.numel; i++) p.w[i] = nd(rng);
  m.sync_lora();
}

}  // namespace

// ---- the fp32 GEMM used by LoRA vs its fp64-accumulated reference (odd sizes, all transposes,
// leading dims larger than the rows, alpha and beta) -------------------------------------------------
TEST(Lora, GemmF32MatchesReference) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int M = 59, N = 17, K = 111, pad = 3;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (float beta : {0.f, 1.f, 0.5f}) {
        const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        std::vector<float> A((size_t)(ta ? K : M) * lda), B((size_t)(tb ? N : K) * ldb), C((size_t)M * ldc);
        for (auto& v : A) v = nd(rng);
        for (auto& v : B) v = nd(rng);
        for (auto& v : C) v = nd(rng);
        std::vector<float> R = C;
        gemm_f32(ta, tb, M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
        gemm_f32_ref(ta, tb, M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, R.data(), ldc);
        double e = 0;
        size_t untouched_bad = 0;
        for (int m = 0; m < M; m++)
          for (int n = 0; n < ldc; n++) {
            const size_t i = (size_t)m * ldc + n;
            if (n < N) e = std::max(e, (double)std::fabs(C[i] - R[i]) / std::sqrt((double)K));
            else untouched_bad += std::memcmp(&C[i], &R[i], 4) != 0;  // padding columns untouched
          }
        // fp32 sums of K products of N(0,1) values: error ~ √K·|terms|·2^-24 ≪ 1e-5·√K
        EXPECT_TRUE(e <= 1e-5) << ta << tb << " beta " << beta << " err " << e;
        EXPECT_EQ(untouched_bad, 0u);
      }
}

// ---- config and init ----------------------------------------------------------------------------
TEST(Lora, ConfigTargetsAndScale) {
  auto all = LoraConfig::expand_targets({"all-linear"});
  EXPECT_EQ(all, lora_site_names());
  EXPECT_EQ(LoraConfig::expand_targets({"down_proj", "q_proj", "q_proj"}),
            (std::vector<std::string>{"q_proj", "down_proj"}));
  try {
    LoraConfig::expand_targets({"q_proj", "qkv_proj"});
    ADD_FAILURE() << "no error for an unknown module";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'qkv_proj'"), std::string::npos) << e.what();
  }
  LoraConfig c;
  c.rank = 16, c.alpha = 32;
  EXPECT_EQ(c.scale(), 2.f);
  c.rslora = true;
  EXPECT_EQ(c.scale(), 8.f);
  c.dropout = 1.f;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_EQ(peft_lora_name("model.layers.3.self_attn.q_proj.weight", 'B'),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
}

TEST(Lora, InitIsPeftDistributionAndDeterministic) {
  LlamaModel m = LlamaModel::load(kModel);
  LoraConfig c;
  c.rank = 8;
  c.target_modules = {"q_proj", "down_proj"};
  m.add_lora(c, 77);
  EXPECT_THROW(m.add_lora(c, 77), Error);  // once per model
  ASSERT_NE(m.lora_config(), nullptr);
  EXPECT_EQ(m.lora_config()->target_modules, (std::vector<std::string>{"q_proj", "down_proj"}));
  auto ps = m.trainable_params();
  ASSERT_EQ(ps.size(), 2u * 2 * 2);  // 2 layers × 2 sites × (A, B)
  EXPECT_EQ(ps[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(ps[0].shape, (std::vector<int64_t>{8, 96}));
  EXPECT_EQ(ps[3].name, "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
  EXPECT_EQ(ps[3].shape, (std::vector<int64_t>{96, 8}));
  for (auto& p : ps) {
    const bool isA = p.name.find("lora_A") != std::string::npos;
    const double bound = 1.0 / std::sqrt((double)p.shape[1]);
    double s1 = 0, s2 = 0;
    for (size_t i = 0; i < p.numel; i++) {
      if (!isA) ASSERT_EQ(p.w[i], 0.f) << p.name;
      else ASSERT_TRUE(std::fabs(p.w[i]) <= bound) << p.name;
      s1 += p.w[i], s2 += (double)p.w[i] * p.w[i];
    }
    if (isA) {  // U(-b, b): mean 0 ± 5σ/√n, variance b²/3 (within 15% for n >= 768)
      const double n = (double)p.numel, var = bound * bound / 3;
      EXPECT_TRUE(std::fabs(s1 / n) <= 5 * std::sqrt(var / n)) << p.name;
      EXPECT_TRUE(std::fabs(s2 / n / var - 1) <= 0.15) << p.name << " " << s2 / n / var;
    }
  }
  // same seed: identical; other seed: different
  LlamaModel m2 = LlamaModel::load(kModel), m3 = LlamaModel::load(kModel);
  m2.add_lora(c, 77);
  m3.add_lora(c, 78);
  auto p2 = m2.trainable_params(), p3 = m3.trainable_params();
  EXPECT_EQ(std::memcmp(ps[0].w, p2[0].w, ps[0].numel * 4), 0);
  EXPECT_NE(std::memcmp(ps[0].w, p3[0].w, ps[0].numel * 4), 0);
  // a trainable bf16 tensor has no fp32 master weight: trainable_params names it
  m.set_trainable("model.layers.1.mlp.up_proj.weight");
  try {
    m.trainable_params();
    ADD_FAILURE() << "no error for a trainable bf16 linear";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
  }
  m.set_trainable("model.layers.1.mlp.up_proj.weight", false);
  m.set_trainable("model.norm.weight");  // fp32 norm weights are handed out after the LoRA tensors
  auto pn = m.trainable_params();
  ASSERT_EQ(pn.size(), ps.size() + 1);
  EXPECT_EQ(pn.back().name, "model.norm.weight");
  m.set_trainable("model.norm.weight", false);
  // memory report counts the adapters
  MemoryReport r = m.memory_report();
  EXPECT_EQ(r.lora_params, 2u * (8 * (96 + 96) + 8 * (160 + 96)));
  EXPECT_EQ(r.lora_bytes, 4 * r.lora_params);
  EXPECT_TRUE(r.grad_bytes >= 4 * r.lora_params);
}

// ---- (a) B = 0: exactly the base model ------------------------------------------------------------
static void check_b_zero_is_base(QuantMode q) {
  LoraSetup s;
  ModelOptions o;
  o.quant = q;
  LlamaModel base = LlamaModel::load(kModel, o), lm = LlamaModel::load(kModel, o);
  LoraConfig c;
  c.rank = 8;
  c.dropout = 0.25f;  // eval: no dropout
  lm.add_lora(c, 3);
  const size_t n = (size_t)s.B * s.T * base.config().vocab_size;
  std::vector<float> a(n), b(n);
  base.logits(s.batch(), a.data());
  lm.logits(s.batch(), b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), n * 4), 0) << "LoRA with B = 0 changed the logits";
  // training pass: same loss bitwise, B gets a gradient, A none (du = s·dy·B = 0)
  double l0 = base.forward(s.batch()).loss_sum;
  lm.set_dropout_rng(9, 0);
  double l1 = lm.forward_backward(s.batch()).loss_sum;
  EXPECT_EQ(std::memcmp(&l0, &l1, sizeof(double)), 0);
  double nA = 0, nB = 0;
  for (auto& p : lm.trainable_params())
    for (size_t i = 0; i < p.numel; i++) {
      ASSERT_TRUE(std::isfinite(p.g[i])) << p.name;
      (p.name.find("lora_A") != std::string::npos ? nA : nB) += std::fabs(p.g[i]);
    }
  EXPECT_EQ(nA, 0.0);
  EXPECT_TRUE(nB > 0.0);
}
TEST(Lora, BZeroGivesBaseLogitsBitwise) { check_b_zero_is_base(QuantMode::None); }
// ---- (g) the same on the NF4 base ------------------------------------------------------------------
TEST(Lora, Nf4BaseBZeroGivesNf4LogitsBitwise) { check_b_zero_is_base(QuantMode::NF4); }

// ---- (b) one site: forward vs fp64 reference, backward vs central finite differences ---------------
namespace {
struct SiteCase {
  LinearSite L;
  std::vector<bf16> x, dy;  // [N,in], [N,out]
  std::vector<double> Wd, xd, g;
  int N;
  SiteCase(int N_, int in, int out, int r, float dropout, uint64_t seed) : N(N_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    avector<bf16> w((size_t)out * in);
    for (auto& v : w) v = bf16::from_float(0.2f * nd(rng));
    Wd.resize(w.size());
    for (size_t i = 0; i < w.size(); i++) Wd[i] = w[i].to_float();
    L.name = "model.layers.0.mlp.up_proj.weight";
    L.W = FrozenWeight::from_bf16(std::move(w), out, in);
    L.lora = std::make_unique<LoraAdapter>(r, in, out, 1.75f, dropout);
    LoraAdapter& a = *L.lora;
    for (auto& v : a.A) v = 0.3f * nd(rng);
    for (auto& v : a.B) v = 0.3f * nd(rng);
    a.training = true;
    a.mask_key = lora_mask_key(seed, 3, 1, 0, 5);
    x.resize((size_t)N * in);
    dy.resize((size_t)N * out);
    xd.resize(x.size());
    g.resize(dy.size());
    for (size_t i = 0; i < x.size(); i++) x[i] = bf16::from_float(nd(rng)), xd[i] = x[i].to_float();
    for (size_t i = 0; i < dy.size(); i++) dy[i] = bf16::from_float(nd(rng)), g[i] = dy[i].to_float();
  }
  double loss_ref() {  // L = Σ g ⊙ y_ref
    std::vector<double> y((size_t)N * L.W.out);
    lora_linear_ref(*L.lora, Wd.data(), xd.data(), y.data(), N);
    double s = 0;
    for (size_t i = 0; i < y.size(); i++) s += g[i] * y[i];
    return s;
  }
};
double max_rel(const std::vector<double>& a, const std::vector<double>& b) {  // max|a-b| / max|b|
  double e = 0, m = 0;
  for (size_t i = 0; i < a.size(); i++) e = std::max(e, std::fabs(a[i] - b[i])), m = std::max(m, std::fabs(b[i]));
  return e / m;  // NaN in a makes fabs NaN; std::max(e, NaN) keeps e, so check finiteness too
}
bool all_finite(const float* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!std::isfinite(p[i])) return false;
  return true;
}
}  // namespace

TEST(Lora, SiteForwardAndBackwardVsReferenceAndFiniteDifferences) {
  for (float p : {0.f, 0.3f}) {
    SiteCase c(23, 59, 37, 5, p, 11);
    const int N = c.N, in = 59, out = 37, r = 5;
    LoraAdapter& a = *c.L.lora;
    // forward: fp32 GEMMs of exact bf16 products vs fp64; error ~ K·2^-24 relative: bound 1e-5
    std::vector<float> y((size_t)N * out);
    linear_site_forward(c.L, c.x.data(), y.data(), N);
    std::vector<double> yr(y.size());
    lora_linear_ref(a, c.Wd.data(), c.xd.data(), yr.data(), N);
    std::vector<double> yd(y.begin(), y.end());
    double ef = max_rel(yd, yr);
    EXPECT_TRUE(all_finite(y.data(), y.size()) && ef <= 1e-5) << "p=" << p << " forward " << ef;
    // backward
    std::vector<float> dx((size_t)N * in, 123.f);  // overwritten (beta = 0)
    linear_site_backward(c.L, c.dy.data(), c.x.data(), dx.data(), N, 0.f);
    std::vector<float> dA0 = {a.dA.begin(), a.dA.end()}, dB0 = {a.dB.begin(), a.dB.end()};
    // central differences of the fp64 reference: L is linear in each of A, B, x separately, so
    // the difference quotient is exact up to fp64 roundoff (~1e-16·|L|/h)
    const double h = 1e-3;
    auto fd = [&](auto get, size_t n) {
      std::vector<double> d(n);
      for (size_t i = 0; i < n; i++) {
        auto [set, v0] = get(i);
        set(v0 + h);
        double lp = c.loss_ref();
        set(v0 - h);
        double lm = c.loss_ref();
        set(v0);
        d[i] = (lp - lm) / (2 * h);
      }
      return d;
    };
    // A and B are fp32: perturb them in fp64 via a temporary fp64 copy is not possible through the
    // adapter, so step by h exactly representable offsets in fp32 (h = 2^-10 ≈ 1e-3 below)
    const float hf = 1.0f / 1024;
    auto fdf = [&](auto& w) {
      std::vector<double> d(w.size());
      for (size_t i = 0; i < w.size(); i++) {
        float v0 = w[i];
        w[i] = v0 + hf;
        double lp = c.loss_ref();
        w[i] = v0 - hf;
        double lm = c.loss_ref();
        w[i] = v0;
        // the perturbed fp32 values may be rounded: divide by the actual step
        d[i] = (lp - lm) / ((double)(v0 + hf) - (double)(v0 - hf));
      }
      return d;
    };
    auto dA_fd = fdf(a.A), dB_fd = fdf(a.B);
    auto dx_fd = fd(
        [&](size_t i) {
          return std::pair{[&, i](double v) { c.xd[i] = v; }, c.xd[i]};
        },
        c.xd.size());
    std::vector<double> dAd(dA0.begin(), dA0.end()), dBd(dB0.begin(), dB0.end()), dxd(dx.begin(), dx.end());
    double eA = max_rel(dAd, dA_fd), eB = max_rel(dBd, dB_fd), ex = max_rel(dxd, dx_fd);
    std::printf("[site p=%.1f] forward %.2e  dA %.2e  dB %.2e  dx %.2e (max rel vs FD)\n", p, ef, eA, eB, ex);
    // analytic side: fp32 GEMMs over bf16-exact inputs (K <= 59): ~1e-6; FD side ~1e-12
    EXPECT_TRUE(all_finite(dA0.data(), dA0.size()) && eA <= 1e-5) << eA;
    EXPECT_TRUE(all_finite(dB0.data(), dB0.size()) && eB <= 1e-5) << eB;
    EXPECT_TRUE(all_finite(dx.data(), dx.size()) && ex <= 1e-5) << ex;
    if (p > 0) {  // the mask matters: some dA column entries must differ from the no-dropout value
      size_t zeros = 0;
      for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) zeros += !lora_keep(a.mask_key, (uint64_t)n * in + i, p);
      EXPECT_TRUE(zeros > 0.2 * N * in && zeros < 0.4 * N * in) << zeros;
    }
    // accumulation: a second backward adds the same again (x + x exact)
    linear_site_backward(c.L, c.dy.data(), c.x.data(), dx.data(), N, 0.f);
    size_t bad = 0;
    for (size_t i = 0; i < dA0.size(); i++) bad += !(a.dA[i] == 2 * dA0[i]);
    for (size_t i = 0; i < dB0.size(); i++) bad += !(a.dB[i] == 2 * dB0[i]);
    EXPECT_EQ(bad, 0u);
    (void)r;
  }
}

// A wide site (in = 70001 > 2^20/16): the LoRA path runs in 16-row chunks (N = 37: 3 chunks, the
// last partial); forward and the full backward vs a naive fp64 implementation of the formulas.
TEST(Lora, ChunkedSiteMatchesNaiveBackward) {
  const int N = 37, in = 70001, out = 3, r = 2;
  SiteCase c(N, in, out, r, 0.2f, 5);
  LoraAdapter& a = *c.L.lora;
  const double s = a.scale, inv = 1.0 / (1.0 - 0.2);
  std::vector<float> y((size_t)N * out), dx((size_t)N * in);
  linear_site_forward(c.L, c.x.data(), y.data(), N);
  linear_site_backward(c.L, c.dy.data(), c.x.data(), dx.data(), N, 0.f);
  std::vector<double> yr((size_t)N * out);
  lora_linear_ref(a, c.Wd.data(), c.xd.data(), yr.data(), N);
  // naive backward: u = xm·Aᵀ, du = s·dy·B, dA = duᵀ·xm, dB = s·dyᵀ·u, dx = dy·W + m⊙(du·A)/(1-p)
  std::vector<double> xm(c.xd.size()), u((size_t)N * r, 0), du((size_t)N * r, 0), dA((size_t)r * in, 0),
      dB((size_t)out * r, 0), dxr((size_t)N * in, 0);
  for (size_t e = 0; e < xm.size(); e++) xm[e] = lora_keep(a.mask_key, e, 0.2f) ? c.xd[e] * inv : 0.0;
  for (int n = 0; n < N; n++)
    for (int k = 0; k < r; k++) {
      for (int i = 0; i < in; i++) u[n * r + k] += xm[(size_t)n * in + i] * a.A[(size_t)k * in + i];
      for (int o = 0; o < out; o++) du[n * r + k] += s * c.g[n * out + o] * a.B[o * r + k];
    }
  for (int n = 0; n < N; n++)
    for (int k = 0; k < r; k++) {
      for (int i = 0; i < in; i++) dA[(size_t)k * in + i] += du[n * r + k] * xm[(size_t)n * in + i];
      for (int o = 0; o < out; o++) dB[o * r + k] += s * c.g[n * out + o] * u[n * r + k];
    }
  for (int n = 0; n < N; n++)
    for (int i = 0; i < in; i++) {
      const size_t e = (size_t)n * in + i;
      double v = 0;
      for (int o = 0; o < out; o++) v += c.g[n * out + o] * c.Wd[(size_t)o * in + i];
      double l = 0;
      for (int k = 0; k < r; k++) l += du[n * r + k] * a.A[(size_t)k * in + i];
      dxr[e] = v + (lora_keep(a.mask_key, e, 0.2f) ? l * inv : 0.0);
    }
  auto cmp = [](const float* p, const std::vector<double>& ref) {
    return max_rel(std::vector<double>(p, p + ref.size()), ref);
  };
  double ey = cmp(y.data(), yr), eA = cmp(a.dA.data(), dA), eB = cmp(a.dB.data(), dB), ex = cmp(dx.data(), dxr);
  std::printf("[chunked site] y %.2e dA %.2e dB %.2e dx %.2e\n", ey, eA, eB, ex);
  // K up to 70001 in fp32: error ~√K·2^-24 relative to the largest term; bound 1e-4
  EXPECT_TRUE(all_finite(y.data(), y.size()) && ey <= 1e-4) << ey;
  EXPECT_TRUE(all_finite(a.dA.data(), a.dA.size()) && eA <= 1e-4) << eA;
  EXPECT_TRUE(all_finite(a.dB.data(), a.dB.size()) && eB <= 1e-4) << eB;
  EXPECT_TRUE(all_finite(dx.data(), dx.size()) && ex <= 1e-4) << ex;
}

// ---- (c) whole-model LoRA gradients at step 0 vs PEFT -------------------------------------------
TEST(Lora, Step0GradsMatchPeft) {
  LoraSetup s;
  for (bool rs : {false, true}) {
    LlamaModel m = s.model(rs);
    ForwardStats st = m.forward_backward(s.batch());  // gradient of the mean CE, as loss.backward()
    const std::string v = rs ? "rslora" : "plain";
    double loss_ref = s.fx.floats(v + ".loss")[0];
    double el = std::fabs(st.mean() - loss_ref) / loss_ref;
    RelL2 all, emu;
    double worst = 0;
    std::string worst_name;
    for (auto& p : m.trainable_params()) {
      auto g = s.fx.floats(v + ".grad." + p.name);
      ASSERT_EQ(g.size(), p.numel);
      all.add(p.g, g.data(), p.numel);
      RelL2 one;
      one.add(p.g, g.data(), p.numel);
      if (!(one.value() <= worst)) worst = one.value(), worst_name = p.name;
      if (!rs) {
        auto ge = s.fx.floats("plain.emu.grad." + p.name);
        emu.add(p.g, ge.data(), p.numel);
      }
    }
    std::printf("[%s] loss %.6f vs %.6f (rel %.2e); LoRA grads rel L2 %.3e (worst tensor %.3e %s)%s",
                v.c_str(), st.mean(), loss_ref, el, all.value(), worst, worst_name.c_str(), rs ? "\n" : "");
    if (!rs) std::printf("; vs bf16-emulated torch %.3e\n", emu.value());
    EXPECT_TRUE(el <= 1e-2) << el;
    EXPECT_TRUE(all.value() <= 3e-2) << all.value();
    EXPECT_TRUE(worst <= 6e-2) << worst_name << " " << worst;
    if (!rs) {
      EXPECT_TRUE(emu.value() <= 1e-2) << emu.value();
    }
  }
}

// ---- (d) 3 AdamW steps (clip 1.0, wd 0.01) vs PEFT + torch.optim.AdamW ------------------------------
TEST(Lora, WeightsAfterThreeStepsMatchPeft) {
  LoraSetup s;
  for (bool rs : {false, true}) {
    LlamaModel m = s.model(rs);
    AdamWConfig ac;
    ac.weight_decay = 0.01f;
    AdamW opt(ac);
    auto ps = m.trainable_params();
    const std::string v = rs ? "rslora" : "plain";
    auto loss_ref = s.fx.floats(v + ".loss");
    for (int step = 0; step < 3; step++) {
      zero_grads(ps);
      m.set_dropout_rng(1, step);
      double loss = m.forward_backward(s.batch()).mean();
      double norm = clip_grad_norm(ps, 1.0);
      opt.step(ps, 1e-2f);
      m.sync_lora();
      double el = std::fabs(loss - loss_ref[step]) / loss_ref[step];
      std::printf("[%s] step %d loss %.6f vs %.6f (rel %.2e) grad norm %.4f\n", v.c_str(), step, loss,
                  loss_ref[step], el, norm);
      EXPECT_TRUE(el <= 1e-2) << step << " " << el;
    }
    RelL2 e;
    size_t flipped = 0, total = 0;
    for (auto& p : ps) {
      auto w = s.fx.floats(v + ".final." + p.name);
      auto w0 = s.fx.floats("init." + p.name);
      e.add(p.w, w.data(), p.numel);
      for (size_t i = 0; i < p.numel; i++, total++)  // update direction differs from torch's
        flipped += ((double)p.w[i] - w0[i]) * ((double)w[i] - w0[i]) < 0;
    }
    std::printf("[%s] final LoRA weights rel L2 %.3e; %zu of %zu updates point the other way\n", v.c_str(),
                e.value(), flipped, total);
    // The fixture script runs the same 3 steps with frugal's bf16 rounding emulated in torch: vs
    // fp32 its final weights differ by rel L2 2.84e-2 (plain) / 2.70e-2 (rslora), with 73 / 84
    // updates pointing the other way (gradients within the bf16 error of zero; Adam's first
    // steps follow sign(g)). frugal lands at the same distance. Bounds: 2× those figures.
    EXPECT_TRUE(e.value() <= 6e-2) << e.value();
    EXPECT_TRUE(flipped <= total / 64) << flipped;
  }
}

// ---- (e) k accumulated micro-batches = one batch k× as large ---------------------------------------
TEST(Lora, AccumulatedMicroBatchesEqualOneBatch) {
  LoraSetup s;
  LlamaModel m = s.model(false);
  const int64_t n_all = count_targets(s.targets.data(), s.targets.size());
  const float scale = 1.0f / (float)n_all;
  m.forward_backward(s.batch(), scale);  // B = 2
  auto full = grads_of(m);
  m.zero_grad();
  for (int b = 0; b < 2; b++)  // 2 micro-batches of 1 sequence, the same global scale
    m.forward_backward(Batch{1, s.T, s.ids.data() + b * s.T, nullptr, s.targets.data() + b * s.T}, scale);
  auto acc = grads_of(m);
  RelL2 e;
  for (size_t i = 0; i < full.size(); i++) e.add(acc[i].data(), full[i].data(), full[i].size());
  std::printf("accumulated vs one batch: LoRA grads rel L2 %.3e\n", e.value());
  // Same per-token math; only fp32 summation order (B·T rows split in two) differs: ~1e-7. A
  // bf16 rounding flip of one activation can add ~2^-8 on a few elements: bound 1e-4.
  EXPECT_TRUE(e.value() <= 1e-4) << e.value();
}

// ---- (f) activation checkpointing: bitwise-identical LoRA grads (with dropout) ------------------------
TEST(Lora, CheckpointingIsBitwiseIdentical) {
  LoraSetup s;
  std::vector<std::vector<float>> g[2];
  double loss[2];
  for (int ck = 0; ck < 2; ck++) {
    ModelOptions o;
    o.checkpoint = ck == 1;
    LlamaModel m = LlamaModel::load(kModel, o);
    LoraConfig c = fixture_lora(false);
    c.dropout = 0.1f;
    m.add_lora(c, 5);
    randomize_B(m, 6, 0.05f);
    m.set_dropout_rng(42, 7);
    loss[ck] = m.forward_backward(s.batch()).loss_sum;
    g[ck] = grads_of(m);
  }
  EXPECT_EQ(std::memcmp(&loss[0], &loss[1], sizeof(double)), 0);
  ASSERT_EQ(g[0].size(), g[1].size());
  for (size_t i = 0; i < g[0].size(); i++) {
    double n = 0;
    for (float v : g[0][i]) n += std::fabs(v);
    EXPECT_TRUE(n > 0) << i;  // the comparison means something
    EXPECT_EQ(std::memcmp(g[0][i].data(), g[1][i].data(), g[0][i].size() * 4), 0) << i;
  }
}

// ---- (g') NF4 base + LoRA: the same LoRA grads as a bf16 base holding the dequantized NF4 weights ---
TEST(Lora, Nf4BaseLoraGradsEqualDequantizedBf16Base) {
  LoraSetup s;
  LlamaModel mq = s.model(false, QuantMode::NF4), mb = s.model(false);
  for (size_t l = 0; l < mq.blocks.size(); l++) {  // mb's linears := dequant(mq's NF4 weights)
    LinearSite* q[] = {&mq.blocks[l].q, &mq.blocks[l].k, &mq.blocks[l].v, &mq.blocks[l].o,
                       &mq.blocks[l].gate, &mq.blocks[l].up, &mq.blocks[l].down};
    LinearSite* b[] = {&mb.blocks[l].q, &mb.blocks[l].k, &mb.blocks[l].v, &mb.blocks[l].o,
                       &mb.blocks[l].gate, &mb.blocks[l].up, &mb.blocks[l].down};
    for (int i = 0; i < 7; i++) {
      ASSERT_EQ(q[i]->W.kind, FrozenWeight::Kind::NF4);
      avector<bf16> w((size_t)q[i]->W.out * q[i]->W.in);
      quant::nf4_dequantize_bf16(q[i]->W.q, 0, (int64_t)w.size(), w.data());
      b[i]->W = FrozenWeight::from_bf16(std::move(w), q[i]->W.out, q[i]->W.in);
    }
  }
  double lq = mq.forward_backward(s.batch()).mean(), lb = mb.forward_backward(s.batch()).mean();
  auto gq = grads_of(mq), gb = grads_of(mb);
  // The noise floor of "same math, another fp32 summation order", measured here: the bf16 model
  // again with every GEMM output moved one ulp (kernels/cpu/dnnl_matmul.h). This tiny random
  // model's bf16 activations turn that into ~3e-3 of its LoRA grads, so bitwise-equal kernels are
  // all a fixed 1e-4 could pass (it did where oneDNN ran gemm:jit for both paths; on an AMX CPU
  // the whole-matrix GEMMs go to AMX brgemm and the NF4 tiles do not: 2.3e-3). A fp64 GEMM in
  // place of oneDNN moved the grads 2.6e-3 (avx512) and 3.9e-3 (AMX) from either kernel family.
  mb.zero_grad();
  set_gemm_output_jitter(0x5eed);
  const double lj = mb.forward_backward(s.batch()).mean();
  set_gemm_output_jitter(0);
  auto gj = grads_of(mb);
  RelL2 e, floor;
  for (size_t i = 0; i < gb.size(); i++) {
    ASSERT_TRUE(all_finite(gq[i].data(), gq[i].size()));
    e.add(gq[i].data(), gb[i].data(), gb[i].size());
    floor.add(gj[i].data(), gb[i].data(), gb[i].size());
  }
  std::printf("NF4 base vs bf16 base with the dequantized weights: loss %.7f vs %.7f, LoRA grads rel L2 %.3e "
              "(one-ulp GEMM jitter: loss %.7f, grads %.3e)\n", lq, lb, e.value(), lj, floor.value());
  // The NF4 path runs the same bf16 GEMMs tile by tile: only the fp32 summation order may differ.
  // Bound: 3x the measured floor (two independent orders differ by ~√2 of it; a wrong tile, scale
  // or offset moves the grads by O(1)). The floor itself must be real (> 0).
  EXPECT_TRUE(floor.value() > 0 && std::fabs(lj - lb) > 0);
  EXPECT_TRUE(std::fabs(lq - lb) <= std::max(1e-7 * lb, 3 * std::fabs(lj - lb))) << lq << " " << lb << " " << lj;
  EXPECT_TRUE(e.value() <= 3 * floor.value()) << e.value() << " floor " << floor.value();
}

// ---- (h) dropout stream ----------------------------------------------------------------------------
TEST(Lora, DropoutMasksReproducibleAndRate) {
  // keep rate over 2^20 elements: 1-p within 5σ (σ = √(p(1-p)/n) ≈ 4.5e-4)
  const float p = 0.3f;
  const uint64_t n = 1 << 20;
  const uint64_t k = lora_mask_key(1234, 10, 0, 3, 2);
  uint64_t kept = 0;
  for (uint64_t e = 0; e < n; e++) kept += lora_keep(k, e, p);
  const double rate = (double)kept / n, sigma = std::sqrt(p * (1 - p) / n);
  std::printf("keep rate %.5f (expected %.5f ± %.5f)\n", rate, 1 - p, 5 * sigma);
  EXPECT_TRUE(std::fabs(rate - (1 - p)) <= 5 * sigma) << rate;
  // different step / micro-batch / layer / site / seed: different streams (agreement ≈ p²+(1-p)²)
  for (uint64_t k2 : {lora_mask_key(1234, 11, 0, 3, 2), lora_mask_key(1234, 10, 1, 3, 2),
                      lora_mask_key(1234, 10, 0, 4, 2), lora_mask_key(1234, 10, 0, 3, 3),
                      lora_mask_key(1235, 10, 0, 3, 2)}) {
    ASSERT_NE(k2, k);
    uint64_t agree = 0;
    for (uint64_t e = 0; e < 65536; e++) agree += lora_keep(k, e, p) == lora_keep(k2, e, p);
    const double expect = p * p + (1 - p) * (1 - p);
    EXPECT_TRUE(std::fabs((double)agree / 65536 - expect) <= 0.01) << agree;
  }
  EXPECT_EQ(k, lora_mask_key(1234, 10, 0, 3, 2));

  // through the model: the same (seed, step) reproduces the grads bitwise; another step differs;
  // the second micro-batch of a step uses other masks than the first; eval has no dropout.
  LoraSetup s;
  LlamaModel m = LlamaModel::load(kModel);
  LoraConfig c = fixture_lora(false);
  c.dropout = 0.2f;
  m.add_lora(c, 5);
  randomize_B(m, 6, 0.05f);
  auto run = [&](uint64_t step, int micro) {
    m.zero_grad();
    m.set_dropout_rng(99, step);
    for (int i = 0; i <= micro; i++) {
      if (i == micro) m.zero_grad();
      m.forward_backward(s.batch());
    }
    return grads_of(m);
  };
  auto same = [](const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
    for (size_t i = 0; i < a.size(); i++)
      if (std::memcmp(a[i].data(), b[i].data(), a[i].size() * 4) != 0) return false;
    return true;
  };
  auto g5 = run(5, 0), g5b = run(5, 0), g6 = run(6, 0), g5m1 = run(5, 1);
  EXPECT_TRUE(same(g5, g5b));
  EXPECT_FALSE(same(g5, g6));
  EXPECT_FALSE(same(g5, g5m1));
  // eval: identical to the same adapters without dropout
  LlamaModel m0 = LlamaModel::load(kModel);
  c.dropout = 0.f;
  m0.add_lora(c, 5);
  randomize_B(m0, 6, 0.05f);
  double l_drop = m.forward(s.batch()).loss_sum, l_none = m0.forward(s.batch()).loss_sum;
  EXPECT_EQ(l_drop, l_none);
}
