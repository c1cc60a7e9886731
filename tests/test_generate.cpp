// test_generate.cpp: the KV-cache Generator against LlamaModel::logits() (the full-sequence
// forward, itself checked against transformers in test_model.cpp), on the tiny random GQA model
// of tests/fixtures/model/gqa (2 layers, H=6, Hkv=2, D=16, V=131), bf16 and NF4 base, with and
// without LoRA; and sampling (greedy, seeded draws, top-k / top-p) against known distributions.
//
// Tolerance of the logits comparisons: both paths feed the SAME bf16 operands to the same
// bf16·bf16→fp32 GEMMs and the same fp32 norms / RoPE; they differ only in fp32 summation order
// (oneDNN blocks differently for M = 1 and M = T; the decode attention is a two-pass softmax, the
// prefill one FlashAttention's online softmax). Those are ~1e-6 relative, but any of them may
// flip the bf16 rounding of an activation element before the next GEMM (up to 2^-8 relative on
// that element), and a few such flips over 2 layers move a logit by ~1e-3 of the logit scale
// (measured worst: bf16 base 0 — oneDNN happens to sum identically —, NF4 base 2.3e-3 from the
// per-tile GEMMs with M = 1 vs M = T). We allow 5e-3 · max|logit| and check that this is far
// (>= 50x) below the difference between neighbouring positions' logits, so a cache or position
// bug cannot hide inside the tolerance.
//
// Regression (Generate.Bf16ThenNF4InOneProcess): oneDNN's own global primitive cache used to return,
// for a nested NF4 tile GEMM at M = 1, the primitive of an identical descriptor created at top
// level (bf16 k_proj), planned for the whole thread team; run on one thread it returned wrong
// values (errors ~4 in the NF4 logits). kernels/cpu/gemm.cpp now switches that cache off.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/model/generate.h"
#include "src/model/model.h"

using namespace frugal;

namespace {

const std::string kGqa = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/model/gqa";

std::vector<int32_t> test_ids(int T, int V, uint64_t seed) {  // deterministic ids in [0, V)
  std::vector<int32_t> ids(T);
  for (int t = 0; t < T; t++) ids[t] = (int32_t)(lora_mix64(seed * 1000 + t) % (uint64_t)V);
  return ids;
}

// Full-sequence logits [T,V] from the model's own forward.
std::vector<float> full_logits(LlamaModel& m, const std::vector<int32_t>& ids) {
  Batch b;
  b.B = 1;
  b.T = (int)ids.size();
  b.ids = ids.data();
  std::vector<float> out((size_t)b.T * m.config().vocab_size);
  m.logits(b, out.data());
  return out;
}

float max_abs(const float* a, int n) {
  float m = 0;
  for (int i = 0; i < n; i++) m = std::max(m, std::fabs(a[i]));
  return m;
}
float max_diff(const float* a, const float* b, int n) {
  float m = 0;
  for (int i = 0; i < n; i++) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = d;  // NaN-safe: a NaN difference becomes the maximum
  }
  return m;
}

// Prefill of `split` tokens, a second prefill chunk, then one step per remaining token: each
// returned logits row must equal the full forward's row at that position.
void check_cache_matches_full(LlamaModel& m, const char* what) {
  const int V = m.config().vocab_size, T = 37, P1 = 13, P2 = 7;
  const auto ids = test_ids(T, V, 7);
  const auto ref = full_logits(m, ids);
  const float tol = 5e-3f * max_abs(ref.data(), T * V);
  float worst = 0, min_neighbour = INFINITY;
  for (int t = 1; t < T; t++)
    min_neighbour = std::min(min_neighbour, max_diff(&ref[(size_t)t * V], &ref[(size_t)(t - 1) * V], V));
  ASSERT_GE(min_neighbour, 50 * tol) << what << ": positions too similar for the test to discriminate";

  Generator g(m, 64);
  auto check = [&](const float* got, int t) {
    float d = max_diff(got, &ref[(size_t)t * V], V);
    worst = std::max(worst, d);
    EXPECT_TRUE(d <= tol) << what << ": position " << t << " max |diff| " << d << " > " << tol;
  };
  check(g.prefill(std::vector<int32_t>(ids.begin(), ids.begin() + P1)), P1 - 1);
  check(g.prefill(std::vector<int32_t>(ids.begin() + P1, ids.begin() + P1 + P2)), P1 + P2 - 1);
  for (int t = P1 + P2; t < T; t++) check(g.step(ids[t]), t);
  EXPECT_EQ(g.position(), T);
  // one-shot prefill of the whole sequence after reset
  g.reset();
  check(g.prefill(ids), T - 1);
  std::printf("[%s] worst |diff| %.3g (tol %.3g, max|logit| %.3g, neighbour diff >= %.3g)\n", what,
              worst, tol, max_abs(ref.data(), T * V), min_neighbour);
}

