// fsdp.h: fully sharded data parallel QLoRA on top of LlamaModel (issue 5).
//
// Every rank keeps 1/W of every unit (sharding/layout.h): its frozen shard (NF4 bytes, norms,
// bf16 embeddings) and its trainable shard (LoRA masters, their gradient, AdamW m and v). The
// model runs with empty weights; around each use of a unit it calls the UnitHooks (model.h),
// which Fsdp implements:
//   acquire(u)  wait for unit u's all-gather (started earlier by prefetch, or now), bind the
//               model's tensors (NF4Tensor, norms, embeddings, LoRA A/B, and in backward the
//               LoRA dA/dB of a zeroed full-unit grad buffer) to views of the gathered buffers,
//               and start the all-gathers of the next `prefetch` units of the schedule;
//   release(u)  unbind; in backward start the reduce-scatter of the unit's LoRA grads (each rank
//               receives the sum over ranks of its shard) and free the gathered buffers unless the
//               unit is used again within the prefetch window.
// Schedule of a training pass: embed, layers.0 .. layers.L-1, head (+ embed when tied), then
// layers.L-1 .. layers.0 again for backward. The last block is used twice in a row and kept.
// The last steps of a training pass also prefetch the next pass's first units when they have no
// trainables (the embedding unit), so the next pass does not start by waiting for a whole gather.
// Gradients: reduce-scattered sums of grad_scale·dCE, accumulated over micro-batches in the
// rank's grad shard; the trainer all-reduces the squared norm for clipping and steps AdamW on the
// shards only (elementwise, so the update equals the unsharded one).
//
// Communication overlaps compute: all-gathers of unit i+1..i+prefetch run on the communicator's
// progress thread while unit i computes. Stats count the bytes moved and the time the compute
// thread spent WAITING for communication (exposed, not overlapped).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "sharding/layout.h"
#include "src/model/model.h"
#include "src/model/params.h"

namespace frugal {

struct FsdpOptions {
  int prefetch = 1;      // units gathered ahead (0 = gather each unit when it is needed)
};

// One step of a pass: the units that must be gathered together (a tied head needs the head unit
// and the embedding unit).
using FsdpStep = std::vector<int>;
std::vector<FsdpStep> fsdp_schedule(const ModelLayout& L, bool backward);

// Bytes one rank holds, by category, as Fsdp allocates them (the planner uses this).
struct FsdpMemory {
  size_t frozen_shard = 0;     // Σ frozen_shard
  size_t train_shard = 0;      // LoRA masters + grads + AdamW m, v: 16 B per shard float
  size_t gathered_peak = 0;    // max over the schedule of the gathered (frozen + fp32 LoRA) units alive at once
  size_t grad_in_flight = 0;   // full-unit LoRA grad buffers (backward + reduce-scatter in flight) + receive shards
};
FsdpMemory fsdp_memory_model(const ModelLayout& L, const FsdpOptions& o, bool backward);

struct FsdpStats {
  double gathered_bytes = 0;         // received by all-gathers (frozen + LoRA), this rank
  double reduce_scattered_bytes = 0; // sent into reduce-scatters, this rank
  double exposed_comm_seconds = 0;   // compute thread blocked waiting for communication
  // parts of exposed_comm_seconds: waits for the first step's gathers of a pass (nothing computes
  // before them) and for reduce-scatters; the rest is later gathers
  double exposed_first_gather_seconds = 0;
  double exposed_reduce_scatter_seconds = 0;
  int64_t gathers = 0, reduce_scatters = 0;
  void reset() { *this = FsdpStats{}; }
};

class Fsdp : public UnitHooks {
 public:
  // m: a skeleton model (LlamaModel::skeleton) with LoRA sites (add_lora(..., allocate=false)) when
  // the layout has LoRA. The frozen shards come from load_frozen_shards (sharding/shard_load.h).
  Fsdp(LlamaModel& m, const ModelLayout& L, Communicator& comm, const FsdpOptions& o,
       std::vector<avector<uint8_t>> frozen_shards);
  ~Fsdp() override;

  // LoRA init of this rank's shards: the values the unsharded add_lora(cfg, seed) gives.
  void init_lora(uint64_t seed);
  // One ParamRef per unit with trainables: name "fsdp/<unit name>", w/g = this rank's shard.
  std::vector<ParamRef>& shard_params() { return params_; }
  // Dense trainables (layout entries 'W': norms, embeddings, lm_head, full fine-tuning linears):
  // their gradients accumulate in the model's own full-size buffers during forward_backward; this
  // reduce-scatters them into the grad shards (each rank receives the sum over ranks of its part)
  // and zeroes the model's buffers. Call it after every forward_backward (collective; no-op
  // without dense trainables).
  void reduce_dense_grads();
  // This rank's shard of unit u's trainable buffer (train_shard floats; null without trainables).
  float* train_shard(int u) { return w_[u].empty() ? nullptr : w_[u].data(); }
  // The global L2 norm of the LoRA grads: sqrt of the Σ over ranks of each shard's fp64 sum of
  // squares (every rank gets the same value).
  double global_grad_norm();
  // Gathers the full trainable buffer of unit u (LoRA A/B of every site) into out (train_padded
  // floats) — for tests; a rank never needs it in training.
  void gather_trainable(int u, float* out);

  const ModelLayout& layout() const { return L_; }
  FsdpStats& stats() { return stats_; }
  void set_prefetch(int p) { opt_.prefetch = p; }

  // ---- UnitHooks ----
  void begin_pass(bool backward) override;
  void acquire(int unit) override;
  void release(int unit) override;
  void end_pass() override;

 private:
  struct Slot;
  struct GradFlight;                         // a unit's full LoRA grads being reduce-scattered
  LlamaModel& m_;
  ModelLayout L_;
  Communicator& comm_;
  FsdpOptions opt_;
  std::vector<avector<uint8_t>> frozen_;     // per unit: frozen shard
  std::vector<avector<float>> w_, g_;        // per unit: trainable master shard, grad shard
  std::vector<ParamRef> params_;
  std::vector<std::unique_ptr<Slot>> slots_; // per unit: gathered buffers (null when not gathered)
  std::map<int, std::unique_ptr<GradFlight>> gif_;
  std::vector<FsdpStep> sched_;
  size_t pos_ = 0;                           // next schedule step
  bool backward_pass_ = false;
  FsdpStats stats_;

  void start_gather(int u);
  void wait_gather(int u);
  void bind(int u, bool with_grads);
  void unbind(int u);
  void bind_dense(int u, const TrainEntry& e, float* w, Slot& s);
  bool lora_grads(int u) const;              // the unit has LoRA tensors (grads bound in backward)
  void finish_reduce_scatter(int u);
  void free_unit(int u);
  bool needed_soon(int u) const;             // used within the prefetch window after pos_
  // the current step is in the backward half of a training pass (after embed, L blocks, head)
  bool in_backward() const { return backward_pass_ && pos_ >= (size_t)L_.cfg.num_hidden_layers + 2; }
};

}  // namespace frugal
