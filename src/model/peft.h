// peft.h: PEFT LoRA adapter directories (SPEC §3): adapter_config.json + adapter_model.safetensors.
//   write_peft_adapter: our export (only the config keys every PEFT version knows).
//   load_peft_adapter:  ours or one saved by peft's save_pretrained, onto a LlamaModel:
//                       y = W·x + s·B·(A·x), s = lora_alpha/r (rsLoRA: lora_alpha/√r).
// Tensor names: base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, in] and
// ...lora_B.weight [out, r] (k,v,o; mlp.gate/up/down alike). peft strips the adapter name when it
// saves; a ".default" before ".weight" is accepted anyway.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/io/safetensors.h"

namespace frugal {

class LlamaModel;

// The adapter_config.json values frugal writes and understands.
struct PeftAdapterConfig {
  std::string base_model;               // base_model_name_or_path
  int r = 0;
  float alpha = 0.f;                    // lora_alpha
  float dropout = 0.f;                  // lora_dropout
  bool rslora = false;                  // use_rslora
  std::vector<std::string> target_modules;  // list form (written sorted, as peft does)
  // Modules trained densely (train.trainable), full module names such as "model.embed_tokens",
  // "model.layers.0.input_layernorm", "lm_head": peft wraps every module whose name ends with an
  // entry (ModulesToSaveWrapper) and its saved adapter holds the trained weight under the module's
  // name without the adapter name: base_model.model.<module>.weight. Empty: null in the config.
  std::vector<std::string> modules_to_save;
  float scale() const;                  // alpha/r or alpha/√r
};

// One adapter tensor (fp32 values, row-major, PEFT name).
struct AdapterTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes dir/adapter_config.json and dir/adapter_model.safetensors (F32, or BF16 when dtype is
// DType::BF16), each under a temporary name then renamed. Creates dir. Tensors: LoRA names, or
// base_model.model.<m>.weight for m in cfg.modules_to_save (anything else throws naming it).
void write_peft_adapter(const std::string& dir, const PeftAdapterConfig& cfg,
                        const std::vector<AdapterTensor>& tensors, DType dtype = DType::F32);

// Reads and validates dir/adapter_config.json: peft_type must be "LORA"; DoRA, rank_pattern /
// alpha_pattern, biases, modules_to_save, layer_replication, ... are rejected as "not supported".
// target_modules may be a list or a string (a regex peft fully matches against module names, or
// "all-linear"); the string form is kept in target_regex and target_modules is then empty.
struct PeftAdapterFile {
  PeftAdapterConfig cfg;
  std::string target_regex;              // non-empty when target_modules was a string
  bool all_linear = false;               // target_modules == "all-linear"
  std::vector<std::string> exclude;      // exclude_modules (list form)
  std::string exclude_regex;             // exclude_modules (string form)
  std::vector<int> layers;               // layers_to_transform; empty = all layers
};
PeftAdapterFile read_peft_adapter_config(const std::string& dir);

// Does module `key` (e.g. "model.layers.3.self_attn.q_proj") carry LoRA under this config
// (peft's check_target_module_exists for the forms above)?
bool peft_targets(const PeftAdapterFile& f, const std::string& key, int layer);

// Adds LoRA to m (LlamaModel::add_lora with the file's r/alpha/dropout/rslora and the module kinds
// present) and fills every adapter's A and B from dir/adapter_model.safetensors (F32/BF16/F16),
// then refreshes the bf16 compute copies. Sites the config does not target get B = 0 (they add
// exactly nothing). Missing / unexpected tensors and wrong shapes: frugal::Error naming the tensor
// and the file.
void load_peft_adapter(LlamaModel& m, const std::string& adapter_dir);

// Inverse of peft_lora_name (src/model/lora.h): the HF weight name a PEFT LoRA tensor name belongs to
// ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" -> "model.layers.3.self_attn.q_proj.weight")
// and 'A' / 'B' in *which; "" when the name is not a LoRA tensor name (".default" accepted).
std::string hf_name_of_peft(const std::string& peft_name, char* which);

}  // namespace frugal
