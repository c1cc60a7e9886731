// generate.cpp: KV-cache decoder and sampling (see generate.h). The decoder is LlamaModel's own
// block (src/model/block.h) with KvCacheAttention as its attention, so prefill/step logits match
// LlamaModel::logits() up to fp32 summation order (tests/test_generate.cpp).
#include "src/model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <numeric>

#include "src/model/lora.h"

namespace frugal {

// ---- the KV cache as an attention strategy -----------------------------------------------------

KvCacheAttention::KvCacheAttention(const LlamaConfig& c, int max_seq)
    : max_seq_(max_seq), H_(c.num_attention_heads), Hkv_(c.num_key_value_heads), D_(c.head_dim) {
  const size_t kv = (size_t)max_seq * c.kv_dim();
  kc_.resize(c.num_hidden_layers);
  vc_.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; l++) kc_[l].resize(kv), vc_[l].resize(kv);
  scores_.resize((size_t)H_ * max_seq);
}

void KvCacheAttention::forward(Backend& be, int layer, const float* q, const float* k, const float* v,
                               float* att, float* lse) {
  const size_t KV = (size_t)Hkv_ * D_;
  const int S = past + T;  // keys visible to the last row
  const float scale = 1.0f / std::sqrt((float)D_);
  float* K = kc_[layer].data();  // [max_seq, Hkv, D]
  float* V = vc_[layer].data();
  be.copy(K + (size_t)past * KV, k, (size_t)T * KV * sizeof(float));
  be.copy(V + (size_t)past * KV, v, (size_t)T * KV * sizeof(float));
  if (T == 1) {
    be.attention_decode(att, q, K, V, S, H_, Hkv_, D_, scale, scores_.data(), max_seq_);
  } else {
    // bottom-right aligned causal mask: row t sees keys 0..past+t
    AttnShape s{1, T, S, H_, Hkv_, D_, scale, -1, 0};
    be.attention_forward(att, lse, q, K, V, s);  // att: [T,Q]
  }
}

void KvCacheAttention::backward(Backend&, int, float*, float*, float*, const float*, const float*,
                                const float*, const float*, const float*, const float*) {
  fail("KV-cache attention is for generation only: it has no backward");
}

// ---- Generator ---------------------------------------------------------------------------------

Generator::Generator(LlamaModel& m, int max_seq)
    : m_(m), be_(m.backend()), max_seq_(max_seq), attn_(m.config(), std::max(max_seq, 1)) {
  const LlamaConfig& c = m.config();
  FRUGAL_CHECK(!m.blocks.empty(), "Generator: model has no weights loaded");
  if (max_seq < 1 || max_seq > c.max_position_embeddings)
    fail("generation length ", max_seq, " is outside [1, max_position_embeddings = ",
         c.max_position_embeddings, "]");
  // Positions 0..max_seq-1. seq_len = max_seq: identical tables to the model's for every RoPE
  // type whose frequencies do not depend on the sequence length (all but dynamic NTK).
  rope_ = be_.rope_table(c.rope, max_seq, max_seq);
  logits_.resize(c.vocab_size);
  // No LoRA dropout at inference (a model used for training before may still be in train mode).
  for (auto& blk : m.blocks)
    for (LinearSite* s : blk.sites())
      if (s->lora) s->lora->training = false;
}

void Generator::reset() { pos_ = 0; }

void Generator::ensure_rows(int T) {
  if (T <= cap_T_) return;
  const LlamaConfig& c = m_.config();
  const size_t C = c.hidden_size;
  acts_.resize(c, (size_t)T);
  scratch_.resize(c, (size_t)T, false);
  grow_to(x_, T * C), grow_to(y_, T * C), grow_to(rstd_, 1), grow_to(xf_bf_, C);
  cap_T_ = T;
}

const float* Generator::prefill(const std::vector<int32_t>& ids) {
  FRUGAL_CHECK(!ids.empty(), "prefill: empty prompt");
  return forward(ids.data(), (int)ids.size());
}

const float* Generator::step(int32_t id) { return forward(&id, 1); }

// ids: [T] at positions pos_..pos_+T-1: the embedding, then every block (attention through the
// cache), then the head on the last row.
const float* Generator::forward(const int32_t* ids, int T) {
  const LlamaConfig& c = m_.config();
  if (pos_ + T > max_seq_)
    fail("generation: ", pos_, " cached + ", T, " new tokens exceed the cache of ", max_seq_, " tokens");
  ensure_rows(T);
  const int C = c.hidden_size, V = c.vocab_size;
  posv_.resize(T);
  for (int t = 0; t < T; t++) posv_[t] = pos_ + t;
  attn_.past = pos_;
  attn_.T = T;
  BlockPass p;
  p.B = 1, p.T = T, p.pos = posv_.data(), p.rope = &rope_, p.attention = &attn_;

  be_.embedding_forward(x_.data(), ids, m_.embed.data(), T, C, V);  // x: [T,C]
  for (int l = 0; l < c.num_hidden_layers; l++) {
    block_forward(be_, c, m_.blocks[l], l, p, x_.data(), acts_, scratch_, y_.data());  // y: [T,C]
    std::swap(x_, y_);
  }
  pos_ += T;
  // final norm and lm_head on the last row only: logits[V] = norm(x_last)·lm_headᵀ
  const float* xl = x_.data() + (size_t)(T - 1) * C;
  be_.rmsnorm_forward(y_.data(), rstd_.data(), xl, m_.norm.w.data(), 1, C, c.rms_norm_eps);
  be_.to_bf16(y_.data(), xf_bf_.data(), (size_t)C);
  be_.lm_head_logits(logits_.data(), xf_bf_.data(), m_.lm_head_weight(), 1, C, V);
  return logits_.data();
}

