// peft.cpp: PEFT LoRA adapter directories — write ours, read ours or peft's (see peft.h).
#include "src/model/peft.h"

#include "src/io/atomic_file.h"


#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "src/model/lora.h"
#include "src/model/model.h"

namespace frugal {

namespace fs = std::filesystem;
using nlohmann::json;

float PeftAdapterConfig::scale() const {
  FRUGAL_CHECK(r > 0, "LoRA rank ", r);
  return rslora ? alpha / std::sqrt((float)r) : alpha / (float)r;
}

// ---- names --------------------------------------------------------------------------------------
static const char* kPrefix = "base_model.model.";

std::string hf_name_of_peft(const std::string& n, char* which) {
  const std::string pre = kPrefix;
  if (n.compare(0, pre.size(), pre) != 0) return "";
  for (const char* tail : {".weight", ".default.weight"}) {
    for (char w : {'A', 'B'}) {
      const std::string suf = std::string(".lora_") + w + tail;
      if (n.size() > pre.size() + suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0) {
        if (which) *which = w;
        return n.substr(pre.size(), n.size() - pre.size() - suf.size()) + ".weight";
      }
    }
  }
  return "";
}

// ---- writing ------------------------------------------------------------------------------------

void write_peft_adapter(const std::string& dir, const PeftAdapterConfig& cfg,
                        const std::vector<AdapterTensor>& tensors, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("adapter export to ", dir, ": dtype must be F32 or BF16");
  if (cfg.r <= 0) fail("adapter export to ", dir, ": LoRA rank ", cfg.r, " must be positive");
  if (tensors.empty()) fail("adapter export to ", dir, ": no LoRA tensors");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create directory: ", ec.message());

  // Tensors first, so a directory with a config always has its weights.
  SafetensorsWriter w;
  std::vector<avector<bf16>> bf(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdapterTensor& t = tensors[i];
    char which = 0;
    bool saved_module = false;  // base_model.model.<module>.weight of a modules_to_save entry
    for (const std::string& m : cfg.modules_to_save) saved_module = saved_module || t.name == kPrefix + m + ".weight";
    if (!saved_module && hf_name_of_peft(t.name, &which).empty())
      fail("adapter export: ", t.name, " is neither a PEFT LoRA tensor name nor the weight of a modules_to_save module");
    const int64_t n = shape_numel(t.shape);
    if (dtype == DType::F32) {
      w.add(t.name, DType::F32, t.shape, t.data, (size_t)n * sizeof(float));
    } else {
      bf[i].resize((size_t)n);
      float_to_bf16(t.data, bf[i].data(), (size_t)n);
      w.add(t.name, DType::BF16, t.shape, bf[i].data(), (size_t)n * sizeof(bf16));
    }
  }
  w.set_metadata({{"format", "pt"}});
  w.write((fs::path(dir) / "adapter_model.safetensors").string());

  // Only the keys of SPEC §3 (older PEFT versions reject unknown keys).
  std::vector<std::string> targets = cfg.target_modules;
  std::sort(targets.begin(), targets.end());
  json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["base_model_name_or_path"] = cfg.base_model;
  j["r"] = cfg.r;
  if (cfg.alpha == std::floor(cfg.alpha) && std::fabs(cfg.alpha) < 1e9f)
    j["lora_alpha"] = (int64_t)cfg.alpha;  // peft types it int
  else
    j["lora_alpha"] = cfg.alpha;
  j["lora_dropout"] = cfg.dropout;
  j["target_modules"] = targets;
  j["bias"] = "none";
  j["use_rslora"] = cfg.rslora;
  j["fan_in_fan_out"] = false;
  j["init_lora_weights"] = true;
  j["use_dora"] = false;
  if (cfg.modules_to_save.empty())
    j["modules_to_save"] = nullptr;
  else
    j["modules_to_save"] = cfg.modules_to_save;
  j["layers_to_transform"] = nullptr;
  j["rank_pattern"] = json::object();
  j["alpha_pattern"] = json::object();
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), j.dump(2) + "\n");
}

// ---- reading ------------------------------------------------------------------------------------
static bool is_set(const json& j, const char* key) {  // present and not null / false / empty
  if (!j.contains(key)) return false;
  const json& v = j[key];
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_object() || v.is_array() || v.is_string()) return !v.empty() && v != "";
  return true;
}

