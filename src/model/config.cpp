// config.cpp: LlamaConfig <-> Hugging Face config.json (SPEC §2), validation and presets.
// Accepts the published forms: rope_theta + rope_scaling (with the legacy "type" key) as written
// by transformers 4.x, and rope_parameters as written by transformers 5.x; eos_token_id as an int
// or a list; LlamaForCausalLM, or MistralForCausalLM without sliding-window attention.
#include "src/model/config.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace frugal {

using nlohmann::json;

namespace {

// ---- typed getters: a missing key or null gives the default, a wrong type throws ------------
const char* type_name(const json& v) { return v.type_name(); }

bool has_value(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int get_int(const json& j, const char* key, int def, const std::string& where) {
  if (!has_value(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_number_integer())
    fail(where, ": key '", key, "' must be an integer, got ", type_name(v), " ", v.dump());
  int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) fail(where, ": key '", key, "' = ", x, " is out of range");
  return (int)x;
}

double get_num(const json& j, const char* key, double def, const std::string& where) {
  if (!has_value(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_number()) fail(where, ": key '", key, "' must be a number, got ", type_name(v), " ", v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, bool def, const std::string& where) {
  if (!has_value(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) fail(where, ": key '", key, "' must be true or false, got ", type_name(v), " ", v.dump());
  return v.get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& def, const std::string& where) {
  if (!has_value(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) fail(where, ": key '", key, "' must be a string, got ", type_name(v), " ", v.dump());
  return v.get<std::string>();
}

// fp32 value as the double with the same shortest decimal form (1e-5f -> 1e-05, not 9.99999974e-06),
// so config.json shows the numbers a user wrote.
double f2d(float f) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), f);
  *r.ptr = 0;
  return std::strtod(buf, nullptr);
}

const char* rope_type_name(fm::RopeType t) {
  switch (t) {
    case fm::ROPE_DEFAULT: return "default";
    case fm::ROPE_LINEAR: return "linear";
    case fm::ROPE_DYNAMIC: return "dynamic";
    case fm::ROPE_YARN: return "yarn";
    case fm::ROPE_LLAMA3: return "llama3";
  }
  fail("config: invalid rope type ", (int)t);
}

// Parse a rope_scaling / rope_parameters object into c.rope. `key` names the object in messages.
void parse_rope_object(const json& rs, const char* key, LlamaConfig& c, const std::string& where) {
  if (!rs.is_object()) fail(where, ": key '", key, "' must be an object or null, got ", type_name(rs), " ", rs.dump());
  const std::string w = where + ": " + key;
  // "rope_type" is the current key, "type" the legacy one (SPEC §2); rope_type wins when both exist.
  std::string type = has_value(rs, "rope_type") ? get_str(rs, "rope_type", "", w) : get_str(rs, "type", "default", w);
  fm::RopeParams& r = c.rope;
  if (has_value(rs, "rope_theta")) r.theta = (float)get_num(rs, "rope_theta", 10000.0, w);
  auto need = [&](const char* k) {
    if (!has_value(rs, k)) fail(where, ": key '", key, ".", k, "' is required for rope_type \"", type, "\"");
  };
  if (type == "default") {
    r.type = fm::ROPE_DEFAULT;
  } else if (type == "linear" || type == "dynamic") {
    r.type = type == "linear" ? fm::ROPE_LINEAR : fm::ROPE_DYNAMIC;
    need("factor");
    r.factor = (float)get_num(rs, "factor", 1.0, w);
  } else if (type == "yarn") {
    r.type = fm::ROPE_YARN;
    need("factor");
    r.factor = (float)get_num(rs, "factor", 1.0, w);
    // transformers 5 sets original_max_position_embeddings from max_position_embeddings when absent.
    r.original_max_position_embeddings =
        get_int(rs, "original_max_position_embeddings", c.max_position_embeddings, w);
    r.beta_fast = (float)get_num(rs, "beta_fast", 32.0, w);
    r.beta_slow = (float)get_num(rs, "beta_slow", 1.0, w);
    r.attention_factor = (float)get_num(rs, "attention_factor", -1.0, w);  // <0: derived
    r.mscale = (float)get_num(rs, "mscale", 0.0, w);                  // DeepSeek-style pair, 0 = absent
    r.mscale_all_dim = (float)get_num(rs, "mscale_all_dim", 0.0, w);
    r.truncate = get_bool(rs, "truncate", true, w);
  } else if (type == "llama3") {
    r.type = fm::ROPE_LLAMA3;
    need("factor");
    need("low_freq_factor");
    need("high_freq_factor");
    r.factor = (float)get_num(rs, "factor", 1.0, w);
    r.low_freq_factor = (float)get_num(rs, "low_freq_factor", 1.0, w);
    r.high_freq_factor = (float)get_num(rs, "high_freq_factor", 4.0, w);
    r.original_max_position_embeddings =
        get_int(rs, "original_max_position_embeddings", c.max_position_embeddings, w);
  } else {
    fail(where, ": key '", key, ".", has_value(rs, "rope_type") ? "rope_type" : "type", "' = \"", type,
         "\" is not a supported RoPE type (default, linear, dynamic, yarn, llama3)");
  }
}

}  // namespace

// llama3.1-8b / llama3.1-70b: the real models' config.json values, for planning (`frugal plan
// --set model.preset=llama3.1-70b`) before downloading; `frugal init` would write a random model.
std::vector<std::string> config_preset_names() {
  return {"tiny", "small", "llama3-8b-2layers", "llama3-70b-2layers", "llama3.1-8b", "llama3.1-70b"};
}

int64_t LlamaConfig::num_parameters() const {
  const int64_t d = hidden_size, q = q_dim(), kv = kv_dim(), f = intermediate_size, V = vocab_size;
  const int64_t per_layer = 2 * d * q        // q_proj [q,d], o_proj [d,q]
                            + 2 * d * kv     // k_proj, v_proj [kv,d]
                            + 3 * d * f      // gate, up [f,d], down [d,f]
                            + 2 * d;         // input / post-attention RMSNorm
  return per_layer * num_hidden_layers + V * d * (tie_word_embeddings ? 1 : 2) + d;
}

void LlamaConfig::validate(const std::string& where) const {
  auto positive = [&](const char* key, int v) {
    if (v <= 0) fail(where, ": key '", key, "' must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  if (architecture != "LlamaForCausalLM" && architecture != "MistralForCausalLM")
    fail(where, ": key 'architectures' = \"", architecture, "\" is not supported (LlamaForCausalLM, MistralForCausalLM)");
  if (num_attention_heads % num_key_value_heads != 0)
    fail(where, ": key 'num_key_value_heads' = ", num_key_value_heads, " does not divide num_attention_heads = ",
         num_attention_heads);
  if (head_dim % 2 != 0) fail(where, ": key 'head_dim' = ", head_dim, " must be even (RoPE rotates pairs)");
  if (!(rms_norm_eps > 0.f) || !std::isfinite(rms_norm_eps))
    fail(where, ": key 'rms_norm_eps' must be a positive number, got ", rms_norm_eps);
  if (!(initializer_range >= 0.f) || !std::isfinite(initializer_range))
    fail(where, ": key 'initializer_range' must be a non-negative number, got ", initializer_range);
  // RoPE
  if (rope.head_dim != head_dim) fail(where, ": rope.head_dim ", rope.head_dim, " != head_dim ", head_dim);
  if (!(rope.theta > 0.f) || !std::isfinite(rope.theta))
    fail(where, ": key 'rope_theta' must be a positive number, got ", rope.theta);
  if (rope.type != fm::ROPE_DEFAULT && (!(rope.factor > 0.f) || !std::isfinite(rope.factor)))
    fail(where, ": key 'rope_scaling.factor' must be a positive number, got ", rope.factor);
  if (rope.type == fm::ROPE_DYNAMIC && rope.factor < 1.f)
    fail(where, ": key 'rope_scaling.factor' must be >= 1 for dynamic RoPE, got ", rope.factor);
  if (rope.type == fm::ROPE_LLAMA3 || rope.type == fm::ROPE_YARN) {
    if (rope.original_max_position_embeddings <= 0)
      fail(where, ": key 'rope_scaling.original_max_position_embeddings' must be positive, got ",
           rope.original_max_position_embeddings);
  }
  if (rope.type == fm::ROPE_LLAMA3 && !(rope.high_freq_factor > rope.low_freq_factor))
    fail(where, ": key 'rope_scaling.high_freq_factor' (", rope.high_freq_factor,
         ") must be greater than low_freq_factor (", rope.low_freq_factor, ")");
  if (rope.type == fm::ROPE_YARN && !(rope.beta_fast > rope.beta_slow))
    fail(where, ": key 'rope_scaling.beta_fast' (", rope.beta_fast, ") must be greater than beta_slow (",
         rope.beta_slow, ")");
  // special tokens must be ids of the vocabulary (-1: none)
  if (bos_token_id < -1 || bos_token_id >= vocab_size)
    fail(where, ": key 'bos_token_id' = ", bos_token_id, " is outside the vocabulary [0, ", vocab_size, ")");
  for (int e : eos_token_ids)
    if (e < 0 || e >= vocab_size)
      fail(where, ": key 'eos_token_id' = ", e, " is outside the vocabulary [0, ", vocab_size, ")");
}

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": config must be a JSON object, got ", type_name(j));
  LlamaConfig c;

  // ---- architecture / model_type --------------------------------------------------------
  std::string model_type = get_str(j, "model_type", "", where);
  if (!model_type.empty() && model_type != "llama" && model_type != "mistral")
    fail(where, ": key 'model_type' = \"", model_type, "\" is not supported (llama, mistral)");
  if (has_value(j, "architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.size() != 1 || !a[0].is_string())
      fail(where, ": key 'architectures' must be a list of one string, got ", a.dump());
    c.architecture = a[0].get<std::string>();
    if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM")
      fail(where, ": key 'architectures' = \"", c.architecture,
           "\" is not supported (LlamaForCausalLM, MistralForCausalLM)");
  } else {
    c.architecture = model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM";
  }
  const bool mistral = c.architecture == "MistralForCausalLM";
  if (mistral && model_type == "llama") fail(where, ": key 'model_type' = \"llama\" contradicts architectures MistralForCausalLM");
  if (!mistral && model_type == "mistral") fail(where, ": key 'model_type' = \"mistral\" contradicts architectures LlamaForCausalLM");

  // ---- sizes (defaults of transformers LlamaConfig / MistralConfig) ---------------------
  c.vocab_size = get_int(j, "vocab_size", 32000, where);
  c.hidden_size = get_int(j, "hidden_size", 4096, where);
  c.intermediate_size = get_int(j, "intermediate_size", mistral ? 14336 : 11008, where);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", 32, where);
  c.num_attention_heads = get_int(j, "num_attention_heads", 32, where);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", mistral ? 8 : c.num_attention_heads, where);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", mistral ? 4096 * 32 : 2048, where);
  if (c.num_attention_heads <= 0) fail(where, ": key 'num_attention_heads' must be positive, got ", c.num_attention_heads);
  if (has_value(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", 0, where);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail(where, ": key 'num_attention_heads' = ", c.num_attention_heads, " does not divide hidden_size = ",
           c.hidden_size, " (and no head_dim is given)");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = (float)get_num(j, "rms_norm_eps", 1e-6, where);
  c.initializer_range = (float)get_num(j, "initializer_range", 0.02, where);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, where);

  // ---- unsupported variants -------------------------------------------------------------
  std::string act = get_str(j, "hidden_act", "silu", where);
  if (act != "silu") fail(where, ": key 'hidden_act' = \"", act, "\" is not supported (only silu)");
  if (get_bool(j, "attention_bias", false, where)) fail(where, ": key 'attention_bias' = true is not supported");
  if (get_bool(j, "mlp_bias", false, where)) fail(where, ": key 'mlp_bias' = true is not supported");
  if (mistral) {
    // MistralConfig defaults sliding_window to 4096: only an explicit null means full causal attention.
    if (!j.contains("sliding_window"))
      fail(where, ": key 'sliding_window' is absent, which MistralForCausalLM reads as 4096; "
                  "sliding-window attention is not supported (needs \"sliding_window\": null)");
    if (!j.at("sliding_window").is_null())
      fail(where, ": key 'sliding_window' = ", j.at("sliding_window").dump(),
           " is not supported (sliding-window attention); only null");
  } else if (has_value(j, "sliding_window")) {
    fail(where, ": key 'sliding_window' is not a LlamaForCausalLM key (got ", j.at("sliding_window").dump(), ")");
  }

  // ---- RoPE: rope_parameters (transformers 5) wins over rope_theta + rope_scaling (4.x) ----
  c.rope = fm::RopeParams{};
  c.rope.head_dim = c.head_dim;
  c.rope.max_position_embeddings = c.max_position_embeddings;
  c.rope.theta = (float)get_num(j, "rope_theta", 10000.0, where);
  if (has_value(j, "rope_parameters"))
    parse_rope_object(j.at("rope_parameters"), "rope_parameters", c, where);
  else if (has_value(j, "rope_scaling"))
    parse_rope_object(j.at("rope_scaling"), "rope_scaling", c, where);

  // ---- special tokens ---------------------------------------------------------------------
  c.bos_token_id = get_int(j, "bos_token_id", -1, where);
  if (!j.contains("bos_token_id")) c.bos_token_id = 1;  // absent: default 1; null: none (-1)
  c.eos_token_ids.clear();
  if (!j.contains("eos_token_id")) {
    c.eos_token_ids = {2};
  } else if (const json& e = j.at("eos_token_id"); e.is_array()) {
    for (const json& x : e) {
      if (!x.is_number_integer()) fail(where, ": key 'eos_token_id' must be an integer or a list of integers, got ", e.dump());
      c.eos_token_ids.push_back(x.get<int>());
    }
  } else if (!e.is_null()) {
    c.eos_token_ids.push_back(get_int(j, "eos_token_id", 2, where));
  }

  // "dtype" is transformers 5's name of "torch_dtype"
  c.torch_dtype = get_str(j, "torch_dtype", get_str(j, "dtype", "bfloat16", where), where);
  if (c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" && c.torch_dtype != "float32")
    fail(where, ": key 'torch_dtype' = \"", c.torch_dtype, "\" is not supported (bfloat16, float16, float32)");

  c.validate(where);
  return c;
}

LlamaConfig LlamaConfig::load(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::string path = path_or_dir;
  if (fs::is_directory(path)) path = (fs::path(path) / "config.json").string();
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open config file");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  return from_json(j, path);
}

json LlamaConfig::to_json() const {
  // The keys transformers (4.4x) writes for LlamaConfig.save_pretrained, sorted as it writes them.
  json j = json::object();
  j["architectures"] = json::array({"LlamaForCausalLM"});
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  if (eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else j["eos_token_id"] = eos_token_ids;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["initializer_range"] = f2d(initializer_range);
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["mlp_bias"] = false;
  j["model_type"] = "llama";
  j["num_attention_heads"] = num_attention_heads;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_key_value_heads"] = num_key_value_heads;
  j["pretraining_tp"] = 1;
  j["rms_norm_eps"] = f2d(rms_norm_eps);
  if (rope.type == fm::ROPE_DEFAULT) {
    j["rope_scaling"] = nullptr;
  } else {
    json rs = json::object();
    rs["rope_type"] = rope_type_name(rope.type);
    rs["factor"] = f2d(rope.factor);
    if (rope.type == fm::ROPE_LLAMA3) {
      rs["low_freq_factor"] = f2d(rope.low_freq_factor);
      rs["high_freq_factor"] = f2d(rope.high_freq_factor);
      rs["original_max_position_embeddings"] = rope.original_max_position_embeddings;
    } else if (rope.type == fm::ROPE_YARN) {
      rs["original_max_position_embeddings"] = rope.original_max_position_embeddings;
      rs["beta_fast"] = f2d(rope.beta_fast);
      rs["beta_slow"] = f2d(rope.beta_slow);
      if (rope.attention_factor >= 0.f) rs["attention_factor"] = f2d(rope.attention_factor);
      if (rope.mscale != 0.f) rs["mscale"] = f2d(rope.mscale);
      if (rope.mscale_all_dim != 0.f) rs["mscale_all_dim"] = f2d(rope.mscale_all_dim);
      if (!rope.truncate) rs["truncate"] = false;
    }
    j["rope_scaling"] = rs;
  }
  j["rope_theta"] = f2d(rope.theta);
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = true;
  j["vocab_size"] = vocab_size;
  return j;
}

std::array<LinearShape, 7> llama_block_linears(const LlamaConfig& c, int layer) {
  const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  return {{{p + "self_attn.q_proj.weight", Q, C},
           {p + "self_attn.k_proj.weight", KV, C},
           {p + "self_attn.v_proj.weight", KV, C},
           {p + "self_attn.o_proj.weight", C, Q},
           {p + "mlp.gate_proj.weight", F, C},
           {p + "mlp.up_proj.weight", F, C},
           {p + "mlp.down_proj.weight", C, F}}};
}

LlamaConfig LlamaConfig::preset(const std::string& name) {
  LlamaConfig c;
  c.rms_norm_eps = 1e-5f;
  c.initializer_range = 0.02f;
  c.torch_dtype = "bfloat16";
  if (name == "tiny") {  // trains in seconds on a CPU; GQA 2:1, untied lm_head
    // Init std 0.1 (≈ 1/√hidden) instead of HF's 0.02: with the lm_head frozen (LoRA), a logit can
    // rise at most ~σ·hidden above the others, and 0.02·128 ≈ 2.6 caps what a demo run can learn.
    c.initializer_range = 0.1f;
    c.vocab_size = 512; c.hidden_size = 128; c.intermediate_size = 352; c.num_hidden_layers = 2;
    c.num_attention_heads = 4; c.num_key_value_heads = 2; c.max_position_embeddings = 512;
    c.rope.theta = 10000.f;
    c.bos_token_id = 1; c.eos_token_ids = {2};
  } else if (name == "small") {  // SmolLM2-135M's shapes
    c.vocab_size = 49152; c.hidden_size = 576; c.intermediate_size = 1536; c.num_hidden_layers = 30;
    c.num_attention_heads = 9; c.num_key_value_heads = 3; c.max_position_embeddings = 8192;
    c.tie_word_embeddings = true; c.rope.theta = 100000.f;
    c.bos_token_id = 0; c.eos_token_ids = {0};
  } else if (name == "llama3-8b-2layers" || name == "llama3-70b-2layers" || name == "llama3.1-8b" ||
             name == "llama3.1-70b") {  // Llama-3.1 widths; 2 layers, or all of them
    const bool big = name == "llama3-70b-2layers" || name == "llama3.1-70b";
    c.vocab_size = 128256; c.hidden_size = big ? 8192 : 4096; c.intermediate_size = big ? 28672 : 14336;
    c.num_hidden_layers = name == "llama3.1-8b" ? 32 : name == "llama3.1-70b" ? 80 : 2;
    c.num_attention_heads = big ? 64 : 32; c.num_key_value_heads = 8;
    c.max_position_embeddings = 131072;
    c.rope.theta = 500000.f; c.rope.type = fm::ROPE_LLAMA3; c.rope.factor = 8.f;
    c.rope.low_freq_factor = 1.f; c.rope.high_freq_factor = 4.f; c.rope.original_max_position_embeddings = 8192;
    c.bos_token_id = 128000; c.eos_token_ids = {128001};
  } else {
    std::string names;
    for (auto& n : config_preset_names()) names += (names.empty() ? "" : ", ") + n;
    fail("config preset \"", name, "\" is unknown (", names, ")");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.rope.head_dim = c.head_dim;
  c.rope.max_position_embeddings = c.max_position_embeddings;
  c.validate("preset " + name);
  return c;
}

}  // namespace frugal
