// model.h: LlamaForCausalLM (SPEC §2) on a Backend (src/model/backend.h; the CPU by default):
// load from an HF model dir, forward, fused lm_head + cross-entropy loss, full backward, optional
// activation checkpointing per block.
//
// Embedding, then per block (src/model/block.h, x: [N, C] fp32, N = B·T tokens):
//   n = rmsnorm(x)·ln1; q,k,v = n·Wq/k/vᵀ; rope(q,k); a = attention(q,k,v) (causal, GQA);
//   h = x + a·Woᵀ; m = rmsnorm(h)·ln2; y = h + (silu(m·Wgᵀ) ⊙ m·Wuᵀ)·Wdᵀ
// then final norm and the lm_head (tied to embed_tokens when tie_word_embeddings).
//
// Losses: the model takes targets ALREADY SHIFTED: targets[b,t] is the token that position t must
// predict (= labels[b,t+1] in HF terms), -100 = ignored; shift_labels() builds them from HF
// labels, next_token_targets() from the input ids. The loss is the mean CE over non-ignored
// targets, computed by lm_head_ce chunk by chunk: [N, V] logits never exist on the loss path.
//
// Activations saved per block for backward (non-checkpointed), Q = H·hd, KV = Hkv·hd, F = ffn:
//   x [N,C] f32 (block input)   rstd1 [N] f32   n1 [N,C] bf16 (normed, shared by q/k/v GEMMs)
//   q [N,Q] f32 (after rope)    k,v [N,KV] f32 (k after rope)   att [N,Q] f32   lse [B,H,T] f32
//   h [N,C] f32 (residual)      rstd2 [N] f32   n2 [N,C] bf16   gate,up [N,F] f32
// i.e. 4·N·(3C + 2Q + 2KV + 2F) + 8N + 4·N·H bytes per block (x counted; Llama-3-8B dims:
// ~205 KB per token per block). The bf16 inputs of o_proj and down_proj
// (att, silu(gate)·up) are re-derived in backward, only when that linear needs its input
// (trainable weight). With checkpointing only x [N,C] f32 is kept per block; backward recomputes
// the block into one scratch set (bitwise identical results: the same ops on the same inputs).
//
// LoRA (add_lora, src/model/lora.h) attaches at the linear call sites: linear_site_forward adds
// s·(dropout(x)·Aᵀ)·Bᵀ and keeps u = dropout(x)·Aᵀ [N,r] fp32 in the adapter (r ≪ C: 7 sites
// cost 4·r·7 bytes per token per block, e.g. 448 B at r = 16); with checkpointing the block's
// recomputed forward rewrites u before its backward. Dropout is on in forward_backward only.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/model/backend.h"
#include "src/model/block.h"
#include "src/model/config.h"
#include "src/model/lora.h"
#include "src/model/params.h"

namespace frugal {

enum class QuantMode { None, NF4 };
QuantMode parse_quant_mode(const std::string& s);  // "none" | "nf4", else throws

struct ModelOptions {
  QuantMode quant = QuantMode::None;  // storage of the frozen decoder linears
  int nf4_blocksize = 64;
  bool nf4_double_quant = true;
  bool checkpoint = false;            // activation checkpointing per block
  std::string backend = "cpu";        // the Backend the model runs its ops on (backend_by_name)
};

// Loss aggregate over one call; add them up across windows / micro-batches.
struct ForwardStats {
  double loss_sum = 0.0;   // sum of per-target CE (nats)
  int64_t n_targets = 0;   // non-ignored targets
  double mean() const { return n_targets ? loss_sum / (double)n_targets : 0.0; }
  ForwardStats& operator+=(const ForwardStats& o) {
    loss_sum += o.loss_sum;
    n_targets += o.n_targets;
    return *this;
  }
};

struct MemoryReport {
  size_t frozen_linear_bytes = 0;  // decoder linears (NF4 or bf16)
  size_t frozen_linear_params = 0;
  size_t embedding_bytes = 0;      // embed_tokens (+ lm_head when untied), bf16
  size_t norm_bytes = 0;           // fp32 norm weights
  size_t lora_bytes = 0;           // LoRA master weights A, B (fp32)
  size_t lora_params = 0;
  size_t grad_bytes = 0;           // gradient buffers of trainable tensors (incl. LoRA dA, dB)
  size_t master_bytes = 0;         // fp32 master weights of trainable bf16 tensors (add_master)
  size_t activation_bytes = 0;     // buffers held for the last forward/backward (incl. LoRA u)
  size_t total() const {
    return frozen_linear_bytes + embedding_bytes + norm_bytes + lora_bytes + grad_bytes + master_bytes + activation_bytes;
  }
  std::string str() const;
};

// One batch: token ids or input embeddings, and (shifted) targets.
struct Batch {
  int B = 1, T = 0;
  const int32_t* ids = nullptr;     // [B,T], or
  const float* embeds = nullptr;    // [B,T,C] fp32 (ids must then be null)
  const int32_t* targets = nullptr; // [B,T] shifted targets, -100 ignored
};

// Called around every use of a unit's weights (FSDP, sharding/fsdp.h: gather before, free
// after). Units: 0 = embedding, 1 + l = block l, L + 1 = head (final norm + lm_head). A pass calls
// begin_pass, then acquire/release in the order of fsdp_schedule, then end_pass.
struct UnitHooks {
  virtual ~UnitHooks() = default;
  virtual void begin_pass(bool backward) = 0;
  virtual void acquire(int unit) = 0;
  virtual void release(int unit) = 0;
  virtual void end_pass() = 0;
};

// Per-layer optimizer updates (galore.per_layer, src/train/galore_per_layer.h): forward_backward
// calls block_grads_done(l) right after block l's backward, when its weight gradients of this
// micro-batch are complete and before block l-1's backward starts.
struct GradHooks {
  virtual ~GradHooks() = default;
  virtual void block_grads_done(int layer) = 0;
};

class LlamaModel {
 public:
  // dir: config.json + model.safetensors (or the sharded index). Missing tensor or wrong shape:
  // frugal::Error naming the tensor and the file/dir.
  static LlamaModel load(const std::string& dir, const ModelOptions& opt = {});
  // An empty model of that config (weights unset); load() fills it.
  // The backend is opt.backend (backend_by_name: an unknown or unbuilt one throws).
  LlamaModel(const LlamaConfig& cfg, const ModelOptions& opt)
      : cfg_(cfg), opt_(opt), be_(&backend_by_name(opt.backend)) {}