PeftAdapterFile read_peft_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::is_directory(dir)) fail("adapter ", dir, ": not a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("missing ", path, " (not a PEFT adapter directory)");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  if (!j.is_object()) fail(path, ": not a JSON object");
  if (!j.contains("peft_type") || !j["peft_type"].is_string())
    fail(path, ": key 'peft_type' is missing (expected \"LORA\")");
  const std::string pt = j["peft_type"].get<std::string>();
  if (pt != "LORA") fail(path, ": peft_type '", pt, "' is not supported (only LORA)");
  if (j.contains("task_type") && !j["task_type"].is_null() && j["task_type"] != "CAUSAL_LM")
    fail(path, ": task_type ", j["task_type"].dump(), " is not supported (CAUSAL_LM)");

  // Features that change the math or add tensors frugal does not model.
  const char* unsupported[] = {"use_dora",        "rank_pattern",      "alpha_pattern",
                               "layer_replication", "lora_bias",       "target_parameters", "trainable_token_indices",
                               "use_qalora",      "alora_invocation_tokens", "use_bdlora", "fan_in_fan_out"};
  for (const char* k : unsupported)
    if (is_set(j, k)) fail(path, ": '", k, "' = ", j[k].dump(), " is not supported");
  if (j.contains("bias") && !j["bias"].is_null() && j["bias"] != "none")
    fail(path, ": bias ", j["bias"].dump(), " is not supported (only \"none\")");

  auto num = [&](const char* k, double def) -> double {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_number()) fail(path, ": key '", k, "' must be a number, got ", j[k].dump());
    return j[k].get<double>();
  };
  PeftAdapterFile f;
  f.cfg.base_model = j.value("base_model_name_or_path", json("")).is_string()
                         ? j.value("base_model_name_or_path", std::string())
                         : std::string();
  const double r = num("r", 8);  // peft's defaults for absent keys
  if (!(r >= 1) || r != std::floor(r) || r > 1e6) fail(path, ": key 'r' must be a positive integer, got ", r);
  f.cfg.r = (int)r;
  f.cfg.alpha = (float)num("lora_alpha", 8);
  f.cfg.dropout = (float)num("lora_dropout", 0);
  if (j.contains("use_rslora") && !j["use_rslora"].is_null()) {
    if (!j["use_rslora"].is_boolean()) fail(path, ": key 'use_rslora' must be true or false");
    f.cfg.rslora = j["use_rslora"].get<bool>();
  }

  auto str_list = [&](const char* k, std::vector<std::string>* list, std::string* rx) {
    if (!j.contains(k) || j[k].is_null()) return;
    const json& v = j[k];
    if (v.is_string()) {
      *rx = v.get<std::string>();
      return;
    }
    if (!v.is_array()) fail(path, ": key '", k, "' must be a list of names or a string");
    for (const json& e : v) {
      if (!e.is_string()) fail(path, ": key '", k, "' has a non-string entry ", e.dump());
      list->push_back(e.get<std::string>());
    }
  };
  str_list("target_modules", &f.cfg.target_modules, &f.target_regex);
  if (f.target_regex == "all-linear") {
    f.all_linear = true;
    f.target_regex.clear();
    f.cfg.target_modules = LoraConfig::expand_targets({"all-linear"});
  }
  str_list("exclude_modules", &f.exclude, &f.exclude_regex);
  std::string mts_regex;
  str_list("modules_to_save", &f.cfg.modules_to_save, &mts_regex);
  if (!mts_regex.empty()) fail(path, ": modules_to_save must be a list of module names");
  for (const std::string* rx : {&f.target_regex, &f.exclude_regex})
    if (!rx->empty()) try {
        std::regex test(*rx);
      } catch (const std::regex_error& e) {
        fail(path, ": module regex '", *rx, "' is not supported: ", e.what());
      }

  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const json& v = j["layers_to_transform"];
    if (v.is_number_integer()) f.layers.push_back(v.get<int>());
    else if (v.is_array()) {
      for (const json& e : v) {
        if (!e.is_number_integer()) fail(path, ": key 'layers_to_transform' has a non-integer entry ", e.dump());
        f.layers.push_back(e.get<int>());
      }
    } else
      fail(path, ": key 'layers_to_transform' must be an integer or a list of integers");
    if (is_set(j, "layers_pattern")) {
      const json& lp = j["layers_pattern"];
      if (!(lp == "layers" || lp == json::array({"layers"})))
        fail(path, ": layers_pattern ", lp.dump(), " is not supported (Llama: \"layers\")");
    }
  }
  return f;
}

