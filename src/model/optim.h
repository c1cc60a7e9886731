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
#include <memory>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/model/backend.h"
#include "src/model/params.h"

namespace frugal {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
};

// One per-element state tensor of a parameter (AdamW: "m" and "v"), the param's shape, fp32.
// A checkpoint stores it as /optim/<state>/<param name>. `buf` is EMPTY until the optimizer's
// first step (or a checkpoint load) fills it; an empty buffer means zeros.
struct OptimStateTensor {
  std::string state;       // "m", "v", ...
  avector<float>* buf;     // [numel] or empty
};

// A checkpoint's view of optimizer state: this process's part of one stored state tensor
// /optim/<state>/<tensor> (fp32, `shape`, which need not be the param's: GaLore's moments live in
// the projected shape). The process holds the flat range [begin, end) of it in data (it reads that
// range on load) and writes [write_begin, write_end) ⊂ [begin, end) on save, so that a range held
// by several ranks (a replicated projector, a row split across two shards) is written once.
// A single process holds and writes everything: [0, numel).
struct OptimStatePart {
  std::string state;              // "m", "v", "proj_left", ...
  std::string tensor;             // HF / PEFT name
  std::vector<int64_t> shape;     // the whole stored tensor
  size_t begin = 0, end = 0;
  size_t write_begin = 0, write_end = 0;
  float* data = nullptr;          // [end - begin]
};

// The optimizer seam: the trainer, both checkpoints and the FSDP shards see only this, so a
// second optimizer is one new class (and one name in make_optimizer).
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;
  // t += 1, then updates every param's master weight w from its gradient g (elementwise or not;
  // the FSDP shards are params too: "fsdp/<unit>", this rank's shard).
  virtual void step(const std::vector<ParamRef>& params, float lr) = 0;
  virtual int64_t t() const = 0;           // steps taken (a checkpoint's adam_t)
  virtual void set_t(int64_t t) = 0;
  // The names of the state tensors every param has, in checkpoint order (AdamW: m, v).
  virtual std::vector<std::string> state_names() const = 0;
  // The state tensors of a param by name, in state_names() order; an unknown name creates EMPTY
  // entries (the checkpoint loader resizes and fills them; step() zero-fills them on first use).
  virtual std::vector<OptimStateTensor> state(const std::string& param) = 0;
  // Every state tensor part this process holds for these params, in a fixed order (the same on
  // every rank for the same layout), allocating (zeros) what does not exist yet so that a load can
  // fill it. The checkpoints (single-process and sharded) save and load only through this.
  // Default, for elementwise optimizers: per param, per state_names() entry, one part per piece
  // (or one for the whole param when it has no pieces), the tensor's shape and this rank's range.
  virtual std::vector<OptimStatePart> state_parts(const std::vector<ParamRef>& params);
  // Called by the checkpoints (both savers and both loaders) once they are done with the parts of
  // state_parts: an optimizer whose parts are staging copies (GaLore's 8-bit moments, handed out
  // dequantized) takes back what a load wrote (`loaded`) and frees them.
  virtual void end_state_io(bool loaded) { (void)loaded; }
};

// "adamw" -> AdamW(adamw, be); anything else throws naming the optimizer.
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const AdamWConfig& adamw,
                                          Backend& be = cpu_backend());

class AdamW : public Optimizer {
 public:
  explicit AdamW(const AdamWConfig& c, Backend& be = cpu_backend());
  const char* name() const override { return "adamw"; }
  // t += 1, then updates every param with its gradient. State is keyed by param name and created
  // (zeros) on first use; a param whose size differs from its state throws naming it.
  void step(const std::vector<ParamRef>& params, float lr) override;
  int64_t t() const override { return t_; }
  void set_t(int64_t t) override { t_ = t; }
  std::vector<std::string> state_names() const override { return {"m", "v"}; }
  std::vector<OptimStateTensor> state(const std::string& param) override {
    State& s = state_[param];
    return {{"m", &s.m}, {"v", &s.v}};
  }
  // The moments of a param by name (tests). An unknown name creates an EMPTY entry.
  avector<float>& m(const std::string& name) { return state_[name].m; }
  avector<float>& v(const std::string& name) { return state_[name].v; }
  bool has_state(const std::string& name) const { return state_.count(name) != 0; }
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
