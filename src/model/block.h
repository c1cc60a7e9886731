// block.h: THE Llama decoder block, one forward and one backward, used by training and
// evaluation (LlamaModel, model.cpp), generation (Generator, generate.cpp: the KV cache is an
// AttentionStrategy) and `frugal bench` (src/cli/cmd_bench.cpp: per-op times through an OpTimer).
// Every op goes through the Backend (src/model/backend.h).
//
// Per block (x: [N, C] fp32, N = B·T rows):
//   n1 = bf16(rmsnorm(x)·ln1); q,k,v = n1·Wq/k/vᵀ; rope(q,k); att = attention(q,k,v);
//   h = x + bf16(att)·Woᵀ; n2 = bf16(rmsnorm(h)·ln2); y = h + bf16(silu(n2·Wgᵀ) ⊙ n2·Wuᵀ)·Wdᵀ
// Each linear is a LinearSite: the frozen W (NF4 or bf16), an optional LoRA adapter, an optional
// dense gradient.
#pragma once
#include <array>
#include <memory>
#include <string>

#include "src/common.h"
#include "src/model/backend.h"
#include "src/model/config.h"
#include "src/model/lora.h"

namespace frugal {

// One decoder linear call site: the frozen base weight plus its optional LoRA adapter.
struct LinearSite {
  std::string name;        // HF tensor name, e.g. model.layers.0.self_attn.q_proj.weight
  FrozenWeight W;          // [out, in]
  bool trainable = false;
  avector<float> grad;     // [out, in] fp32, allocated only when trainable
  avector<float> master;   // [out, in] fp32 master weight (full fine-tuning, add_master), else empty
  std::unique_ptr<LoraAdapter> lora;  // y += s·(dropout(x)·Aᵀ)·Bᵀ when set (src/model/lora.h)
  // backward needs the bf16 input of the GEMM (for dW, or for LoRA's dA)
  bool needs_input() const { return trainable || lora != nullptr; }
};

// An RMSNorm weight, fp32 [C], with an fp32 gradient when trainable (a trainable norm is its own
// fp32 master weight).
struct NormParam {
  std::string name;
  Buf<float> w;            // [C]
  bool trainable = false;
  avector<float> grad;     // [C] when trainable
};

struct LlamaBlock {
  NormParam ln1, ln2;      // input_layernorm, post_attention_layernorm
  LinearSite q, k, v, o, gate, up, down;
  // the 7 linears in site order q,k,v,o,gate,up,down (= lora_site_names())
  std::array<LinearSite*, 7> sites() { return {&q, &k, &v, &o, &gate, &up, &down}; }
  std::array<const LinearSite*, 7> sites() const { return {&q, &k, &v, &o, &gate, &up, &down}; }
};

// The per-linear call site (LoRA attaches here): y[N,out] = x[N,in]·Wᵀ (+ beta·y) (+ LoRA).
void linear_site_forward(const LinearSite& L, const bf16* x, float* y, int N, float beta = 0.f,
                         Backend& be = cpu_backend());
// dx[N,in] = dy[N,out]·W + beta·dx (+ LoRA's dx); if trainable, grad += dyᵀ·x (x: the forward's
// bf16 input); LoRA dA, dB +=.
void linear_site_backward(LinearSite& L, const bf16* dy, const bf16* x, float* dx, int N, float beta = 0.f,
                          Backend& be = cpu_backend());

// Activations one block saves for its backward (Q = H·hd, KV = Hkv·hd, F = ffn):
//   rstd1, rstd2 [N]; q [N,Q] (after rope); k, v [N,KV] (k after rope); att [N,Q]; lse [B,H,T];
//   h [N,C] (residual); gate, up [N,F] fp32; n1, n2 [N,C] bf16 (normed GEMM inputs).
struct BlockActs {
  avector<float> rstd1, q, k, v, att, lse, h, rstd2, gate, up;
  avector<bf16> n1, n2;
  void resize(const LlamaConfig& c, size_t N);  // exact sizes for N rows (reallocates on change)
  size_t bytes() const;
};

// Scratch of one block pass, shared by all blocks (nothing here outlives a block):
//   act [N,F] silu(gate)·up; x_bf [N,max(Q,F)] bf16 input of o_proj / down_proj;
//   backward: dtmp, dn [N,C]; dact, dgate, dup [N,F]; dq, datt [N,Q]; dk, dv [N,KV];
//   dy_bf [N,max(C,Q,F)] bf16 output gradients for the GEMMs.
struct BlockScratch {
  avector<float> act;
  avector<bf16> x_bf;
  avector<float> dtmp, dact, dgate, dup, dq, dk, dv, datt, dn;
  avector<bf16> dy_bf;
  void resize(const LlamaConfig& c, size_t N, bool backward);
  size_t bytes() const;
};

// How a block's attention sees its keys. q: [N,Q] after rope, k, v: [N,KV] (k after rope) of the
// block's N = B·T new rows; att: [N,Q] out; lse: [B,H,T] out (for backward).
struct AttentionStrategy {
  virtual ~AttentionStrategy() = default;
  virtual void forward(Backend& be, int layer, const float* q, const float* k, const float* v, float* att,
                       float* lse) = 0;
  // dq [N,Q], dk, dv [N,KV] overwritten from datt [N,Q] and the forward's tensors.
  virtual void backward(Backend& be, int layer, float* dq, float* dk, float* dv, const float* datt,
                        const float* q, const float* k, const float* v, const float* att, const float* lse) = 0;
};

// Training / evaluation: causal self-attention within each of the B rows of T tokens.
struct CausalAttention final : AttentionStrategy {
  AttnShape shape;  // {B, T, T, H, Hkv, D, 1/√D, -1, 0}
  CausalAttention(const LlamaConfig& c, int B, int T);
  void forward(Backend& be, int layer, const float* q, const float* k, const float* v, float* att,
               float* lse) override;
  void backward(Backend& be, int layer, float* dq, float* dk, float* dv, const float* datt, const float* q,
                const float* k, const float* v, const float* att, const float* lse) override;
};

// Per-op timing hook (frugal bench): begin(op) before and end() after each op of the block.
struct OpTimer {
  virtual ~OpTimer() = default;
  virtual void begin(const char* op) = 0;
  virtual void end() = 0;
};

// What every block of one pass shares.
struct BlockPass {
  int B = 1, T = 0;                      // N = B·T rows
  const int32_t* pos = nullptr;          // [N] position of each row (for RoPE)
  const RopeTable* rope = nullptr;       // covers every position in pos
  AttentionStrategy* attention = nullptr;
  OpTimer* timer = nullptr;              // null: no timing
};

// x: [N,C] block input; y: [N,C] block output (also fp32 scratch before the end). a: the saved
// activations of this block (rewritten); s: scratch sized for N rows.
void block_forward(Backend& be, const LlamaConfig& c, LlamaBlock& blk, int layer, const BlockPass& p,
                   const float* x, BlockActs& a, BlockScratch& s, float* y);
// dres: [N,C] d(loss)/d(block output) in, d(loss)/d(block input) out. x: the block input, a: the
// activations of its forward. Weight gradients (trainable norms and linears, LoRA) accumulate.
void block_backward(Backend& be, const LlamaConfig& c, LlamaBlock& blk, int layer, const BlockPass& p,
                    const float* x, BlockActs& a, BlockScratch& s, float* dres);

}  // namespace frugal
