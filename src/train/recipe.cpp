// recipe.cpp: the recipe schema table and everything it drives (see recipe.h).
#include "src/train/recipe.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "src/model/config.h"

namespace frugal {

namespace {

enum class KType { Bool, Int, UInt, Float, String, List };

const char* type_name(KType t) {
  switch (t) {
    case KType::Bool: return "bool";
    case KType::Int: return "int";
    case KType::UInt: return "int >= 0";
    case KType::Float: return "float";
    case KType::String: return "string";
    case KType::List: return "string list";
  }
  return "?";
}

// A parsed value of one key (only the member of the key's type is meaningful).
struct Value {
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<std::string> l;
};

struct KeyDef {
  std::string section, key;
  KType type;
  std::string help;
  std::vector<std::string> aliases;  // other spellings (HF names), only for suggestions
  std::function<void(Recipe&, const Value&)> set;
  std::function<Value(const Recipe&)> get;
  std::string full() const { return section + "." + key; }
};

Value vb(bool b) { Value v; v.b = b; return v; }
Value vi(int64_t i) { Value v; v.i = i; return v; }
Value vf(double f) { Value v; v.f = f; return v; }
Value vs(const std::string& s) { Value v; v.s = s; return v; }
Value vl(const std::vector<std::string>& l) { Value v; v.l = l; return v; }

#define K_BOOL(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::Bool, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = v.b; }, [](const Recipe& r) { return vb(r.field); }}
#define K_INT(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::Int, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = (int)v.i; }, [](const Recipe& r) { return vi(r.field); }}
#define K_UINT(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::UInt, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = (uint64_t)v.i; }, [](const Recipe& r) { return vi((int64_t)r.field); }}
#define K_FLOAT(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::Float, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = (float)v.f; }, [](const Recipe& r) { return vf(r.field); }}
#define K_STR(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::String, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = v.s; }, [](const Recipe& r) { return vs(r.field); }}
#define K_LIST(sec, k, field, help, ...) \
  KeyDef{sec, k, KType::List, help, {__VA_ARGS__}, [](Recipe& r, const Value& v) { r.field = v.l; }, [](const Recipe& r) { return vl(r.field); }}

// THE schema: section order = dump order. Defaults come from a default-constructed Recipe.
const std::vector<KeyDef>& schema() {
  static const std::vector<KeyDef> s = {
      K_STR("model", "path", model_path, "Hugging Face model dir (config.json + safetensors); created by `frugal init` from model.preset when it has no config.json", "model_name_or_path", "dir"),
      K_STR("model", "preset", model_preset, "config preset used to create model.path when absent: tiny | small | llama3-8b-2layers | llama3-70b-2layers | llama3.1-8b | llama3.1-70b (\"\" = none)"),
      K_UINT("model", "init_seed", model_init_seed, "seed of the random init of a preset model"),
      K_STR("quant", "type", quant_type, "storage of the frozen base linears: nf4 (QLoRA) | none (bf16)", "quant_type", "bnb_4bit_quant_type"),
      K_INT("quant", "blocksize", quant_blocksize, "NF4 block size (power of two, 32..4096)", "block_size"),
      K_BOOL("quant", "double_quant", quant_double, "quantize the NF4 absmax values again (8-bit, blocks of 256)", "double", "bnb_4bit_use_double_quant"),
      K_INT("lora", "rank", lora.rank, "LoRA rank r", "r"),
      K_FLOAT("lora", "alpha", lora.alpha, "LoRA alpha: scale = alpha / rank (alpha / sqrt(rank) with rslora)", "lora_alpha"),
      K_FLOAT("lora", "dropout", lora.dropout, "dropout on the LoRA input, in [0, 1)", "lora_dropout"),
      K_BOOL("lora", "rslora", lora.rslora, "rank-stabilized scale alpha / sqrt(rank)", "use_rslora"),
      K_LIST("lora", "target_modules", lora.target_modules, "linears that get an adapter: any of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or \"all-linear\"", "targets", "modules"),
      K_STR("optim", "name", optim_name, "optimizer: adamw (torch.optim.AdamW semantics, fp32 moments) | galore_adamw (galore_torch GaLoreAdamW: AdamW on low-rank projections of the [galore] targets)", "optimizer", "optim"),
      K_FLOAT("optim", "lr", lr, "peak learning rate", "learning_rate"),
      K_FLOAT("optim", "beta1", adamw.beta1, "AdamW beta1", "adam_beta1"),
      K_FLOAT("optim", "beta2", adamw.beta2, "AdamW beta2", "adam_beta2"),
      K_FLOAT("optim", "eps", adamw.eps, "AdamW epsilon", "adam_epsilon", "epsilon"),
      K_FLOAT("optim", "weight_decay", adamw.weight_decay, "decoupled weight decay (w *= 1 - lr*wd each step)", "wd"),
      K_FLOAT("optim", "grad_clip", grad_clip, "clip the global gradient norm to this value (0 = no clipping)", "max_grad_norm", "clip_grad_norm"),
      K_STR("optim", "lr_schedule", lr_schedule, "constant | linear | cosine, after linear warmup (transformers semantics)", "lr_scheduler_type", "schedule", "scheduler"),
      K_INT("optim", "warmup_steps", warmup_steps, "linear warmup steps (lr = 0 at step 0)", "warmup"),
      K_FLOAT("optim", "min_lr_ratio", min_lr_ratio, "floor of the decay as a fraction of lr (0 = decay to 0, as transformers)", "min_lr_rate"),
      K_INT("galore", "rank", galore.rank, "rank r of the gradient projection (effective: min(r, rows, cols))", "galore_rank"),
      K_INT("galore", "update_proj_gap", galore.update_proj_gap, "steps between projector refreshes (SVD of the gradient at each tensor's steps 0, T, 2T...)", "galore_update_proj_gap", "proj_gap"),
      K_FLOAT("galore", "scale", galore.scale, "scale of the back-projected update", "galore_scale"),
      K_STR("galore", "proj_type", galore.proj_type, "std | reverse_std | left | right | full (std: right for rows >= cols, else left)", "galore_proj_type"),
      K_LIST("galore", "targets", galore.targets, "tensors projected, by substring of their HF name as galore_torch's target_modules (\"attn\", \"mlp\", \"q_proj\", \"embed_tokens\"...), or \"lora\" for the LoRA factors; other tensors get plain AdamW", "target_modules", "galore_target_modules"),
      K_BOOL("galore", "per_layer", galore.per_layer, "step each decoder block as soon as its backward is done and free its gradients (train.mode = \"full\", one process, optim.grad_clip = 0); grad_accum sums projected gradients between refreshes"),
      K_STR("galore", "svd", galore.svd, "exact (LAPACK SVD, one process) | randomized (range finder with subspace iteration; also under mpirun)", "svd_method"),
      K_INT("galore", "oversample", galore.oversample, "randomized: extra sketch columns beyond r"),
      K_INT("galore", "power_iters", galore.power_iters, "randomized: subspace iterations"),
      K_STR("galore", "moments", galore.moments, "fp32 | int8 (8-bit blockwise dynamic codes, 256-element blocks, as bitsandbytes' 8-bit AdamW)", "galore_moments"),
      K_STR("data", "path", data_path, "HDF5 token dataset (format frugal-tokens-v1); empty = use data.synthetic", "dataset", "train_file"),
      K_STR("data", "synthetic", data_synthetic, "\"patterns\": a deterministic learnable dataset made on the fly when data.path is empty (\"\" = none)"),
      K_INT("data", "seq_len", seq_len, "tokens per row (>= 2)", "max_seq_length", "max_length", "seq_length"),
      K_BOOL("data", "pack", pack, "concatenate samples into full rows (false: one sample per row, padded)", "packing"),
      K_BOOL("data", "shuffle", shuffle, "shuffle the samples each epoch (from train.seed and the epoch)"),
      K_INT("train", "steps", steps, "optimizer steps", "max_steps", "num_steps"),
      K_INT("train", "micro_batch", micro_batch, "rows per forward/backward, summed over all ranks (under mpirun each rank takes its slice)", "batch_size", "per_device_train_batch_size"),
      K_INT("train", "grad_accum", grad_accum, "micro-batches accumulated per optimizer step", "gradient_accumulation_steps", "accum"),
      K_UINT("train", "seed", seed, "seed of LoRA init, data order and dropout (same seed + threads = same run bit for bit)"),
      K_STR("train", "mode", train_mode, "lora (adapters on a frozen base) | full (every decoder linear trained with an fp32 master; needs quant.type = \"none\")", "finetuning_type"),
      K_LIST("train", "trainable", train_trainable, "base tensors trained densely (fp32 masters) besides the adapters, by module name as PEFT modules_to_save: embed_tokens, norm (final), input_layernorm, post_attention_layernorm, lm_head (untied), or a linear (q_proj, ...)", "modules_to_save"),
      K_BOOL("train", "activation_checkpointing", activation_checkpointing, "recompute each block in backward instead of keeping its activations", "gradient_checkpointing"),
      K_INT("train", "log_every", log_every, "print a log line every N steps", "logging_steps"),
      K_STR("train", "output_dir", output_dir, "run directory: metrics.jsonl, checkpoints/, the effective recipe"),
      K_INT("checkpoint", "every", checkpoint_every, "write a checkpoint every N steps (0 = only at the end)", "save_steps", "checkpoint_every"),
      K_INT("checkpoint", "keep", checkpoint_keep, "periodic checkpoints kept, older ones deleted (0 = keep all)", "save_total_limit"),
      K_INT("fsdp", "prefetch", fsdp_prefetch, "units all-gathered ahead of the one computing (mpirun runs; 0 = no prefetch)", "prefetch_depth", "forward_prefetch"),
      K_BOOL("fsdp", "offload_params", fsdp_offload, "keep each rank's frozen shard in pinned host memory and copy units to the device just in time (GPU runs; no effect on the CPU backend)", "offload", "cpu_offload"),
      K_FLOAT("fsdp", "comm_timeout", fsdp_comm_timeout, "seconds a collective may take before the job is aborted (a dead or stuck rank)", "timeout"),
      K_STR("device", "backend", device_backend, "backend the ops run on: cpu (kernels/cpu) | cuda (not built yet: an error)", "device", "backend"),
  };
  return s;
}
#undef K_BOOL
#undef K_INT
#undef K_UINT
#undef K_FLOAT
#undef K_STR
#undef K_LIST

std::vector<std::string> section_names() {
  std::vector<std::string> out;
  for (const KeyDef& d : schema())
    if (out.empty() || out.back() != d.section) out.push_back(d.section);
  return out;
}

const KeyDef* find_key(const std::string& full) {
  for (const KeyDef& d : schema())
    if (d.full() == full) return &d;
  return nullptr;
}

// The nearest valid key to `full` ("section.key" or a bare key): the smallest edit distance to
// a key's full name, to section + one of its aliases, or (other section) to its bare key / alias
// plus 2. Ties: the first in schema order.
const KeyDef* nearest_key(const std::string& full) {
  const size_t dot = full.find('.');
  const std::string sec = dot == std::string::npos ? "" : full.substr(0, dot);
  const std::string key = dot == std::string::npos ? full : full.substr(dot + 1);
  const KeyDef* best = nullptr;
  int best_d = std::numeric_limits<int>::max();
  for (const KeyDef& d : schema()) {
    std::vector<std::string> spellings = d.aliases;
    spellings.insert(spellings.begin(), d.key);
    for (const std::string& k : spellings) {
      int dist = edit_distance(key, k) + (sec == d.section ? 0 : 2);
      if (dist < best_d) best_d = dist, best = &d;
    }
  }
  return best;
}

std::string nearest_section(const std::string& s) {
  std::string best;
  int best_d = std::numeric_limits<int>::max();
  for (const std::string& n : section_names()) {
    int d = edit_distance(s, n);
    if (d < best_d) best_d = d, best = n;
  }
  return best;
}

std::string keys_of(const std::string& section) {
  std::string out;
  for (const KeyDef& d : schema())
    if (d.section == section) out += (out.empty() ? "" : ", ") + d.key;
  return out;
}

[[noreturn]] void unknown_key(const std::string& where, const std::string& full) {
  const KeyDef* n = nearest_key(full);
  const size_t dot = full.find('.');
  const std::string sec = dot == std::string::npos ? "" : full.substr(0, dot);
  std::string valid = n ? keys_of(sec.empty() ? n->section : sec) : "";
  fail(where, ": unknown key '", full, "'", n ? " — did you mean '" + n->full() + "'?" : "",
       valid.empty() ? "" : " (valid keys of [" + (sec.empty() ? n->section : sec) + "]: " + valid + ")");
}

// ---- values from TOML nodes ----
Value from_node(const KeyDef& d, const toml::node& node, const std::string& where) {
  auto bad = [&](const char* what) -> Value {
    fail(where, ": ", d.full(), ": expected ", what, ", got ", node.type());
  };
  Value v;
  switch (d.type) {
    case KType::Bool:
      if (!node.is_boolean()) return bad("a bool (true/false)");
      v.b = node.as_boolean()->get();
      return v;
    case KType::Int:
    case KType::UInt: {
      if (!node.is_integer()) return bad(d.type == KType::Int ? "an integer" : "a non-negative integer");
      v.i = node.as_integer()->get();
      if (d.type == KType::Int && (v.i < std::numeric_limits<int>::min() || v.i > std::numeric_limits<int>::max()))
        fail(where, ": ", d.full(), " = ", v.i, ": out of the 32-bit integer range");
      if (d.type == KType::UInt && v.i < 0) fail(where, ": ", d.full(), " = ", v.i, ": must be >= 0");
      return v;
    }
    case KType::Float:
      if (node.is_floating_point()) v.f = node.as_floating_point()->get();
      else if (node.is_integer()) v.f = (double)node.as_integer()->get();
      else return bad("a number");
      if (!std::isfinite((float)v.f)) fail(where, ": ", d.full(), " = ", v.f, ": must be a finite fp32 number");
      return v;
    case KType::String:
      if (!node.is_string()) return bad("a string");
      v.s = node.as_string()->get();
      return v;
    case KType::List:
      if (node.is_string()) {  // target_modules = "all-linear" (as PEFT accepts)
        v.l.push_back(node.as_string()->get());
        return v;
      }
      if (!node.is_array()) return bad("an array of strings");
      for (const toml::node& e : *node.as_array()) {
        if (!e.is_string()) fail(where, ": ", d.full(), ": expected an array of strings, found an element of type ", e.type());
        v.l.push_back(e.as_string()->get());
      }
      return v;
  }
  return v;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::string unquote(const std::string& s) {
  if (s.size() >= 2 && ((s.front() == '"' && s.back() == '"') || (s.front() == '\'' && s.back() == '\'')))
    return s.substr(1, s.size() - 2);
  return s;
}

// ---- values from --set text, parsed by the key's type ----
Value from_text(const KeyDef& d, const std::string& text, const std::string& where) {
  const std::string t = trim(text);
  Value v;
  auto bad = [&](const char* what) -> Value { fail(where, ": ", d.full(), ": expected ", what, ", got '", t, "'"); };
  switch (d.type) {
    case KType::Bool: {
      std::string l = t;
      std::transform(l.begin(), l.end(), l.begin(), ::tolower);
      if (l == "true" || l == "1") v.b = true;
      else if (l == "false" || l == "0") v.b = false;
      else return bad("a bool (true/false)");
      return v;
    }
    case KType::Int:
    case KType::UInt: {
      int64_t x = 0;
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), x);
      if (t.empty() || ec != std::errc() || p != t.data() + t.size())
        return bad(d.type == KType::Int ? "an integer" : "a non-negative integer");
      toml::value<int64_t> node(x);
      return from_node(d, node, where);
    }
    case KType::Float: {
      char* end = nullptr;
      double x = std::strtod(t.c_str(), &end);
      if (t.empty() || end != t.c_str() + t.size()) return bad("a number");
      toml::value<double> node(x);
      return from_node(d, node, where);
    }
    case KType::String:
      v.s = unquote(t);
      return v;
    case KType::List: {
      if (!t.empty() && t.front() == '[') {  // a TOML array
        toml::table tbl;
        try {
          tbl = toml::parse("v = " + t);
        } catch (const toml::parse_error& e) {
          fail(where, ": ", d.full(), ": not a TOML array of strings: '", t, "' (", e.description(), ")");
        }
        return from_node(d, *tbl.get("v"), where);
      }
      std::stringstream ss(t);  // comma-separated: q_proj,v_proj
      std::string item;
      while (std::getline(ss, item, ',')) {
        item = unquote(trim(item));
        if (!item.empty()) v.l.push_back(item);
      }
      return v;
    }
  }
  return v;
}

// ---- TOML text ----
std::string toml_string(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      case '\r': o += "\\r"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += (char)c;
        }
    }
  }
  return o + "\"";
}