LlamaModel load_gqa(QuantMode q) {
  ModelOptions o;
  o.quant = q;
  return LlamaModel::load(kGqa, o);
}

}  // namespace

TEST(Generate, CacheMatchesFullForwardNF4) {
  LlamaModel m = load_gqa(QuantMode::NF4);
  check_cache_matches_full(m, "nf4");
}

TEST(Generate, CacheMatchesFullForwardWithLora) {
  LlamaModel m = load_gqa(QuantMode::NF4);
  LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8;
  m.add_lora(lc, 3);
  // PEFT init leaves B = 0 (a no-op); give B values so the adapters change the logits.
  int k = 0;
  for (auto& blk : m.blocks)
    for (LinearSite* s : {&blk.q, &blk.k, &blk.v, &blk.o, &blk.gate, &blk.up, &blk.down})
      for (float& b : s->lora->B) b = 0.05f * (float)((int)(lora_mix64(k++) % 201) - 100) / 100.f;
  check_cache_matches_full(m, "nf4+lora");
}

TEST(Generate, CacheMatchesFullForwardBf16) {
  LlamaModel m = load_gqa(QuantMode::None);
  check_cache_matches_full(m, "bf16");
}


namespace {
void check_greedy_is_argmax(LlamaModel& m) {
  const int V = m.config().vocab_size;
  const auto prompt = test_ids(11, V, 3);
  Generator g(m, 40);
  GenerateOptions o;
  o.max_new_tokens = 17;
  GenerateResult a = generate(g, prompt, o);
  GenerateResult b = generate(g, prompt, o);
  ASSERT_EQ((int)a.ids.size(), 17);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.reason, StopReason::MaxTokens);
  EXPECT_EQ(a.decode_steps, 16);
  // each greedy token is the argmax of the full forward over prompt + tokens so far, unless the
  // top two logits are within the tolerance (then either is a correct answer)
  std::vector<int32_t> seq = prompt;
  for (int i = 0; i < 17; i++) {
    const auto ref = full_logits(m, seq);
    const float* row = &ref[(seq.size() - 1) * V];
    const int32_t best = (int32_t)(std::max_element(row, row + V) - row);
    const float tol = 5e-3f * max_abs(row, V);
    EXPECT_TRUE(a.ids[i] == best || row[best] - row[a.ids[i]] <= tol) << "token " << i;
    seq.push_back(a.ids[i]);
  }
}
}  // namespace

TEST(Generate, GreedyIsArgmaxOfFullForwardAndDeterministic) {
  LlamaModel m = load_gqa(QuantMode::None);
  check_greedy_is_argmax(m);
}

TEST(Generate, Bf16ThenNF4InOneProcess) {  // the order that exposed the oneDNN cache mix-up
  LlamaModel b = load_gqa(QuantMode::None);
  check_greedy_is_argmax(b);
  LlamaModel q = load_gqa(QuantMode::NF4);
  check_cache_matches_full(q, "nf4 after bf16");
}

