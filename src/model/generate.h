// generate.h: autoregressive decoding with a KV cache, and token sampling.
//
// Generator runs LlamaModel's own decoder block (src/model/block.h: the same block_forward, so NF4 /
// bf16 weights and LoRA adapters apply alike) on the model's backend, with KvCacheAttention as the
// block's attention strategy: it keeps every layer's post-RoPE keys and values in a cache
// K/V[L]: [max_seq, Hkv, D] fp32, so a new token costs one row through the network instead of the
// whole sequence:
//   prefill(ids): T prompt tokens in one batched forward (attention_forward with S = past + T,
//                 bottom-right causal mask), returns the logits of the last position [V];
//   step(id):     one token at position past, the backend's attention_decode over the cache.
// Only the logits row of the last position is computed ([T,V] never exists).
//
// Sampling: temperature 0 = greedy (argmax, lowest id on ties); otherwise softmax(logits/τ),
// optionally cut to the top_k most likely and to the nucleus (smallest set of most likely tokens
// whose probability reaches top_p), renormalized, drawn with a counter-based uniform
// u = f(seed, draw index) (splitmix64), so a (seed, prompt) pair always gives the same text,
// independent of thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "src/common.h"
#include "src/model/model.h"

namespace frugal {

// The block's attention over a KV cache: forward appends the new rows' k, v (after RoPE) at
// positions past..past+T-1 of layer `layer`'s cache, then attends from the T new queries to all
// past + T keys (bottom-right causal mask; one row: attention_decode). No backward.
struct KvCacheAttention final : AttentionStrategy {
  KvCacheAttention(const LlamaConfig& c, int max_seq);
  int past = 0, T = 0;  // this forward: tokens already cached, new rows
  void forward(Backend& be, int layer, const float* q, const float* k, const float* v, float* att,
               float* lse) override;
  void backward(Backend& be, int layer, float* dq, float* dk, float* dv, const float* datt, const float* q,
                const float* k, const float* v, const float* att, const float* lse) override;

 private:
  int max_seq_, H_, Hkv_, D_;
  std::vector<avector<float>> kc_, vc_;  // per layer [max_seq, Hkv, D]
  avector<float> scores_;                // [H, max_seq] single-token attention scores
};

class Generator {
 public:
  // max_seq: capacity of the cache in tokens (prompt + generated), 1..max_position_embeddings.
  Generator(LlamaModel& m, int max_seq);
  void reset();  // empties the cache (the next prefill starts at position 0)
  int position() const { return pos_; }  // tokens in the cache
  int max_seq() const { return max_seq_; }
  int vocab_size() const { return m_.config().vocab_size; }

  // Appends ids (T >= 1) at positions position()..position()+T-1; returns the logits [V] of the
  // last one (valid until the next call). Overflowing the cache or an id outside [0, V) throws.
  const float* prefill(const std::vector<int32_t>& ids);
  const float* step(int32_t id);

 private:
  LlamaModel& m_;
  Backend& be_;
  int max_seq_, pos_ = 0, cap_T_ = 0;  // cap_T_: rows the buffers hold
  RopeTable rope_;                     // positions 0..max_seq-1
  KvCacheAttention attn_;
  BlockActs acts_;                     // one block's activations for cap_T_ rows (src/model/block.h)
  BlockScratch scratch_;
  avector<float> x_, y_, rstd_, logits_;  // block input / output [T,C], final norm, logits [V]
  avector<bf16> xf_bf_;                // [C] last row, normed, bf16
  std::vector<int32_t> posv_;
  const float* forward(const int32_t* ids, int T);
  void ensure_rows(int T);
};

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy
  float top_p = 1.f;        // (0, 1]; 1 = no nucleus cut
  int top_k = 0;            // 0 = no top-k cut
  uint64_t seed = 0;
  void validate() const;    // throws naming the bad field
};

// Draws one token from logits [V]; `draw` is the index of this draw in the stream of `seed`.
int32_t sample_token(const float* logits, int V, const SamplingParams& p, uint64_t draw);

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // e.g. the tokenizer's EOS, <|eot_id|>, <|im_end|>
};

enum class StopReason { MaxTokens, StopToken };

struct GenerateResult {
  std::vector<int32_t> ids;    // generated tokens, the stop token excluded
  StopReason reason = StopReason::MaxTokens;
  int32_t stop_id = -1;        // the stop token sampled, when reason == StopToken
  int prompt_tokens = 0;
  double prefill_seconds = 0;  // prompt forward (gives the first token's logits)
  int decode_steps = 0;        // single-token forwards
  double decode_seconds = 0;   // their time, sampling included
  double prefill_cpu_seconds = 0, decode_cpu_seconds = 0;  // process CPU time (all threads)
};

// Resets g, prefills the prompt, then samples up to max_new_tokens tokens, stopping early when a
// stop id is drawn (not returned). on_token (nullable) is called with each kept token as it is
// drawn. Throws when prompt + max_new_tokens - 1 exceeds g.max_seq() (the last token is never fed).
GenerateResult generate(Generator& g, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                        const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace frugal
