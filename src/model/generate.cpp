// generate.cpp: KV-cache decoder and sampling (see generate.h). The per-block math mirrors
// LlamaModel::block_forward (model.cpp) op for op, so prefill/step logits match
// LlamaModel::logits() up to fp32 summation order (tests/test_generate.cpp).
#include "src/model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <numeric>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/swiglu.h"
#include "src/model/lora.h"

namespace frugal {

namespace {
template <class T>
void ensure(avector<T>& v, size_t n) {
  if (v.size() < n) {
    avector<T>().swap(v);
    v.resize(n);
  }
}

// Single query row against the cache: out[H,D] = softmax(scale·q·Kᵀ) V over keys 0..S-1 (all
// visible: the new token is the last one). q: [H,D]; K, V: [S,Hkv,D]; scores: [H, >=S] scratch.
// Plain two-pass softmax in fp32; the result equals attention_forward's online softmax up to
// summation order.
void attention_decode(float* out, const float* q, const float* K, const float* V, int S, int H,
                      int Hkv, int D, float scale, float* scores, int ld_scores) {
  const int group = H / Hkv;
  // Threads only when there is real work: a parallel region costs a barrier, which on a busy
  // (oversubscribed) machine can cost more than a short cache scan.
  const bool par = (int64_t)S * H * D >= (1 << 18);
#pragma omp parallel for schedule(static) if (par)
  for (int h = 0; h < H; h++) {
    const float* qh = q + (size_t)h * D;
    const int kh = h / group;
    float* sc = scores + (size_t)h * ld_scores;
    float mx = -INFINITY;
    for (int j = 0; j < S; j++) {
      const float* kj = K + ((size_t)j * Hkv + kh) * D;
      float d = 0.f;
      for (int i = 0; i < D; i++) d += qh[i] * kj[i];
      sc[j] = d * scale;
      mx = std::max(mx, sc[j]);
    }
    float sum = 0.f;
    for (int j = 0; j < S; j++) {
      sc[j] = std::exp(sc[j] - mx);
      sum += sc[j];
    }
    float* oh = out + (size_t)h * D;
    std::fill(oh, oh + D, 0.f);
    for (int j = 0; j < S; j++) {
      const float* vj = V + ((size_t)j * Hkv + kh) * D;
      const float p = sc[j] / sum;
      for (int i = 0; i < D; i++) oh[i] += p * vj[i];
    }
  }
}
}  // namespace

// ---- Generator ---------------------------------------------------------------------------------

Generator::Generator(LlamaModel& m, int max_seq) : m_(m), max_seq_(max_seq) {
  const LlamaConfig& c = m.config();
  FRUGAL_CHECK(!m.blocks.empty(), "Generator: model has no weights loaded");
  if (max_seq < 1 || max_seq > c.max_position_embeddings)
    fail("generation length ", max_seq, " is outside [1, max_position_embeddings = ",
         c.max_position_embeddings, "]");
  // Positions 0..max_seq-1. seq_len = max_seq: identical tables to the model's for every RoPE
  // type whose frequencies do not depend on the sequence length (all but dynamic NTK).
  rope_ = rope_table(c.rope, max_seq, max_seq);
  const size_t kv = (size_t)max_seq * c.kv_dim();
  kc_.resize(c.num_hidden_layers);
  vc_.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; l++) kc_[l].resize(kv), vc_[l].resize(kv);
  scores_.resize((size_t)c.num_attention_heads * max_seq);
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
  const size_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  ensure(x_, T * C), ensure(y_, T * C), ensure(h_, T * C), ensure(q_, T * Q);
  ensure(k_, T * KV), ensure(v_, T * KV), ensure(att_, T * Q);
  ensure(lse_, (size_t)T * c.num_attention_heads), ensure(gate_, T * F), ensure(up_, T * F);
  ensure(act_, T * F), ensure(rstd_, T), ensure(n_bf_, T * C), ensure(x_bf_, T * std::max(Q, F));
  cap_T_ = T;
}

const float* Generator::prefill(const std::vector<int32_t>& ids) {
  FRUGAL_CHECK(!ids.empty(), "prefill: empty prompt");
  return forward(ids.data(), (int)ids.size());
}

const float* Generator::step(int32_t id) { return forward(&id, 1); }

