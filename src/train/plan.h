// plan.h: the memory planner (`frugal plan`, issue 5 item 7): bytes one rank holds, by category,
// on the device and on the host, for a recipe at world size W, without reading any weights.
//
// Every figure is computed from the same sizes the code allocates, not from rules of thumb:
//   frozen weights      single process (W = 1): the whole model as LlamaModel::load stores it
//                       (NF4 parts / bf16 linears, bf16 embeddings, fp32 norms) = the unpadded
//                       entries of make_model_layout(W = 1); FSDP: fsdp_memory_model().frozen_shard
//   gathered units      FSDP only: fsdp_memory_model() gathered_peak + grad_in_flight
//   dequant scratch     kernels/cpu/linear.cpp: each OpenMP thread keeps one NF4 tile, the largest
//                       over every linear's forward [tr, in] and backward_input [tr, ti] tiles (bf16)
//   trainables + grads  fp32 masters and grads (LoRA A, B; dense trainables): 8 B per trainable
//                       float (FSDP: per shard float) + the LoRA chunk scratch of kernels/cpu/lora.cpp
//                       (3 fp32 buffers, main thread)
//   optimizer state     AdamW: m, v, 8 B per trainable (shard) float; GaLore-AdamW: per tensor the
//                       moments in the projected shape and the projector as this rank holds them
//                       (galore_held_state_bytes; the busiest rank under FSDP)
//   activations         exactly LlamaModel::memory_report().activation_bytes after a
//                       forward_backward on this rank's [rows, seq_len] batch (plan_activation_bytes)
//   logits chunk        kernels/cpu/lm_head_ce.cpp scratch for one [row chunk, vocab chunk]
//   attention scratch   kernels/cpu/attention.cpp backward: Drow + per-thread dQ partials and tiles
//   data                the token dataset held by the trainer and the step's ids/targets
//   runtime             binary + shared libraries + OpenMP pool + oneDNN (measured in this process
//                       by plan_measure_runtime_bytes) + MPI (kMpiRuntimeBytes per rank, measured)
// Peak = max(load phase, training step). The load phase of a single process holds the model
// converted so far plus one bf16 tensor and its mapped file pages (src/model/model_load.cpp); an FSDP
// rank holds its shard plus one converted slice and the per-tensor absmax (sharding/shard_load.h).
//
// Device vs host: on the CPU backend they are the same memory (device == host). For a GPU target
// (device_memory > 0) the device holds everything but the runtime's host part; with
// fsdp.offload_params the frozen shard lives in pinned host memory instead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/model/config.h"
#include "src/model/lora.h"
#include "src/model/model.h"
#include "src/train/recipe.h"

namespace frugal {

struct PlanOptions {
  int world = 1;               // ranks
  int fsdp = -1;               // 1 = FSDP runtime, 0 = single-process trainer, -1 = (world > 1: the
                               // trainer's rule; mpirun -np 1 runs the single-process path too)
  double device_memory = 0;    // bytes per rank; > 0 = GPU target, 0 = CPU backend
  double host_memory = 0;      // bytes of host RAM on the node (0 = MemTotal of this machine)
  int ranks_per_node = 0;      // ranks sharing host_memory (0 = world: all ranks on this node)
  int threads = 0;             // OpenMP threads per rank (0 = omp_get_max_threads())
  int64_t runtime_bytes = -1;  // host runtime per rank without MPI (-1 = measure now)
};

struct PlanRow {
  std::string key;             // json key ("frozen_shard", ...)
  std::string label;           // table label
  size_t device = 0, host = 0; // bytes per rank
  std::string note;
};

struct Plan {
  // what was planned
  std::string recipe_path;
  LlamaConfig cfg;
  int world = 1;
  bool fsdp = false;
  bool gpu = false;
  bool offload = false;
  int threads = 1;
  int rows = 1;                // micro-batch rows of the busiest rank (ceil(micro_batch / W))
  int seq_len = 0;
  bool checkpointing = false;
  size_t activations_other = 0;  // activations with the other checkpointing setting
  // the table (steady state of a training step) and the load phase
  std::vector<PlanRow> rows_;
  size_t step_device = 0, step_host = 0;  // sums of the rows
  size_t load_host = 0;        // peak while loading (host; CPU: also device)
  size_t device_total = 0, host_total = 0;  // peak = max(step, load)
  double device_capacity = 0;  // bytes the device total is compared with
  double host_capacity = 0;    // bytes per rank of host memory
  bool fits = false;           // device_total <= device_capacity (CPU: the host share of each rank)
  bool host_fits = false;      // host_total <= host_capacity
  double percent = 0;          // device_total / device_capacity · 100 (CPU: host)
  const PlanRow* row(const std::string& key) const;
};

// The planner. Throws frugal::Error for a recipe it cannot plan (no model config, world < 1).
Plan make_plan(const Recipe& r, const PlanOptions& o);
inline Plan make_plan(const Recipe& r, int world, double device_memory = 0) {
  PlanOptions o;
  o.world = world;
  o.device_memory = device_memory;
  return make_plan(r, o);
}

// Human-readable table (bytes as GiB/MiB) and the same figures as JSON (bytes as integers).
std::string format_plan(const Plan& p);
nlohmann::json plan_json(const Plan& p);

// LlamaModel::memory_report().activation_bytes after forward_backward on a [B, T] batch, with or
// without checkpointing (lora: null = no adapters).
size_t plan_activation_bytes(const LlamaConfig& c, const LoraConfig* lora, int B, int T, bool checkpoint);

// The model config of a recipe: model.path's config.json when it exists, else model.preset.
LlamaConfig plan_model_config(const Recipe& r);

// Resident bytes of this process now (VmRSS) after initializing the OpenMP pool and oneDNN the way
// a training step does (a bf16 and an fp32 GEMM on every thread).
size_t plan_measure_runtime_bytes();

// "24GiB", "80GB", "512MiB", "1.5T", "1000000" -> bytes. Throws naming the text.
double parse_byte_size(const std::string& s);

// Per-rank RSS that MPI adds: OpenMPI 4.1.4 MPI_Init with the vader (shared memory) BTL, measured
// as the ru_maxrss of `frugal --version` under `mpirun -np 1|2|4` (27.0-27.4 MB per rank) minus the
// same without mpirun (19.3 MB): 7.7-8.1 MB.
constexpr size_t kMpiRuntimeBytes = size_t(8) << 20;
// RSS a training step adds beyond the buffers the planner counts: oneDNN primitives and JIT code
// for the step's ~30 GEMM shapes, their per-thread scratchpads, HDF5 state of the dataset file and
// malloc slack. Measured as (peak RSS of `frugal train`, 3 steps) - (plan total without it) on
// this machine: tiny 4x64 5.6 MB, tiny 8x128 7.0 MB, tiny 3x97 checkpointed 6.1 MB, small (30
// layers) 4x64 8.3 MB; the constant is the middle of that range.
constexpr size_t kStepRuntimeBytes = size_t(6656) << 10;  // 6.5 MiB

}  // namespace frugal
