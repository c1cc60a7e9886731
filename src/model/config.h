// config.h: the model configuration (Hugging Face config.json of LlamaForCausalLM, SPEC §2),
// parsed with the upstream defaults, validated, written back as transformers writes it, and the
// named presets used by `frugal init`, the recipes' model.preset and `frugal plan`.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/common.h"

namespace frugal {

struct LlamaConfig {                      // HF config.json of LlamaForCausalLM (SPEC §2 keys and defaults)
  std::string architecture = "LlamaForCausalLM";
  int vocab_size = 32000, hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32;
  int num_attention_heads = 32, num_key_value_heads = 32, head_dim = 128, max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  fm::RopeParams rope;                    // rope_theta, rope_scaling (type + params), head_dim filled in
  int bos_token_id = 1; std::vector<int> eos_token_ids = {2};
  std::string torch_dtype = "bfloat16";
  float initializer_range = 0.02f;        // std of the normal init of linear/embedding weights (HF)
  int kv_dim() const { return num_key_value_heads * head_dim; }
  int q_dim() const { return num_attention_heads * head_dim; }
  int64_t num_parameters() const;         // SPEC §8: per layer 2d·q + 2·d·kv + 3·d·ffn + 2d; + V·d (+V·d untied) + d
  void validate(const std::string& where) const;         // throws naming `where` and the key
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& where);
  static LlamaConfig load(const std::string& path_or_dir); // dir/config.json or a .json path
  nlohmann::json to_json() const;                          // what transformers writes
  static LlamaConfig preset(const std::string& name);      // one of config_preset_names()
};

// Names of the presets accepted by LlamaConfig::preset.
std::vector<std::string> config_preset_names();

// The 7 decoder linears of layer `layer`, in site order q,k,v,o,gate,up,down (= lora_site_names()):
// HF weight name ("model.layers.3.self_attn.q_proj.weight") and shape [out, in]. The one table of
// names and shapes the model skeleton, the FSDP layout and the planner share.
struct LinearShape {
  std::string name;
  int64_t out = 0, in = 0;
};
std::array<LinearShape, 7> llama_block_linears(const LlamaConfig& c, int layer);

}  // namespace frugal
