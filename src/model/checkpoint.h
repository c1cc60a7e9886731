// checkpoint.h: HDF5 training checkpoints ("frugal-ckpt-v1").
// One file: /params/<name> fp32 [shape] (trainable master weights, PEFT names), /optim/<state>/<name>
// fp32 [shape] (the optimizer's state tensors, Optimizer::state: AdamW's /optim/m/<name> and /optim/v/<name>); root attributes: format, step, adam_t, seed,
// cursor_epoch/cursor_index/cursor_offset, tokens_seen, recipe (effective TOML text), base_model,
// param_order (names in list order, '\n'-joined), lora_rank/lora_alpha/lora_dropout/lora_rslora/
// lora_target_modules (from the recipe's [lora] section, when it has one).
// Crash safety: written to "<path>.tmp", fsync'ed, renamed over <path>, directory fsync'ed; a crash
// at any point leaves either the previous file or the new one, never a half-written <path>.
// The attributes, param_order and tensor checks are src/model/checkpoint_attrs.h, shared with the
// sharded checkpoint (sharding/shard_checkpoint.h), which writes the same format.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/io/dataset.h"
#include "src/model/lora.h"
#include "src/model/optim.h"
#include "src/model/params.h"

namespace frugal {

inline constexpr const char* kCheckpointFormat = "frugal-ckpt-v1";

struct TrainState {
  int64_t step = 0;          // optimizer steps done
  int64_t adam_t = 0;
  uint64_t seed = 0;
  DataCursor cursor;
  double tokens_seen = 0;
  std::string recipe_toml;
  std::string base_model;
  // ---- addition: the [lora] settings stored with the checkpoint. save: used when has_lora, else
  // taken from recipe_toml's [lora] section (if any); load: filled from the attributes. ----
  bool has_lora = false;
  LoraConfig lora;
};

void save_checkpoint(const std::string& path, const TrainState& st, const std::vector<ParamRef>& params, Optimizer& opt);

// Fills params (matched by name; missing/extra/shape or dtype mismatch: error naming the file and
// the tensor, raised before anything is overwritten) and, when opt is given, the optimizer's state tensors and t.
TrainState load_checkpoint(const std::string& path, const std::vector<ParamRef>& params, Optimizer* opt);

// Reads the parameter tensors (LoRA) and the metadata, no model needed (export, eval).
// Tensors come in the saved list order (param_order).
struct CheckpointContents {
  TrainState state;
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<avector<float>> data;
};
CheckpointContents read_checkpoint_params(const std::string& path);

// The file-writing half of save_checkpoint: writes `file` directly (no temp, no rename).
// Exposed so tests can simulate a crash that leaves a partial "<path>.tmp" behind.
void write_checkpoint_file(const std::string& file, const TrainState& st, const std::vector<ParamRef>& params, Optimizer& opt);

}  // namespace frugal