// ---- sampling ------------------------------------------------------------------------------------

void SamplingParams::validate() const {
  if (!(temperature >= 0.f) || !std::isfinite(temperature))
    fail("temperature must be a finite number >= 0 (got ", temperature, ")");
  if (!(top_p > 0.f && top_p <= 1.f)) fail("top_p must be in (0, 1] (got ", top_p, ")");
  if (top_k < 0) fail("top_k must be >= 0 (got ", top_k, ")");
}

int32_t sample_token(const float* logits, int V, const SamplingParams& p, uint64_t draw) {
  FRUGAL_CHECK(V > 0, "sample_token: empty vocabulary");
  p.validate();
  if (p.temperature == 0.f) {  // greedy: first maximum (NaN logits never win)
    int32_t best = 0;
    for (int i = 1; i < V; i++)
      if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
    return best;
  }
  // probabilities of softmax(logits/τ), in double (unnormalized: exp(l/τ - max))
  double mx = -INFINITY;
  for (int i = 0; i < V; i++) mx = std::max(mx, (double)logits[i]);
  FRUGAL_CHECK(std::isfinite(mx), "sample_token: logits are not finite");
  std::vector<double> pr(V);
  double total = 0;
  for (int i = 0; i < V; i++) total += pr[i] = std::exp(((double)logits[i] - mx) / p.temperature);
  // candidates: all ids, or the most likely ones when top-k / top-p cut the tail
  std::vector<int32_t> cand(V);
  std::iota(cand.begin(), cand.end(), 0);
  int n = V;
  if (p.top_k > 0 || p.top_p < 1.f) {
    auto more_likely = [&](int32_t a, int32_t b) { return pr[a] > pr[b] || (pr[a] == pr[b] && a < b); };
    std::sort(cand.begin(), cand.end(), more_likely);
    if (p.top_k > 0) n = std::min(n, p.top_k);
    if (p.top_p < 1.f) {  // smallest prefix whose mass reaches top_p of the (top-k) mass
      double kept_total = 0;
      for (int i = 0; i < n; i++) kept_total += pr[cand[i]];
      double cum = 0;
      int m = 0;
      while (m < n) {
        cum += pr[cand[m++]];
        if (cum >= p.top_p * kept_total) break;
      }
      n = m;
    }
    total = 0;
    for (int i = 0; i < n; i++) total += pr[cand[i]];
  }
  // counter-based uniform in [0,1): 53 bits of splitmix64(seed-keyed stream, draw)
  const uint64_t bits = lora_mix64(lora_mix64(p.seed ^ 0x5AB1E5EEDull) + draw * 0x9E3779B97F4A7C15ull);
  const double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0) * total;
  double cum = 0;
  for (int i = 0; i < n; i++) {
    cum += pr[cand[i]];
    if (u < cum) return cand[i];
  }
  return cand[n - 1];  // u rounded up to the total
}

// ---- the generation loop ---------------------------------------------------------------------------

GenerateResult generate(Generator& g, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                        const std::function<void(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  FRUGAL_CHECK(!prompt.empty(), "generate: empty prompt");
  if (o.max_new_tokens < 0) fail("max_new_tokens must be >= 0 (got ", o.max_new_tokens, ")");
  o.sampling.validate();
  if ((int64_t)prompt.size() + std::max(o.max_new_tokens - 1, 0) > g.max_seq())
    fail("prompt of ", prompt.size(), " tokens + ", o.max_new_tokens,
         " new tokens does not fit in the generation length of ", g.max_seq(), " tokens");
  const int V = g.vocab_size();
  GenerateResult r;
  r.prompt_tokens = (int)prompt.size();
  g.reset();
  if (o.max_new_tokens == 0) return r;
  auto cpu = [] { return (double)std::clock() / CLOCKS_PER_SEC; };
  auto t0 = clock::now();
  double c0 = cpu();
  const float* logits = g.prefill(prompt);
  r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.prefill_cpu_seconds = cpu() - c0;
  t0 = clock::now();
  c0 = cpu();
  for (int i = 0; i < o.max_new_tokens; i++) {
    if (i > 0) {  // feed the previous token
      logits = g.step(r.ids.back());
      r.decode_steps++;
    }
    const int32_t id = sample_token(logits, V, o.sampling, (uint64_t)i);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end()) {
      r.reason = StopReason::StopToken;
      r.stop_id = id;
      break;
    }
    r.ids.push_back(id);
    if (on_token) on_token(id);
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.decode_cpu_seconds = cpu() - c0;
  return r;
}

}  // namespace frugal
