// recipe.h: training recipes (TOML). One schema table (section.key, type, default, help) drives
// parsing, `--set section.key=value` overrides, validation, "did you mean" suggestions and the
// effective-recipe dump (to_toml).
//
// Sections: [model] [quant] [lora] [optim] [galore] [data] [train] [checkpoint] [fsdp] [device]; the keys and their help
// are listed by recipe_help() and, with their values, by to_toml() (`frugal train --dry-run`).
// An unknown section or key, a value of the wrong type or out of range is a frugal::Error naming
// the key and the file (or the --set argument), with the nearest valid key by edit distance (also
// matching common Hugging Face spellings such as learning_rate, max_grad_norm,
// gradient_accumulation_steps).
//
// Paths inside a recipe (model.path, data.path, train.output_dir) are used as written: relative
// paths resolve against the current working directory of the process, NOT the recipe's directory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/model/lora.h"
#include "src/model/model.h"
#include "src/model/optim.h"
#include "src/train/galore.h"

namespace frugal {

struct Recipe {
  std::string path;                       // the file it came from ("" for from_string)
  // [model]
  std::string model_path;                 // HF dir; when absent and model.preset set, created on the fly by `frugal init`
  std::string model_preset;               // one of config_preset_names() (src/model/config.h); "" = none
  uint64_t model_init_seed = 0;
  // [quant]
  std::string quant_type = "nf4";         // nf4 | none
  int quant_blocksize = 64;
  bool quant_double = true;
  // [lora]
  LoraConfig lora;                        // target_modules stored expanded ("all-linear" -> the 7 names)
  // [optim]
  std::string optim_name = "adamw";
  AdamWConfig adamw;
  float lr = 2e-4f;
  float grad_clip = 1.0f;                 // 0 = no clipping
  std::string lr_schedule = "cosine";     // constant | linear | cosine
  int warmup_steps = 0;
  float min_lr_ratio = 0.f;
  // [galore] (optim.name = "galore_adamw"; src/train/galore.h)
  GaloreConfig galore;
  // [data]
  std::string data_path;                  // HDF5 dataset (see src/io/dataset.h)
  std::string data_synthetic;             // "" or "patterns": a deterministic learnable dataset made on the fly when data_path is empty or absent
  int seq_len = 256;
  bool pack = true;
  bool shuffle = true;
  // [train]
  int steps = 100;
  int micro_batch = 1;
  int grad_accum = 1;
  uint64_t seed = 1234;
  bool activation_checkpointing = false;
  std::string train_mode = "lora";        // lora | full (every decoder linear of a bf16 base, fp32 masters)
  std::vector<std::string> train_trainable;  // dense tensors trained besides LoRA (src/model/tensors.h select_trainable)
  int log_every = 1;
  std::string output_dir = "runs/run";
  // [checkpoint]
  int checkpoint_every = 0;               // 0 = only at the end
  int checkpoint_keep = 2;                // periodic checkpoints kept (older ones deleted); 0 = keep all
  // [fsdp] (runs under mpirun; see sharding/fsdp.h)
  int fsdp_prefetch = 1;                  // units all-gathered ahead of the computing one
  bool fsdp_offload = false;              // frozen shard in pinned host memory (GPU); no-op on CPU
  float fsdp_comm_timeout = 600.f;        // seconds before a collective aborts the job
  // [device]
  std::string device_backend = "cpu";     // cpu | cuda (backend_by_name, src/model/backend.h)

  // Reads and validates a recipe file, then applies overrides ("lora.rank=32") in order.
  static Recipe load(const std::string& path, const std::vector<std::string>& overrides = {});
  // Same from TOML text; `where` names the source in errors (a path or "<string>").
  static Recipe from_string(const std::string& toml_text, const std::string& where,
                            const std::vector<std::string>& overrides = {});
  // The effective recipe: every key of the schema with its value, section by section, with the
  // help as comments. from_string(to_toml()) gives an equal recipe.
  std::string to_toml() const;

  // ---- additions ----
  void validate(const std::string& where) const;  // range checks; `where` names the source in errors
  LRSchedule schedule() const;                    // {lr_schedule, lr, warmup_steps, steps, min_lr_ratio}
  ModelOptions model_options() const;             // quant type/blocksize/double, activation_checkpointing, device.backend
  bool operator==(const Recipe& o) const;         // every schema key equal (path not compared)
};

// The schema, for help output and tests.
struct RecipeKeyInfo {
  std::string name;         // "lora.rank"
  std::string type;         // bool | int | float | string | string list
  std::string default_str;  // default as TOML text
  std::string help;
};
std::vector<RecipeKeyInfo> recipe_schema();
std::string recipe_help();  // a table of every key: name, type, default, help

// Levenshtein distance (used for "did you mean"; exposed for tests).
int edit_distance(const std::string& a, const std::string& b);

}  // namespace frugal