// ids: [T] at positions pos_..pos_+T-1. Each block as LlamaModel::block_forward, with the keys
// and values of the new rows appended to the cache and attention reading the whole cache.
const float* Generator::forward(const int32_t* ids, int T) {
  const LlamaConfig& c = m_.config();
  if (pos_ + T > max_seq_)
    fail("generation: ", pos_, " cached + ", T, " new tokens exceed the cache of ", max_seq_, " tokens");
  ensure_rows(T);
  const int C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  const int H = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim, V = c.vocab_size;
  const float eps = c.rms_norm_eps, scale = 1.0f / std::sqrt((float)D);
  posv_.resize(T);
  for (int t = 0; t < T; t++) posv_[t] = pos_ + t;
  const int S = pos_ + T;  // keys visible to the last row

  embedding_forward(x_.data(), ids, m_.embed.data(), T, C, V);  // x: [T,C]
  for (int l = 0; l < c.num_hidden_layers; l++) {
    LlamaBlock& blk = m_.blocks[l];
    // attention half
    rmsnorm_forward(y_.data(), rstd_.data(), x_.data(), blk.ln1.w.data(), T, C, eps);
    float_to_bf16(y_.data(), n_bf_.data(), (size_t)T * C);
    linear_site_forward(blk.q, n_bf_.data(), q_.data(), T);  // q: [T,Q]
    linear_site_forward(blk.k, n_bf_.data(), k_.data(), T);  // k: [T,KV]
    linear_site_forward(blk.v, n_bf_.data(), v_.data(), T);  // v: [T,KV]
    rope_forward(q_.data(), posv_.data(), rope_, T, H, D);
    rope_forward(k_.data(), posv_.data(), rope_, T, Hkv, D);
    float* K = kc_[l].data();  // [max_seq, Hkv, D]
    float* Vc = vc_[l].data();
    std::memcpy(K + (size_t)pos_ * KV, k_.data(), (size_t)T * KV * sizeof(float));
    std::memcpy(Vc + (size_t)pos_ * KV, v_.data(), (size_t)T * KV * sizeof(float));
    if (T == 1) {
      attention_decode(att_.data(), q_.data(), K, Vc, S, H, Hkv, D, scale, scores_.data(), max_seq_);
    } else {
      // bottom-right aligned causal mask: row t sees keys 0..pos_+t
      AttnShape s{1, T, S, H, Hkv, D, scale, -1, 0};
      attention_forward(att_.data(), lse_.data(), q_.data(), K, Vc, s);  // att: [T,Q]
    }
    float_to_bf16(att_.data(), x_bf_.data(), (size_t)T * Q);
    std::memcpy(h_.data(), x_.data(), (size_t)T * C * sizeof(float));
    linear_site_forward(blk.o, x_bf_.data(), h_.data(), T, 1.f);  // h = x + att·Woᵀ
    // MLP half
    rmsnorm_forward(y_.data(), rstd_.data(), h_.data(), blk.ln2.w.data(), T, C, eps);
    float_to_bf16(y_.data(), n_bf_.data(), (size_t)T * C);
    linear_site_forward(blk.gate, n_bf_.data(), gate_.data(), T);  // gate: [T,F]
    linear_site_forward(blk.up, n_bf_.data(), up_.data(), T);      // up: [T,F]
    swiglu_forward(act_.data(), gate_.data(), up_.data(), (size_t)T * F);
    float_to_bf16(act_.data(), x_bf_.data(), (size_t)T * F);
    std::memcpy(x_.data(), h_.data(), (size_t)T * C * sizeof(float));
    linear_site_forward(blk.down, x_bf_.data(), x_.data(), T, 1.f);  // x = h + act·Wdᵀ
  }
  pos_ += T;
  // final norm and lm_head on the last row only: logits[V] = norm(x_last)·lm_headᵀ
  const float* xl = x_.data() + (size_t)(T - 1) * C;
  rmsnorm_forward(y_.data(), rstd_.data(), xl, m_.norm.w.data(), 1, C, eps);
  float_to_bf16(y_.data(), n_bf_.data(), (size_t)C);
  gemm_bf16(false, true, 1, V, C, 1.f, n_bf_.data(), C, m_.lm_head_weight(), C, 0.f, logits_.data(), V);
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
