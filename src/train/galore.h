// galore.h: GaLore-AdamW (optim.name = "galore_adamw"), galore_torch's GaLoreAdamW step exactly
// (SPEC.md §5), on whole tensors (one process) and on FSDP's flat shards (ParamRef::pieces).
//
// Per target tensor W [m, n] with gradient G, at its step t (0-based, before the increment):
//   t % update_proj_gap == 0 (or no projector yet): refresh P from G (galore_projector.h)
//   g = project(G);  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²      (moments in g's shape, zeros
//   at the first step, NOT reset at a refresh);  t += 1
//   step = lr·√(1−β2^t)/(1−β1^t);  n = m/(√v + eps)
//   W −= step·scale·project_back(n);  then W −= lr·wd·W
// Every other tensor (1-D, non-targets) gets the same transformers-style AdamW step without the
// projection (what GaLoreAdamW does for its non-GaLore parameter group). Note the differences to
// torch AdamW (optim.h): eps outside the bias correction, weight decay after the update.
// A refresh whose gradient is exactly zero (LoRA's A at step 0, B = 0) is deferred to the next
// step with a non-zero gradient; the zero gradient still steps the moments (to zero).
// moments = "int8": m and v in 8-bit blockwise dynamic codes (quant/blockwise8.h, bitsandbytes'
// 8-bit Adam state) for stored moment tensors of >= 4096 elements: the aligned 256-element blocks
// of the tensor's global flat index that lie inside this rank's range; the ragged ends (and small
// tensors) stay fp32. The update itself is the fp32 one on the dequantized moments. Checkpoints
// hold fp32 m, v as before (the dequantized values; loading requantizes them, exactly), so fp32
// and int8 checkpoints are interchangeable, at any world size.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "quant/blockwise8.h"
#include "sharding/comm.h"
#include "src/model/optim.h"
#include "src/train/galore_projector.h"

namespace frugal {

struct GaloreConfig {
  int rank = 128;
  int update_proj_gap = 200;
  float scale = 0.25f;
  std::string proj_type = "std";                   // std | reverse_std | left | right | full
  // Substrings of a tensor's module path, as galore_torch's target_modules_list ("attn", "mlp",
  // "q_proj", ...), matched against the dense (HF-named) 2-D tensors; "lora" selects the LoRA
  // factors (lora_A, lora_B) instead.
  std::vector<std::string> targets = {"attn", "mlp"};
  // Per-layer updates (src/train/galore_per_layer.h): each decoder block steps as soon as its
  // backward is done and frees its gradients. Full fine-tuning, one process, no global clipping.
  bool per_layer = false;
  std::string svd = "exact";                       // exact | randomized
  int oversample = 8, power_iters = 2;             // randomized only
  std::string moments = "fp32";                    // fp32 | int8
  // Throws naming `where` (e.g. "recipe.toml: galore.rank") on a bad value.
  void validate(const std::string& where) const;
};

// Is this tensor a GaLore target? 2-D only.
bool galore_is_target(const GaloreConfig& c, const std::string& name, const std::vector<int64_t>& shape);

struct GaloreStats {
  int64_t refreshes = 0;
  double refresh_seconds = 0;  // time in galore_refresh (this rank)
  double step_seconds = 0;     // whole step() time (this rank)
};

class GaloreAdamW : public Optimizer {
 public:
  // comm: the ranks a sharded param is split over (self communicator for one process).
  GaloreAdamW(const AdamWConfig& adamw, const GaloreConfig& g, Communicator& comm, uint64_t seed,
              Backend& be = cpu_backend());
  ~GaloreAdamW() override;
  const char* name() const override { return "galore_adamw"; }
  void step(const std::vector<ParamRef>& params, float lr) override;  // begin_step, step_param each
  // The same step one param at a time, for per-layer updates (galore.per_layer: each block steps
  // as soon as its backward is done): begin_step() once (t += 1), then step_param for every param.
  // lo (nullable; a whole param only): its projected gradient (project_grad, summed over the
  // micro-batches), used instead of projecting p.g, on a step where needs_full_grad(p) is false.
  void begin_step();
  // One process: computes, in parallel over tensors, every projector of params that this step
  // refreshes, so that step_param finds them done (the refresh is most of GaLore's cost; one
  // LAPACK SVD per thread). Sharded: nothing (refreshes are collectives, in step_param's order).
  void refresh_projectors(const std::vector<ParamRef>& params);
  void step_param(const ParamRef& p, float lr, const float* lo = nullptr);
  // Does the coming step need p's full gradient: not a target, or a target whose projector is
  // refreshed at it (from the gradient)? Call before begin_step.
  bool needs_full_grad(const ParamRef& p);
  // A whole target param's projected gradient [projected_numel(p)] = project(p.g); its projector
  // must exist (needs_full_grad(p) false).
  size_t projected_numel(const ParamRef& p);
  void project_grad(const ParamRef& p, float* lo);
  int64_t t() const override { return t_; }
  void set_t(int64_t t) override { t_ = t; }
  // Elementwise state of non-target tensors; GaLore tensors go through state_parts only.
  std::vector<std::string> state_names() const override { return {"m", "v"}; }
  std::vector<OptimStateTensor> state(const std::string& param) override;
  // Per tensor: m, v (projected shape for targets), then for targets proj_right / proj_left and
  // galore_pending [1] (refresh at the next step: no projector computed yet, or a deferred refresh).
  // int8: m and v are fp32 staging (dequantized on the call), kept until end_state_io.
  std::vector<OptimStatePart> state_parts(const std::vector<ParamRef>& params) override;
  // After a checkpoint used the parts: requantizes the staging (loaded) and frees it.
  void end_state_io(bool loaded) override;