// Shortest decimal that reads back as the same fp32 value, always a TOML float.
std::string toml_float(float x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  for (int p = 1; p <= 9; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, (double)x);
    if ((float)std::strtod(buf, nullptr) == x) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string value_text(const KeyDef& d, const Value& v) {
  switch (d.type) {
    case KType::Bool: return v.b ? "true" : "false";
    case KType::Int:
    case KType::UInt: return std::to_string(v.i);
    case KType::Float: return toml_float((float)v.f);
    case KType::String: return toml_string(v.s);
    case KType::List: {
      std::string o = "[";
      for (size_t i = 0; i < v.l.size(); ++i) o += (i ? ", " : "") + toml_string(v.l[i]);
      return o + "]";
    }
  }
  return "";
}

void apply_override(Recipe& r, const std::string& ov) {
  const std::string where = "--set " + ov;
  const size_t eq = ov.find('=');
  if (eq == std::string::npos) fail(where, ": expected section.key=value");
  const std::string full = trim(ov.substr(0, eq));
  const KeyDef* d = find_key(full);
  if (!d) unknown_key(where, full);
  d->set(r, from_text(*d, ov.substr(eq + 1), where));
}

}  // namespace

int edit_distance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = (int)j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = (int)i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

Recipe Recipe::from_string(const std::string& text, const std::string& where,
                           const std::vector<std::string>& overrides) {
  toml::table tbl;
  try {
    tbl = toml::parse(text, where);
  } catch (const toml::parse_error& e) {
    fail(where, ":", e.source().begin.line, ":", e.source().begin.column, ": TOML syntax error: ", e.description());
  }
  Recipe r;
  for (auto&& [sk, snode] : tbl) {
    const std::string sec(sk.str());
    const std::vector<std::string> secs = section_names();
    if (std::find(secs.begin(), secs.end(), sec) == secs.end()) {
      if (!snode.is_table()) unknown_key(where, sec);  // a bare key outside any section
      fail(where, ": unknown section [", sec, "] — did you mean [", nearest_section(sec), "]?");
    }
    if (!snode.is_table()) fail(where, ": '", sec, "' must be a section [", sec, "], found a value of type ", snode.type());
    for (auto&& [kk, knode] : *snode.as_table()) {
      const std::string full = sec + "." + std::string(kk.str());
      const KeyDef* d = find_key(full);
      if (!d) unknown_key(where, full);
      d->set(r, from_node(*d, knode, where));
    }
  }
  for (const std::string& ov : overrides) apply_override(r, ov);
  // Canonical targets: "all-linear" expanded, duplicates removed, canonical order.
  try {
    r.lora.target_modules = LoraConfig::expand_targets(r.lora.target_modules);
  } catch (const Error& e) {
    fail(where, ": lora.target_modules: ", e.what());
  }
  r.validate(where);
  r.path = where;
  return r;
}

