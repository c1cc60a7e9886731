// lora.h: LoRA adapters on the frozen decoder linears (PEFT semantics, SPEC §3).
//   y[N,out] = base(x) + s·(dropout(x)·Aᵀ)·Bᵀ      A: [r, in], B: [out, r], s = alpha/r (rsLoRA: alpha/√r)
// Backward, with u = dropout(x)·Aᵀ [N,r] saved by forward and dy [N,out]:
//   dB[out,r] += s·dyᵀ·u          du[N,r] = s·dy·B
//   dA[r,in]  += duᵀ·dropout(x)   dx[N,in] += mask ⊙ (du·A) / (1-p)
// PEFT init: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0 (the adapter starts as a no-op).
//
// Precision (deliberate): the LoRA GEMMs run in fp32 (the backend's lora_forward/backward; on the
// CPU kernels/cpu/lora.h) straight from the fp32 master weights. One of their dimensions is r ≪ d,
// so they cost ~2r/d of the frozen GEMM of the same site (r=16, d=4096: <1%), and fp32 keeps the
// small LoRA gradients free of bf16 rounding noise (only the site's input x and output gradient dy
// arrive in bf16, as for the base GEMM). sync_compute_copies() is the optimizer-facing contract
// (call it after every update) for a backend that keeps compute copies of A and B.
//
// Dropout masks are a pure function of (seed, step, micro-batch, layer, site, element) through a
// counter-based hash (splitmix64, kernels/shared_math.h: every backend draws the same masks), so runs are reproducible, resumable and independent of the
// thread count; backward regenerates the mask instead of storing it. No dropout outside training.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/model/backend.h"

namespace frugal {

struct LoraConfig {
  int rank = 16;
  float alpha = 32.f;
  float dropout = 0.f;
  bool rslora = false;
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  float scale() const;  // alpha/rank, or alpha/sqrt(rank) with rslora
  // "all-linear" -> the 7 names; unknown module names throw naming them; duplicates removed,
  // result in the canonical order q,k,v,o,gate,up,down.
  static std::vector<std::string> expand_targets(const std::vector<std::string>& names);
  void validate() const;  // rank > 0, alpha finite > 0, 0 <= dropout < 1, targets known
};

// The 7 decoder linears in site order (the `site` index of the dropout stream).
inline const std::vector<std::string>& lora_site_names() {
  static const std::vector<std::string> n = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  return n;
}

// "model.layers.3.self_attn.q_proj.weight", 'A' -> "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
std::string peft_lora_name(const std::string& hf_weight_name, char which);

struct LoraAdapter {  // y += scale · (dropout(x)·Aᵀ)·Bᵀ ; A: [r, in], B: [out, r]
  int r = 0;
  int64_t in = 0, out = 0;
  float scale = 1.f;
  float dropout = 0.f;
  Buf<float> A, B, dA, dB;      // fp32 master weights [r,in], [out,r] and their grads (FSDP: views)
  void sync_compute_copies();

  // ---- set by the model (dropout stream and saved activations) ----
  int layer = 0, site = 0;      // position of this adapter: layer index, site index (q=0 .. down=6)
  bool training = false;        // dropout applies only in training passes
  uint64_t mask_key = 0;        // key of the current pass's masks (lora_mask_key)
  uint64_t mask_row0 = 0;       // global index of input row 0: the mask of element (n, i) is that of
                                // e = (mask_row0 + n)·in + i, so a data-parallel rank holding rows
                                // [row0, ...) of a micro-batch draws the single-process masks
  avector<float> u;             // [N, r] dropout(x)·Aᵀ of the last forward (backward input)
  int64_t saved_rows = 0;       // N of the last forward

  LoraAdapter() = default;
  LoraAdapter(int r, int64_t in, int64_t out, float scale, float dropout);
  bool dropout_active() const { return training && dropout > 0.f; }
  size_t weight_bytes() const { return (A.size() + B.size()) * sizeof(float); }
  LoraDims dims() const;        // shapes, scale and this pass's dropout stream for the backend
  size_t grad_bytes() const { return (dA.size() + dB.size()) * sizeof(float); }
};

// ---- counter-based randomness (kernels/shared_math.h: every backend draws the same masks) ----
using fm::counter_uniform;
using fm::lora_keep;
using fm::lora_mask_key;
using fm::lora_mix64;
// PEFT init of A (U(-1/√in, 1/√in)), deterministic in (seed, layer, site), B = 0.
void lora_init(LoraAdapter& a, uint64_t seed);

// ---- forward / backward (called from linear_site_forward / _backward) ----
// y[N,out] += s·(dropout(x)·Aᵀ)·Bᵀ and saves u = dropout(x)·Aᵀ [N,r].   x: [N,in] bf16
void lora_forward(Backend& be, LoraAdapter& a, const bf16* x, float* y, int N);
// With u from the matching lora_forward: dB += s·dyᵀ·u, dA += duᵀ·dropout(x), dx += dropout'(du·A)
// where du = s·dy·B.   dy: [N,out] bf16, x: [N,in] bf16, dx: [N,in] fp32 (accumulated).
void lora_backward(Backend& be, LoraAdapter& a, const bf16* dy, const bf16* x, float* dx, int N);

// ---- reference (fp64, the truth for tests) ----
// y[N,out] = x·Wᵀ + s·(m⊙x/(1-p))·Aᵀ·Bᵀ with W: [out,in], m = the adapter's current mask
// (all ones when dropout is inactive). Everything in double.
void lora_linear_ref(const LoraAdapter& a, const double* W, const double* x, double* y, int N);

}  // namespace frugal