  // The model's structure (names, shapes, NF4 metadata) without any weight storage: FSDP binds
  // the tensors to gathered unit buffers just in time (set_unit_hooks).
  static LlamaModel skeleton(const LlamaConfig& cfg, const ModelOptions& opt);
  void set_unit_hooks(UnitHooks* h) { hooks_ = h; }
  UnitHooks* unit_hooks() const { return hooks_; }

  const LlamaConfig& config() const { return cfg_; }
  const ModelOptions& options() const { return opt_; }
  void set_checkpointing(bool on) { opt_.checkpoint = on; }
  Backend& backend() const { return *be_; }

  // Marks an HF tensor as trainable (allocates its gradient). Supported: every decoder linear
  // weight, norm weights, model.embed_tokens.weight, lm_head.weight (untied). Unknown: throws.
  // A trainable NF4 linear keeps its NF4 storage: dW = dyᵀ·x does not need W.
  void set_trainable(const std::string& hf_name, bool on = true);
  // Gradient buffer of a trainable tensor (same shape as the tensor), throws if not trainable.
  const avector<float>& grad(const std::string& hf_name) const;
  avector<float>& grad(const std::string& hf_name) {
    return const_cast<avector<float>&>(static_cast<const LlamaModel&>(*this).grad(hf_name));
  }
  void zero_grad();
  // Per-layer updates: frees the gradient buffer of a trainable decoder linear, so that only the
  // blocks being stepped hold full gradients; the next backward of its block allocates it again,
  // zero-filled. trainable_params() / block_params() hand a freed gradient out as g = nullptr.
  void free_linear_grad(const std::string& hf_name);
  void set_grad_hooks(GradHooks* h) { grad_hooks_ = h; }
  // The trainable params of block l, in trainable_params() order (LoRA A, B; linears; ln1, ln2).
  std::vector<ParamRef> block_params(int layer);
  // Gives a trainable bf16 tensor (model.embed_tokens.weight, lm_head.weight, a decoder linear of
  // a bf16 base) an fp32 master weight, copied from its bf16 values: trainable_params() hands it
  // to the optimizer and sync_trainables() rounds it into the bf16 compute copy after each step.
  // Norms need none (fp32 already). Throws for an NF4 linear (full fine-tuning needs quant none),
  // a tensor that is not trainable, or an unknown name.
  void add_master(const std::string& hf_name);

  // Loss only; no activations are kept (eval). Returns sum and count of the target CEs.
  // losses (nullable): [B,T] per-position CE, 0 where ignored.
  ForwardStats forward(const Batch& b, float* losses = nullptr);
  // Forward, then backward of grad_scale·(sum of target CEs); grad_scale <= 0 means
  // 1/n_targets (the gradient of the mean loss). Weight grads ACCUMULATE into grad();
  // d(loss)/d(input embeddings) is in grad_embeds() [B,T,C] (overwritten each call).
  ForwardStats forward_backward(const Batch& b, float grad_scale = 0.f);
  const avector<float>& grad_embeds() const { return d_x0_; }

  // Materialized logits [B,T,V] fp32 (tests, generation).
  void logits(const Batch& b, float* out);

  MemoryReport memory_report() const;

