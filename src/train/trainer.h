// trainer.h: the QLoRA training loop (issue 3), single-process or sharded (issue 5).
//
// Trainer(recipe): model (recipe model.path; created with init_model from model.preset when the
// directory has no config.json), frozen base quantized per [quant], LoRA per [lora], data (HDF5
// TokenDataset or make_synthetic_patterns from src/io/dataset.h, saved as output_dir/data.h5), BatchLoader, the
// optimizer (optim.name: AdamW, or GaLore-AdamW on the job's communicator, src/train/galore.h) and the LR schedule.
//
// train_step() for optimizer step s (0-based):
//   zero grads; fetch grad_accum micro-batches ids/targets [micro_batch, seq_len] first, count the
//   non-ignored targets n over ALL of them; for micro-batch j: set_dropout_rng(seed, s·accum + j),
//   forward_backward(grad_scale = 1/n)  -> the gradient of the mean loss over the whole step;
//   clip_grad_norm(grad_clip); lr = schedule.at(s); optimizer step (Optimizer, recipe optim.name);
//   sync_trainables (bf16 compute copies of the fp32 masters).
// What trains: LoRA (train.mode = "lora") and the dense tensors of train.trainable, or every
// decoder linear (train.mode = "full"), selected by select_trainable (src/model/tensors.h).
// Under mpirun (W > 1 ranks) the model is sharded (sharding/fsdp.h): every rank loads only its
// shard of each unit (sharding/shard_load.h), takes rows [B·r/W, B·(r+1)/W) of every micro-batch
// (train.micro_batch is the global batch; each rank still reads the same global rows, so n counts
// all of them and the gradient scale is the single-process one), runs forward_backward with its
// units gathered just in time, and the reduce-scattered LoRA grads land in its shard; the loss
// sum and the squared grad norm are all-reduced; the optimizer updates the shards (GaLore projects
// each tensor piece of a shard on the rows it holds, galore_projector.h). Dropout masks use the
// global row index (set_dropout_rng row0), so a sharded run is the single-process run up to fp32
// summation order. Rank 0 writes the files (recipe, metrics, data.h5, `latest`); checkpoints are
// written by all ranks into one parallel-HDF5 file of the single-process format.
// Everything a later step depends on is (LoRA weights, Adam moments and t, step, data cursor,
// seed): the checkpoint holds exactly that, so a resumed run repeats the uninterrupted one bit for bit.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "sharding/fsdp.h"
#include "sharding/layout.h"
#include "src/io/dataset.h"
#include "src/model/model.h"
#include "src/model/optim.h"
#include "src/model/params.h"
#include "src/train/recipe.h"

namespace frugal {

class GaloreLayerStep;  // src/train/galore_per_layer.h

struct StepMetrics {
  int64_t step;            // optimizer step just taken (0-based)
  double loss;             // mean CE over the step's targets (all micro-batches)
  float lr;                // lr used for this step
  double grad_norm;        // global L2 norm before clipping
  double tokens_per_s;     // tokens (B·T·accum) / step_seconds
  double step_seconds;
  size_t peak_rss_bytes;   // getrusage ru_maxrss so far
  int64_t tokens;          // tokens run through the model in this step
};

class Trainer {
 public:
  // loads (or inits) the model, LoRA, data, optimizer. comm: the job's communicator (null: the
  // world communicator, i.e. sharded when launched by mpirun with W > 1).
  explicit Trainer(const Recipe& r, Communicator* comm = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;   // the loader refers to ds_
  Trainer& operator=(const Trainer&) = delete;
  void resume(const std::string& checkpoint_path);  // exact continuation
  StepMetrics train_step();           // grad_accum micro-batches, clip, lr, optimizer step, sync_lora
  void run(int64_t max_steps = -1);   // until recipe train.steps (or max_steps more steps)
  void save(const std::string& path); // checkpoint now
  LlamaModel& model() { return *model_; }
  bool sharded() const { return fsdp_ != nullptr; }
  Fsdp* fsdp() { return fsdp_.get(); }
  Communicator& comm() { return *comm_; }
  // The trainable tensors (LoRA, then the dense ones of train.trainable / train.mode, per unit) in
  // trainable_params order, full (gathered on every rank when sharded).
  std::vector<std::pair<std::string, avector<float>>> gather_lora();
  int64_t step() const { return step_; }

  // ---- additions (used by cmd_train, bench and tests) ----
  const Recipe& recipe() const { return r_; }
  std::vector<ParamRef>& params() { return params_; }
  const TokenDataset& dataset() const { return ds_; }
  const Optimizer& optimizer() const { return *opt_; }
  double tokens_seen() const { return tokens_seen_; }
  // ids / targets of the last step: [grad_accum, micro_batch, seq_len]
  const std::vector<int32_t>& last_ids() const { return ids_; }
  const std::vector<int32_t>& last_targets() const { return targets_; }
  std::string checkpoint_dir() const;          // output_dir/checkpoints
  bool verbose = true;                         // progress / log lines on stderr
  GaloreLayerStep* layer_step() { return layer_step_.get(); }  // galore.per_layer, else null
  // output_dir/checkpoints/latest -> full path of the newest checkpoint; throws if there is none.
  static std::string latest_checkpoint(const std::string& output_dir);

 private:
  Recipe r_;
  std::unique_ptr<Communicator> own_comm_;
  Communicator* comm_ = nullptr;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<ModelLayout> layout_;        // sharded runs
  std::unique_ptr<Fsdp> fsdp_;                 // sharded runs
  TokenDataset ds_;
  std::unique_ptr<BatchLoader> loader_;
  std::unique_ptr<Optimizer> opt_;            // recipe optim.name (make_optimizer)
  LRSchedule sched_;
  std::vector<ParamRef> params_;
  std::unique_ptr<GaloreLayerStep> layer_step_;  // galore.per_layer (src/train/galore_per_layer.h)
  int64_t step_ = 0;
  double tokens_seen_ = 0;
  bool resumed_ = false;
  std::vector<int32_t> ids_, targets_;         // [accum, B, T] of the current step

  void setup_data();                           // ds_ + loader_ (synthetic data depends on the seed)
  void check_context(const std::string& dir) const;  // data.seq_len vs the model's max_position_embeddings
  void write_checkpoint_rotating();            // step-<N>.h5 + latest, keep the last checkpoint_keep
  bool root() const { return comm_->rank() == 0; }
};


// Peak resident set size of this process so far (getrusage ru_maxrss), bytes.
size_t peak_rss_bytes();

}  // namespace frugal