  // Bytes of optimizer state this rank holds (moments, projectors), for the planner and the bench.
  size_t state_bytes() const;

  const GaloreStats& stats() const { return stats_; }
  void reset_stats() { stats_ = GaloreStats{}; }
  const GaloreConfig& config() const { return gc_; }

 private:
  struct TensorState;
  TensorState& state_of(const ParamPiece& t);
  bool refreshes_at(const TensorState& s, int64_t step) const;  // s's projector is refreshed at `step`
  bool refresh_due(const TensorState& s) const;  // this step refreshes s's projector, not done yet
  void note_refresh(TensorState& s, bool ok);    // a refresh ran for s's current step (ok: computed)
  void end_io(TensorState& s, bool loaded, const std::string& name);
  AdamWConfig cfg_;
  GaloreConfig gc_;
  Communicator* comm_;
  uint64_t seed_;
  Backend* be_;
  int64_t t_ = 0;
  int64_t t_before_ = 0;  // t() before the current step's begin_step
  std::map<std::string, std::unique_ptr<TensorState>> state_;  // by tensor name
  GaloreStats stats_;
  // scratch shared by all tensors (one tensor steps at a time): the projected gradient and
  // m/(sqrt(v)+eps), sized to the largest moment part (a per-tensor copy would double the state)
  avector<float> lo_, nrm_;
  avector<float> m8_, v8_;  // int8: the dequantized m, v of the tensor stepping (same sizing)
};

// Bytes of GaLore-AdamW state for one whole tensor (the planner's formula; the optimizer's
// state_bytes() at W = 1 equals the sum of these).
size_t galore_state_bytes(const GaloreConfig& c, const std::string& name, const std::vector<int64_t>& shape);
// The same for the part of a tensor one rank of `world` holds (piece: its flat range and every
// rank's cuts, src/model/params.h): moments of its LowRankPart and its projector parts for a
// target, m and v of its elements otherwise. Sums to the optimizer's state_bytes() on that rank.
size_t galore_held_state_bytes(const GaloreConfig& c, const ParamPiece& piece, int world, int rank);

}  // namespace frugal