TEST(Generate, StopsAtStopTokenAndMaxNewTokens) {
  LlamaModel m = load_gqa(QuantMode::None);
  const auto prompt = test_ids(9, m.config().vocab_size, 5);
  Generator g(m, 40);
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampling.temperature = 1.f;
  o.sampling.seed = 11;
  GenerateResult full = generate(g, prompt, o);
  ASSERT_EQ((int)full.ids.size(), 20);
  // the first token that does not occur earlier, from position 3 on, becomes the stop token
  int k = 3;
  while (k < 20 && std::find(full.ids.begin(), full.ids.begin() + k, full.ids[k]) != full.ids.begin() + k) k++;
  ASSERT_LT(k, 20);
  o.stop_ids = {full.ids[k]};
  std::vector<int32_t> streamed;
  GenerateResult r = generate(g, prompt, o, [&](int32_t id) { streamed.push_back(id); });
  EXPECT_EQ(r.reason, StopReason::StopToken);
  EXPECT_EQ(r.stop_id, full.ids[k]);
  EXPECT_EQ(r.ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + k));
  EXPECT_EQ(streamed, r.ids);
  // fewer tokens requested: a prefix of the same stream
  o.stop_ids.clear();
  o.max_new_tokens = 6;
  r = generate(g, prompt, o);
  EXPECT_EQ(r.ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + 6));
  // the cache is too small for 9 + 40 - 1 tokens
  o.max_new_tokens = 40;
  EXPECT_THROW(generate(g, prompt, o), Error);
}

TEST(Generate, SeededSamplingIsReproducible) {
  LlamaModel m = load_gqa(QuantMode::None);
  const auto prompt = test_ids(9, m.config().vocab_size, 9);
  Generator g(m, 40);
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.sampling.temperature = 1.5f;
  o.sampling.seed = 42;
  auto a = generate(g, prompt, o).ids;
  auto b = generate(g, prompt, o).ids;
  EXPECT_EQ(a, b);
  o.sampling.seed = 43;
  auto c = generate(g, prompt, o).ids;
  EXPECT_NE(a, c);  // 24 draws at τ = 1.5 over 131 tokens: equal by chance is negligible
}

// Crafted distribution p = (0.5, 0.3, 0.1, 0.05, 0.03, 0.02) (logits = log p).
TEST(Generate, SamplingRespectsTopPTopKAndProbabilities) {
  const std::vector<double> p = {0.5, 0.3, 0.1, 0.05, 0.03, 0.02};
  const int V = (int)p.size(), N = 20000;
  std::vector<float> logits(V);
  for (int i = 0; i < V; i++) logits[i] = (float)std::log(p[i]);
  auto counts = [&](SamplingParams sp) {
    std::vector<int> c(V, 0);
    for (int d = 0; d < N; d++) c[sample_token(logits.data(), V, sp, d)]++;
    return c;
  };
  // binomial frequency within 5 standard deviations of the expected probability
  auto expect_freq = [&](int count, double q, const char* what) {
    const double f = (double)count / N, sd = std::sqrt(q * (1 - q) / N);
    EXPECT_TRUE(std::fabs(f - q) <= 5 * sd + 1e-12) << what << ": frequency " << f << " expected " << q;
  };
  SamplingParams sp;
  sp.temperature = 1.f;
  sp.seed = 1;
  auto all = counts(sp);  // no cut: every token appears, at its probability
  for (int i = 0; i < V; i++) expect_freq(all[i], p[i], "full distribution");

  sp.top_p = 0.75f;  // nucleus {0, 1} (0.5 < 0.75 <= 0.8), renormalized to 0.625 / 0.375
  auto nuc = counts(sp);
  for (int i = 2; i < V; i++) EXPECT_EQ(nuc[i], 0) << "token " << i << " is outside the top-p nucleus";
  expect_freq(nuc[0], 0.5 / 0.8, "top-p token 0");

  sp.top_p = 1.f;
  sp.top_k = 3;  // {0,1,2} renormalized by 0.9
  auto tk = counts(sp);
  for (int i = 3; i < V; i++) EXPECT_EQ(tk[i], 0) << "token " << i << " is outside the top-k";
  expect_freq(tk[2], 0.1 / 0.9, "top-k token 2");

  sp.top_k = 0;
  sp.temperature = 0.5f;  // p^(1/τ) = p² renormalized
  double z = 0;
  for (double q : p) z += q * q;
  auto cold = counts(sp);
  expect_freq(cold[1], 0.09 / z, "temperature 0.5 token 1");

  sp.temperature = 0.f;  // greedy
  EXPECT_EQ(sample_token(logits.data(), V, sp, 0), 0);
  sp.temperature = 1.f;
  sp.top_p = 0.f;
  EXPECT_THROW(sample_token(logits.data(), V, sp, 0), Error);
}