Recipe Recipe::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open recipe ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return from_string(ss.str(), path, overrides);
}

void Recipe::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& key, const auto& value, const std::string& what) {
    if (!ok) fail(where, ": ", key, " = ", value, ": ", what);
  };
  auto one_of = [&](const std::string& key, const std::string& v, std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
      if (v == a) return;
      list += (list.empty() ? "" : ", ") + std::string(*a ? a : "\"\"");
    }
    fail(where, ": ", key, " = \"", v, "\": expected one of ", list);
  };
  // [model]
  if (model_path.empty() && model_preset.empty()) fail(where, ": model.path or model.preset must be set");
  if (!model_preset.empty()) {
    std::vector<std::string> names = config_preset_names();
    if (std::find(names.begin(), names.end(), model_preset) == names.end()) {
      std::string list;
      for (auto& n : names) list += (list.empty() ? "" : ", ") + n;
      fail(where, ": model.preset = \"", model_preset, "\": unknown preset (", list, ")");
    }
  }
  // [quant]
  one_of("quant.type", quant_type, {"nf4", "none"});
  need(quant_blocksize >= 32 && quant_blocksize <= 4096 && (quant_blocksize & (quant_blocksize - 1)) == 0,
       "quant.blocksize", quant_blocksize, "must be a power of two in [32, 4096]");
  // [lora]
  need(lora.rank >= 1, "lora.rank", lora.rank, "must be >= 1");
  need(std::isfinite(lora.alpha) && lora.alpha > 0.f, "lora.alpha", lora.alpha, "must be > 0");
  need(lora.dropout >= 0.f && lora.dropout < 1.f, "lora.dropout", lora.dropout, "must be in [0, 1)");
  need(!lora.target_modules.empty(), "lora.target_modules", "[]", "must name at least one module");
  try {
    LoraConfig::expand_targets(lora.target_modules);
  } catch (const Error& e) {
    fail(where, ": lora.target_modules: ", e.what());
  }
  // [optim]
  one_of("optim.name", optim_name, {"adamw", "galore_adamw"});
  if (optim_name == "galore_adamw") galore.validate(where);
  if (galore.per_layer) {
    // the step of block l happens before block l-1's backward: no optimizer may wait for all grads
    if (optim_name != "galore_adamw") fail(where, ": galore.per_layer needs optim.name = \"galore_adamw\" (got \"", optim_name, "\")");
    if (train_mode != "full") fail(where, ": galore.per_layer needs train.mode = \"full\" (got \"", train_mode, "\")");
    if (grad_clip > 0.f)
      fail(where, ": galore.per_layer steps each block before the next block's gradients exist, so the global norm "
           "that optim.grad_clip = ", grad_clip, " clips by is never known; set optim.grad_clip = 0");
  }
  need(std::isfinite(lr) && lr > 0.f, "optim.lr", lr, "must be > 0");
  need(adamw.beta1 >= 0.f && adamw.beta1 < 1.f, "optim.beta1", adamw.beta1, "must be in [0, 1)");
  need(adamw.beta2 >= 0.f && adamw.beta2 < 1.f, "optim.beta2", adamw.beta2, "must be in [0, 1)");
  need(adamw.eps >= 0.f, "optim.eps", adamw.eps, "must be >= 0");
  need(adamw.weight_decay >= 0.f, "optim.weight_decay", adamw.weight_decay, "must be >= 0");
  need(grad_clip >= 0.f, "optim.grad_clip", grad_clip, "must be >= 0 (0 = no clipping)");
  one_of("optim.lr_schedule", lr_schedule, {"constant", "linear", "cosine"});
  need(warmup_steps >= 0, "optim.warmup_steps", warmup_steps, "must be >= 0");
  need(min_lr_ratio >= 0.f && min_lr_ratio <= 1.f, "optim.min_lr_ratio", min_lr_ratio, "must be in [0, 1]");
  // [data]
  one_of("data.synthetic", data_synthetic, {"", "patterns"});
  one_of("device.backend", device_backend, {"cpu", "cuda"});
  if (data_path.empty() && data_synthetic.empty()) fail(where, ": data.path or data.synthetic must be set");
  need(seq_len >= 2, "data.seq_len", seq_len, "must be >= 2");
  // [train]
  need(steps >= 1, "train.steps", steps, "must be >= 1");
  need(micro_batch >= 1, "train.micro_batch", micro_batch, "must be >= 1");
  need(grad_accum >= 1, "train.grad_accum", grad_accum, "must be >= 1");
  one_of("train.mode", train_mode, {"lora", "full"});
  if (train_mode == "full" && quant_type != "none")
    fail(where, ": train.mode = \"full\" trains the decoder linears with fp32 masters and needs an unquantized base "
         "(quant.type = \"none\"), got quant.type = \"", quant_type, "\"");
  need(log_every >= 1, "train.log_every", log_every, "must be >= 1");
  need(!output_dir.empty(), "train.output_dir", "\"\"", "must not be empty");
  // [checkpoint]
  need(checkpoint_every >= 0, "checkpoint.every", checkpoint_every, "must be >= 0 (0 = only at the end)");
  need(checkpoint_keep >= 0, "checkpoint.keep", checkpoint_keep, "must be >= 0 (0 = keep all)");
  // [fsdp]
  need(fsdp_prefetch >= 0 && fsdp_prefetch <= 8, "fsdp.prefetch", fsdp_prefetch, "must be in [0, 8]");
  need(std::isfinite(fsdp_comm_timeout) && fsdp_comm_timeout > 0.f, "fsdp.comm_timeout", fsdp_comm_timeout, "must be > 0 seconds");
}

