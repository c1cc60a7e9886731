// checkpoint_attrs.cpp: root attributes, parameter order and tensor validation of "frugal-ckpt-v1"
// files, shared by src/model/checkpoint.cpp and sharding/shard_checkpoint.cpp (see checkpoint_attrs.h).
#include "src/model/checkpoint_attrs.h"

#include <set>
#include <toml++/toml.h>

namespace frugal {

namespace {

std::string join(const std::vector<std::string>& v, char sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? std::string(1, sep) : "") + v[i];
  return s;
}
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t a = 0;
  for (;;) {
    size_t b = s.find(sep, a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

// The [lora] section of the recipe text, if any.
bool lora_from_recipe(const std::string& text, const std::string& where, LoraConfig* out) {
  if (text.empty()) return false;
  toml::table tbl;
  try {
    tbl = toml::parse(text, std::string_view(where));
  } catch (const toml::parse_error& e) {
    fail(where, ": attribute 'recipe' is not valid TOML: ", e.description());
  }
  const toml::table* lt = tbl["lora"].as_table();
  if (!lt) return false;
  LoraConfig c;
  if (auto v = (*lt)["rank"].value<int64_t>()) c.rank = int(*v);
  if (auto v = (*lt)["alpha"].value<double>()) c.alpha = float(*v);
  if (auto v = (*lt)["dropout"].value<double>()) c.dropout = float(*v);
  if (auto v = (*lt)["rslora"].value<bool>()) c.rslora = *v;
  if (const toml::node* tm = lt->get("target_modules")) {
    std::vector<std::string> names;
    if (auto s = tm->value<std::string>()) names.push_back(*s);
    else if (const toml::array* a = tm->as_array())
      for (const toml::node& e : *a)
        if (auto s = e.value<std::string>()) names.push_back(*s);
    c.target_modules = LoraConfig::expand_targets(names);
  }
  *out = c;
  return true;
}

}  // namespace

void check_checkpoint_param_name(const std::string& name, const std::string& where) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    fail(where, ": parameter name '", name, "' cannot be an HDF5 dataset name");
}

void check_optim_parts(const std::vector<OptimStatePart>& parts, const std::string& where, bool whole) {
  std::set<std::string> seen;
  for (const OptimStatePart& q : parts) {
    check_checkpoint_param_name(q.state, where);
    check_checkpoint_param_name(q.tensor, where);
    const std::string ds = "/optim/" + q.state + "/" + q.tensor;
    const size_t n = size_t(shape_numel(q.shape));
    if (whole && (q.begin != 0 || q.end != n || q.write_begin != 0 || q.write_end != n || (n && !q.data)))
      fail(where, ": optimizer state '", ds, "' ", shape_str(q.shape), ": a single-process checkpoint needs the whole tensor, this process holds [",
           q.begin, ", ", q.end, ") and writes [", q.write_begin, ", ", q.write_end, ")");
    if (!(q.begin <= q.write_begin && q.write_begin <= q.write_end && q.write_end <= q.end && q.end <= n) ||
        (q.begin < q.end && !q.data))
      fail(where, ": optimizer state '", ds, "' ", shape_str(q.shape), ": bad part: holds [", q.begin, ", ", q.end,
           "), writes [", q.write_begin, ", ", q.write_end, ")");
    if (!seen.insert(ds).second) fail(where, ": optimizer state '", ds, "' listed twice");
  }
}

bool checkpoint_lora(const TrainState& st, const std::string& where, LoraConfig* out) {
  if (st.has_lora) {
    *out = st.lora;
    return true;
  }
  return lora_from_recipe(st.recipe_toml, where, out);
}

void write_checkpoint_attrs(h5::H5File& f, const TrainState& st, const std::vector<std::string>& order,
                            const LoraConfig* lora) {
  f.set_attr("format", kCheckpointFormat);
  f.set_attr("step", int64_t(st.step));
  f.set_attr("adam_t", int64_t(st.adam_t));
  f.set_attr("seed", uint64_t(st.seed));
  f.set_attr("cursor_epoch", int64_t(st.cursor.epoch));
  f.set_attr("cursor_index", int64_t(st.cursor.index));
  f.set_attr("cursor_offset", int64_t(st.cursor.offset));
  f.set_attr("tokens_seen", double(st.tokens_seen));
  f.set_attr("recipe", st.recipe_toml);
  f.set_attr("base_model", st.base_model);
  f.set_attr("param_order", join(order, '\n'));
  if (lora) {
    f.set_attr("lora_rank", int64_t(lora->rank));
    f.set_attr("lora_alpha", double(lora->alpha));
    f.set_attr("lora_dropout", double(lora->dropout));
    f.set_attr("lora_rslora", int64_t(lora->rslora ? 1 : 0));
    f.set_attr("lora_target_modules", join(lora->target_modules, ','));
  }
}

TrainState read_checkpoint_state(const h5::H5File& f) {
  if (!f.has_attr("format")) fail(f.path(), ": not a frugal checkpoint (no 'format' attribute)");
  std::string fmt = f.attr_str("format");
  if (fmt != kCheckpointFormat)
    fail(f.path(), ": not a frugal checkpoint: attribute 'format' = \"", fmt, "\", expected \"", kCheckpointFormat, "\"");
  TrainState st;
  st.step = f.attr_i64("step");
  st.adam_t = f.attr_i64("adam_t");
  st.seed = f.attr_u64("seed");
  st.cursor.epoch = f.attr_i64("cursor_epoch");
  st.cursor.index = f.attr_i64("cursor_index");
  st.cursor.offset = f.attr_i64("cursor_offset");
  st.tokens_seen = f.attr_f64("tokens_seen");
  st.recipe_toml = f.attr_str("recipe");
  st.base_model = f.attr_str("base_model");
  if (f.has_attr("lora_rank")) {
    st.has_lora = true;
    st.lora.rank = int(f.attr_i64("lora_rank"));
    st.lora.alpha = float(f.attr_f64("lora_alpha"));
    st.lora.dropout = float(f.attr_f64("lora_dropout"));
    st.lora.rslora = f.attr_i64("lora_rslora") != 0;
    st.lora.target_modules = split(f.attr_str("lora_target_modules"), ',');
  }
  if (st.step < 0 || st.adam_t < 0) fail(f.path(), ": negative 'step' or 'adam_t' attribute");
  return st;
}

std::vector<std::string> checkpoint_param_names(const h5::H5File& f) {
  std::vector<std::string> listed = f.exists("/params") ? f.list("/params") : std::vector<std::string>{};
  if (!f.has_attr("param_order")) return listed;
  std::vector<std::string> order = split(f.attr_str("param_order"), '\n');
  std::set<std::string> a(order.begin(), order.end()), b(listed.begin(), listed.end());
  if (a != b || a.size() != order.size())
    fail(f.path(), ": attribute 'param_order' does not match the tensors under '/params'");
  return order;
}

void check_checkpoint_names(const std::string& path, const std::vector<std::string>& in_file,
                            const std::vector<std::string>& wanted) {
  const std::set<std::string> file_set(in_file.begin(), in_file.end()), wanted_set(wanted.begin(), wanted.end());
  for (const std::string& n : wanted)
    if (!file_set.count(n)) fail(path, ": missing tensor '", n, "' (the model has it, the checkpoint does not)");
  for (const std::string& n : in_file)
    if (!wanted_set.count(n))
      fail(path, ": unexpected tensor '", n, "' (in the checkpoint, not in the model: different LoRA config?)");
}

void check_checkpoint_tensor(const h5::H5File& f, const std::string& path, const std::string& ds,
                             const std::vector<int64_t>& shape) {
  h5::DatasetInfo di = f.info(ds);
  if (di.kind != h5::Kind::F32) fail(path, ": tensor '", ds, "': wrong dtype ", di.type_desc, ", expected float32");
  if (di.shape != shape)
    fail(path, ": tensor '", ds, "': shape ", shape_str(di.shape), " in the checkpoint, ", shape_str(shape),
         " in the model");
}

}  // namespace frugal