static bool ends_with_module(const std::string& key, const std::string& t) {
  return key == t || (key.size() > t.size() && key.compare(key.size() - t.size(), t.size(), t) == 0 &&
                      key[key.size() - t.size() - 1] == '.');
}

bool peft_targets(const PeftAdapterFile& f, const std::string& key, int layer) {
  if (!f.layers.empty() && std::find(f.layers.begin(), f.layers.end(), layer) == f.layers.end()) return false;
  if (!f.exclude_regex.empty() && std::regex_match(key, std::regex(f.exclude_regex))) return false;
  for (const std::string& e : f.exclude)
    if (ends_with_module(key, e)) return false;
  if (f.all_linear) return true;  // every decoder linear (lm_head is excluded by peft)
  if (!f.target_regex.empty()) return std::regex_match(key, std::regex(f.target_regex));
  for (const std::string& t : f.cfg.target_modules)
    if (ends_with_module(key, t)) return true;
  return false;
}


// A modules_to_save weight replaces the model's tensor `hf`: norms keep fp32, embeddings /
// lm_head / bf16 linears take bf16(value) (their compute precision).
static void set_saved_module(LlamaModel& m, const std::string& hf, const TensorView& t, const std::string& file) {
  const int64_t V = m.config().vocab_size, C = m.config().hidden_size;
  auto check = [&](const std::vector<int64_t>& shape) {
    if (t.shape != shape)
      fail("tensor ", t.name, " in ", file, " has shape ", shape_str(t.shape), ", expected ", shape_str(shape), " for ", hf);
    check_finite(t);
  };
  auto set_norm = [&](NormParam& p) {
    check({C});
    to_float(t, p.w.data());
  };
  auto set_bf16 = [&](Buf<bf16>& w, std::vector<int64_t> shape) {
    check(shape);
    FRUGAL_CHECK(w.size() == (size_t)t.numel(), "adapter: ", hf, " has no bf16 weights in the model");
    to_bf16(t, w.data());
  };
  if (hf == m.norm.name) return set_norm(m.norm);
  if (hf == "model.embed_tokens.weight") return set_bf16(m.embed, {V, C});
  if (hf == "lm_head.weight") {
    if (m.config().tie_word_embeddings) fail("tensor ", t.name, " in ", file, ": lm_head is tied to embed_tokens in this model");
    return set_bf16(m.lm_head_w, {V, C});
  }
  for (LlamaBlock& b : m.blocks) {
    if (hf == b.ln1.name) return set_norm(b.ln1);
    if (hf == b.ln2.name) return set_norm(b.ln2);
    for (LinearSite* s : b.sites())
      if (hf == s->name) {
        if (s->W.kind != FrozenWeight::Kind::BF16)
          fail("tensor ", t.name, " in ", file, ": ", hf, " is NF4-quantized in this model; load the adapter on a bf16 base");
        return set_bf16(s->W.w, {s->W.out, s->W.in});
      }
  }
  fail("tensor ", t.name, " in ", file, " matches no tensor of the model (", hf, ")");
}

