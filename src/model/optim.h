// optim.h: AdamW (torch.optim.AdamW semantics, fp32 moments), global-norm gradient clipping
// (torch.nn.utils.clip_grad_norm_) and learning-rate schedules (transformers'
// get_{constant,linear,cosine}_schedule_with_warmup).
//
// AdamW, per element, in this order (torch _single_tensor_adam, decoupled_weight_decay=True):
//   t += 1
//   w *= 1 - lr·wd                                   (decoupled weight decay, before the update)
//   m  = lerp(m, g, 1-β1)                            (m + (1-β1)·(g-m))
//   v  = v·β2 + (1-β2)·g·g
//   w += -(lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)
// Scalars (1-β^t, lr/bc1, sqrt(bc2)) are computed in fp64 and rounded to fp32 once, as torch does
// with Python floats; the element math is fp32 (the backend's adamw_update; on the CPU
// kernels/cpu/adamw.h). The update is elementwise, so results do not depend on the thread count.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/model/backend.h"
#include "src/model/params.h"

namespace frugal {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
};

class AdamW {
 public:
  explicit AdamW(const AdamWConfig& c, Backend& be = cpu_backend());
  // t += 1, then updates every param with its gradient. State is keyed by param name and created
  // (zeros) on first use; a param whose size differs from its state throws naming it.
  void step(const std::vector<ParamRef>& params, float lr);
  int64_t t() const { return t_; }
  // Checkpoint access: the moments of a param by name. An unknown name creates an EMPTY entry
  // (the checkpoint loader resizes and fills it; step() zero-fills an empty entry on first use).
  avector<float>& m(const std::string& name) { return state_[name].m; }
  avector<float>& v(const std::string& name) { return state_[name].v; }
  bool has_state(const std::string& name) const { return state_.count(name) != 0; }
  void set_t(int64_t t) { t_ = t; }
  const AdamWConfig& config() const { return cfg_; }

 private:
  struct State {
    avector<float> m, v;  // [numel] fp32 first and second moments
  };
  AdamWConfig cfg_;
  Backend* be_;
  int64_t t_ = 0;
  std::map<std::string, State> state_;
};

// Global L2 norm of all gradients, accumulated in fp64 over fixed chunks summed in a fixed order
// (bitwise independent of the thread count).
double grad_norm(const std::vector<ParamRef>& params, Backend& be = cpu_backend());
double grad_sq_sum(const std::vector<ParamRef>& params, Backend& be = cpu_backend());  // grad_norm squared
// torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), grads *= coef when coef < 1.
// Returns the pre-clip norm. max_norm <= 0: no clipping (the norm is still computed).
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm, Backend& be = cpu_backend());
// Its second half: scales the grads for a given norm (a sharded run's global, all-reduced norm).
void clip_grads(const std::vector<ParamRef>& params, double max_norm, double norm, Backend& be = cpu_backend());
void zero_grads(const std::vector<ParamRef>& params, Backend& be = cpu_backend());

// lr(step) = lr · λ(step) for optimizer step `step` (0-based), transformers' LambdaLR semantics:
//   warmup (step < W):  λ = step / max(1, W)
//   constant:           λ = 1
//   linear:             λ = max(0, (S - step) / max(1, S - W))
//   cosine:             λ = max(0, 0.5·(1 + cos(π · p))),  p = (step - W) / max(1, S - W)
// with W = warmup_steps, S = total_steps. Extension: min_lr_ratio r (0 = HF exactly) floors the
// decay as λ' = λ·(1 - r) + r after warmup (for cosine this is transformers'
// get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate = r); linear uses the same blend;
// constant ignores it).
struct LRSchedule {
  std::string type = "cosine";  // constant | linear | cosine
  float lr = 2e-4f;
  int warmup_steps = 0;
  int total_steps = 1;
  float min_lr_ratio = 0.f;
  float at(int64_t step) const;
  void validate() const;  // unknown type, lr <= 0, warmup < 0, total < 1, ratio outside [0,1]: throws
};

}  // namespace frugal