std::string Recipe::to_toml() const {
  std::ostringstream o;
  o << "# frugal recipe: effective values" << (path.empty() ? "" : " (from " + path + ")") << "\n";
  std::string sec;
  for (const KeyDef& d : schema()) {
    if (d.section != sec) {
      sec = d.section;
      o << "\n[" << sec << "]\n";
    }
    o << "# " << d.help << "\n" << d.key << " = " << value_text(d, d.get(*this)) << "\n";
  }
  return o.str();
}

bool Recipe::operator==(const Recipe& o) const {
  for (const KeyDef& d : schema())
    if (value_text(d, d.get(*this)) != value_text(d, d.get(o))) return false;
  return true;
}

LRSchedule Recipe::schedule() const {
  LRSchedule s;
  s.type = lr_schedule;
  s.lr = lr;
  s.warmup_steps = warmup_steps;
  s.total_steps = steps;
  s.min_lr_ratio = min_lr_ratio;
  return s;
}

ModelOptions Recipe::model_options() const {
  ModelOptions m;
  m.quant = parse_quant_mode(quant_type);
  m.nf4_blocksize = quant_blocksize;
  m.nf4_double_quant = quant_double;
  m.checkpoint = activation_checkpointing;
  m.backend = device_backend;
  return m;
}

std::vector<RecipeKeyInfo> recipe_schema() {
  const Recipe def;
  std::vector<RecipeKeyInfo> out;
  for (const KeyDef& d : schema()) out.push_back({d.full(), type_name(d.type), value_text(d, d.get(def)), d.help});
  return out;
}

std::string recipe_help() {
  std::ostringstream o;
  o << "Recipe keys (TOML sections; override any with --set section.key=value):\n";
  for (const RecipeKeyInfo& k : recipe_schema())
    o << "  " << k.name << " (" << k.type << ", default " << k.default_str << ")\n      " << k.help << "\n";
  return o.str();
}

}  // namespace frugal