void load_peft_adapter(LlamaModel& m, const std::string& dir) {
  const PeftAdapterFile f = read_peft_adapter_config(dir);
  const fs::path wpath = fs::path(dir) / "adapter_model.safetensors";
  if (!fs::exists(wpath)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin"))
      fail(dir, ": adapter_model.bin (pickle) is not supported; save with safe_serialization=True");
    fail("missing ", wpath.string());
  }
  SafetensorsFile st(wpath.string());

  // HF weight name -> its A and B tensors in the file.
  struct Pair {
    const TensorView* A = nullptr;
    const TensorView* B = nullptr;
  };
  std::map<std::string, Pair> by_hf;
  std::vector<std::pair<std::string, const TensorView*>> saved;  // modules_to_save: HF name, tensor
  for (const TensorView& t : st.tensors()) {
    char which = 0;
    const std::string hf = hf_name_of_peft(t.name, &which);
    if (hf.empty()) {
      // peft's saved modules_to_save form: base_model.model.<module>.weight, <module> ending with
      // an entry of modules_to_save (peft matches by suffix)
      const std::string pre = "base_model.model.", suf = ".weight";
      bool ok = t.name.size() > pre.size() + suf.size() && t.name.compare(0, pre.size(), pre) == 0 &&
                t.name.compare(t.name.size() - suf.size(), suf.size(), suf) == 0;
      const std::string module = ok ? t.name.substr(pre.size(), t.name.size() - pre.size() - suf.size()) : "";
      bool listed = false;
      for (const std::string& e : f.cfg.modules_to_save)
        listed = listed || (module.size() >= e.size() && module.compare(module.size() - e.size(), e.size(), e) == 0);
      if (!ok || !listed)
        fail("tensor ", t.name, " in ", st.path(), " is neither a LoRA A/B weight nor the weight of a modules_to_save module");
      saved.push_back({module + suf, &t});
      continue;
    }
    const TensorView*& slot = which == 'A' ? by_hf[hf].A : by_hf[hf].B;
    if (slot) fail("tensor ", t.name, " in ", st.path(), " appears twice (with and without .default)");
    slot = &t;
  }

  // Which sites carry LoRA: those with tensors in the file (the config's list form must agree).
  static const char* kinds[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  LinearSite LlamaBlock::*sites[7] = {&LlamaBlock::q,    &LlamaBlock::k,  &LlamaBlock::v,   &LlamaBlock::o,
                                       &LlamaBlock::gate, &LlamaBlock::up, &LlamaBlock::down};
  std::vector<std::string> used_kinds;
  for (int s = 0; s < 7; ++s) {
    bool any = false;
    for (int l = 0; l < (int)m.blocks.size(); ++l) {
      const std::string& hf = (m.blocks[l].*sites[s]).name;
      const std::string key = hf.substr(0, hf.size() - 7);  // without ".weight"
      auto it = by_hf.find(hf);
      const bool has = it != by_hf.end();
      if (has && !it->second.A) fail("missing tensor ", peft_lora_name(hf, 'A'), " in ", st.path(), " (its lora_B is there)");
      if (has && !it->second.B) fail("missing tensor ", peft_lora_name(hf, 'B'), " in ", st.path(), " (its lora_A is there)");
      if (!has && f.target_regex.empty() && peft_targets(f, key, l))
        fail("missing tensor ", peft_lora_name(hf, 'A'), " in ", st.path(), " (adapter_config.json targets ", key, ")");
      any = any || has;
    }
    if (any) used_kinds.push_back(kinds[s]);
  }
  // Tensors that belong to no site of this model (other layer count, lm_head, ...).
  {
    std::set<std::string> site_names;
    for (const LlamaBlock& b : m.blocks)
      for (int s = 0; s < 7; ++s) site_names.insert((b.*sites[s]).name);
    for (const auto& [hf, p] : by_hf)
      if (!site_names.count(hf))
        fail("tensor ", (p.A ? p.A : p.B)->name, " in ", st.path(), " matches no decoder linear of the model");
  }
  if (used_kinds.empty()) fail(st.path(), ": no LoRA tensors");

  LoraConfig lc;
  lc.rank = f.cfg.r;
  lc.alpha = f.cfg.alpha;
  lc.dropout = f.cfg.dropout;
  lc.rslora = f.cfg.rslora;
  lc.target_modules = used_kinds;
  m.add_lora(lc, 0);

  for (LlamaBlock& b : m.blocks)
    for (int s = 0; s < 7; ++s) {
      LinearSite& site = b.*sites[s];
      if (!site.lora) continue;
      LoraAdapter& ad = *site.lora;
      auto it = by_hf.find(site.name);
      if (it == by_hf.end()) {  // not in the adapter: contributes exactly nothing
        std::fill(ad.B.begin(), ad.B.end(), 0.f);
        continue;
      }
      const TensorView& A = *it->second.A;
      const TensorView& B = *it->second.B;
      const std::vector<int64_t> sa = {ad.r, ad.in}, sb = {ad.out, ad.r};
      if (A.shape != sa)
        fail("tensor ", A.name, " in ", st.path(), " has shape ", shape_str(A.shape), ", expected ", shape_str(sa));
      if (B.shape != sb)
        fail("tensor ", B.name, " in ", st.path(), " has shape ", shape_str(B.shape), ", expected ", shape_str(sb));
      check_finite(A);
      check_finite(B);
      to_float(A, ad.A.data());
      to_float(B, ad.B.data());
    }
  m.sync_lora();
  for (const auto& [hf, t] : saved) set_saved_module(m, hf, *t, st.path());
}

}  // namespace frugal