  // ---- LoRA (src/model/lora.h) ----
  // Attaches an adapter to every targeted linear of every layer, PEFT init (A ~ U(-1/√in, 1/√in),
  // B = 0), deterministic in seed and independent of the thread count. Once per model.
  void add_lora(const LoraConfig& cfg, uint64_t seed);
  // Adapters with shapes, scale and dropout but no storage (FSDP binds A, B, dA, dB).
  void add_lora_skeleton(const LoraConfig& cfg);
  // Every trainable fp32 tensor in FSDP unit order (= the layout's trainable entries, so the
  // single-process and sharded checkpoints list the same names in the same order):
  //   model.embed_tokens.weight (master);
  //   per layer: LoRA A, B of every site (q,k,v,o,gate,up,down; A then B; PEFT names), then the
  //   trainable linears (masters, site order), input_layernorm, post_attention_layernorm;
  //   model.norm.weight, lm_head.weight (master).
  // Dense tensors carry their HF names. A trainable bf16 tensor without add_master has no fp32
  // weight to hand out: throws naming it.
  std::vector<ParamRef> trainable_params();
  void sync_lora();  // refresh compute copies after the optimizer step
  void sync_trainables();  // sync_lora, then bf16 compute copy = round(master) for every master
  // Dropout masks of the following forward_backward calls: micro-batch i (0, 1, ... counted from
  // this call) of optimizer step `step` uses the stream lora_mask_key(seed, step, i, layer, site).
  // row0: global index of this batch's first token row (B·T rows) when a data-parallel rank holds a
  // slice of the micro-batch, so its masks equal the single-process run's (0 otherwise).
  void set_dropout_rng(uint64_t seed, uint64_t step, uint64_t row0 = 0);
  const LoraConfig* lora_config() const { return lora_cfg_ ? &*lora_cfg_ : nullptr; }
  // The adapter of a linear (by HF weight name), null if none.
  LoraAdapter* lora_adapter(const std::string& hf_weight_name);

  // ---- the network's parts (public for tests and the trainer) ----
  Buf<bf16> embed;          // [V,C]
  Buf<bf16> lm_head_w;      // [V,C], empty when tied
  NormParam norm;           // model.norm.weight
  std::vector<LlamaBlock> blocks;
  bool embed_trainable = false, lm_head_trainable = false;
  avector<float> embed_grad, lm_head_grad;  // [V,C] when trainable (tied: lm_head grad goes to embed_grad)
  avector<float> embed_master, lm_head_master;  // [V,C] fp32 masters (add_master), else empty
  const bf16* lm_head_weight() const { return cfg_.tie_word_embeddings ? embed.data() : lm_head_w.data(); }

 private:
  LlamaConfig cfg_;
  ModelOptions opt_;
  Backend* be_;                              // every op runs here (src/model/backend.h)
  std::unique_ptr<LoraConfig> lora_cfg_;     // set by add_lora
  UnitHooks* hooks_ = nullptr;               // FSDP (null: weights are resident)
  GradHooks* grad_hooks_ = nullptr;          // per-layer updates (null: the trainer steps after backward)
  void alloc_block_grads(int layer);         // trainable linears whose gradient was freed: zeros
  void acquire(int u) { if (hooks_) hooks_->acquire(u); }
  void release(int u) { if (hooks_) hooks_->release(u); }
  uint64_t drop_row0_ = 0;
  uint64_t drop_seed_ = 0, drop_step_ = 0, drop_micro_ = 0;  // dropout stream (set_dropout_rng)
  void set_lora_mode(bool training);         // dropout on/off and this pass's mask keys
  // buffers of the current batch shape
  int B_ = 0, T_ = 0;
  RopeTable rope_;
  std::vector<int32_t> pos_;                 // [N] position of each token (t)
  std::vector<avector<float>> xs_;           // L+1 block inputs [N,C]; xs_[L] = final hidden
  std::vector<BlockActs> acts_;              // L (or 1 scratch when checkpointing / eval)
  BlockScratch scratch_;                     // one block pass's scratch (src/model/block.h)
  avector<float> rstdf_;                     // [N] final norm
  avector<bf16> xf_bf_;                      // [N,C] final normed hidden, bf16
  avector<float> tmpC_;                      // [N,C] fp32 scratch
  avector<float> d_x0_;                      // [N,C] grad of the block-0 input (= input embeds)
  avector<float> dres_;                      // [N,C] the residual stream's gradient

  void prepare(int B, int T, bool for_backward);
  void embed_input(const Batch& b, float* x0);
  BlockPass pass(CausalAttention& attn);    // this batch's pass over the blocks
  const float* run_eval(const Batch& b);     // forward without saving; returns the final hidden [N,C]
  ForwardStats head_loss(const Batch& b, const float* xf, float grad_scale, bool with_grad, float* losses);
  LinearSite* find_linear(const std::string& hf_name);
  void add_lora(const LoraConfig& cfg, uint64_t seed, bool allocate);
  NormParam* find_norm(const std::string& hf_name);
};

// HF labels [B,T] -> shifted targets [B,T]: targets[b,t] = labels[b,t+1], targets[b,T-1] = -100.
std::vector<int32_t> shift_labels(const int32_t* labels, int B, int T);
// Next-token targets from the ids themselves (labels = ids).
inline std::vector<int32_t> next_token_targets(const int32_t* ids, int B, int T) { return shift_labels(ids, B, T); }
int64_t count_targets(const int32_t* targets, size_t n);

}  // namespace frugal
