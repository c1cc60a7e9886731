// checkpoint.cpp: HDF5 training checkpoints (see checkpoint.h for the layout).
#include "src/checkpoint.h"

#include "src/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <toml++/toml.h>

#include "src/h5.h"

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

void check_param(const ParamRef& p, const std::string& where) {
  if (p.name.empty() || p.name.find('/') != std::string::npos || p.name == "." || p.name == "..")
    fail(where, ": parameter name '", p.name, "' cannot be an HDF5 dataset name");
  int64_t n = 1;
  for (int64_t d : p.shape) n *= d;
  if (size_t(n) != p.numel)
    fail(where, ": parameter '", p.name, "': numel ", p.numel, " does not match its shape");
}

// The [lora] section of the recipe text, if any (the recipe stores it expanded and validated).
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

// Root attributes -> TrainState (format already checked).
TrainState read_state(const h5::H5File& f) {
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

h5::H5File open_checkpoint(const std::string& path) {
  h5::H5File f = h5::H5File::open(path);
  if (!f.has_attr("format")) fail(path, ": not a frugal checkpoint (no 'format' attribute)");
  std::string fmt = f.attr_str("format");
  if (fmt != kCheckpointFormat)
    fail(path, ": not a frugal checkpoint: attribute 'format' = \"", fmt, "\", expected \"", kCheckpointFormat, "\"");
  return f;
}

// The saved list order, validated against the /params group.
std::vector<std::string> param_names(const h5::H5File& f) {
  std::vector<std::string> listed = f.exists("/params") ? f.list("/params") : std::vector<std::string>{};
  if (!f.has_attr("param_order")) return listed;
  std::vector<std::string> order = split(f.attr_str("param_order"), '\n');
  std::set<std::string> a(order.begin(), order.end()), b(listed.begin(), listed.end());
  if (a != b || a.size() != order.size())
    fail(f.path(), ": attribute 'param_order' does not match the tensors under '/params'");
  return order;
}

}  // namespace

void write_checkpoint_file(const std::string& file, const TrainState& st, const std::vector<ParamRef>& params, AdamW& opt) {
  std::vector<std::string> order;
  std::set<std::string> seen;
  for (const ParamRef& p : params) {
    check_param(p, file);
    if (!seen.insert(p.name).second) fail(file, ": duplicate parameter name '", p.name, "'");
    order.push_back(p.name);
  }
  // LoRA settings: given explicitly in st, else the recipe's [lora] section.
  LoraConfig lora = st.lora;
  bool has_lora = st.has_lora || lora_from_recipe(st.recipe_toml, file, &lora);

  h5::H5File f = h5::H5File::create(file);
  avector<float> zeros;
  for (const ParamRef& p : params) {
    f.write("/params/" + p.name, p.w, p.shape);
    // Moments: a param the optimizer has not stepped yet has zero moments (AdamW's initial state).
    for (int which = 0; which < 2; ++which) {
      const avector<float>* mom = nullptr;
      if (opt.has_state(p.name)) mom = which == 0 ? &opt.m(p.name) : &opt.v(p.name);
      if (mom && !mom->empty() && mom->size() != p.numel)
        fail(file, ": optimizer state of '", p.name, "' has ", mom->size(), " elements, the parameter ", p.numel);
      if (!mom || mom->empty()) {
        zeros.assign(p.numel, 0.f);
        mom = &zeros;
      }
      f.write(std::string(which == 0 ? "/optim/m/" : "/optim/v/") + p.name, mom->data(), p.shape);
    }
  }
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
  if (has_lora) {
    f.set_attr("lora_rank", int64_t(lora.rank));
    f.set_attr("lora_alpha", double(lora.alpha));
    f.set_attr("lora_dropout", double(lora.dropout));
    f.set_attr("lora_rslora", int64_t(lora.rslora ? 1 : 0));
    f.set_attr("lora_target_modules", join(lora.target_modules, ','));
  }
  f.close();
}

void save_checkpoint(const std::string& path, const TrainState& st, const std::vector<ParamRef>& params, AdamW& opt) {
  namespace fs = std::filesystem;
  const std::string tmp = path + ".tmp";
  fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  try {
    write_checkpoint_file(tmp, st, params, opt);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  commit_temp_file(tmp, path);  // fsync, rename, fsync the directory: durable once it returns
}

TrainState load_checkpoint(const std::string& path, const std::vector<ParamRef>& params, AdamW* opt) {
  h5::H5File f = open_checkpoint(path);
  TrainState st = read_state(f);
  // Validate names, shapes and dtypes of everything before overwriting anything.
  std::vector<std::string> names = param_names(f);
  std::set<std::string> in_file(names.begin(), names.end()), wanted;
  for (const ParamRef& p : params) {
    check_param(p, path);
    wanted.insert(p.name);
    if (!in_file.count(p.name))
      fail(path, ": missing tensor '", p.name, "' (the model has it, the checkpoint does not)");
  }
  for (const std::string& n : names)
    if (!wanted.count(n))
      fail(path, ": unexpected tensor '", n, "' (in the checkpoint, not in the model: different LoRA config?)");
  auto check_tensor = [&](const std::string& ds, const ParamRef& p) {
    h5::DatasetInfo di = f.info(ds);
    if (di.kind != h5::Kind::F32)
      fail(path, ": tensor '", ds, "': wrong dtype ", di.type_desc, ", expected float32");
    if (di.shape != p.shape) {
      std::string a, b;
      for (int64_t d : di.shape) a += str(a.empty() ? "" : ", ", d);
      for (int64_t d : p.shape) b += str(b.empty() ? "" : ", ", d);
      fail(path, ": tensor '", ds, "': shape [", a, "] in the checkpoint, [", b, "] in the model");
    }
  };
  for (const ParamRef& p : params) {
    check_tensor("/params/" + p.name, p);
    if (opt) {
      check_tensor("/optim/m/" + p.name, p);
      check_tensor("/optim/v/" + p.name, p);
    }
  }
  for (const ParamRef& p : params) {
    f.read_into("/params/" + p.name, p.w, p.shape);
    if (opt) {
      avector<float>& m = opt->m(p.name);
      avector<float>& v = opt->v(p.name);
      m.resize(p.numel);
      v.resize(p.numel);
      f.read_into("/optim/m/" + p.name, m.data(), p.shape);
      f.read_into("/optim/v/" + p.name, v.data(), p.shape);
    }
  }
  if (opt) opt->set_t(st.adam_t);
  return st;
}

CheckpointContents read_checkpoint_params(const std::string& path) {
  h5::H5File f = open_checkpoint(path);
  CheckpointContents c;
  c.state = read_state(f);
  for (const std::string& n : param_names(f)) {
    std::vector<int64_t> shape;
    std::vector<float> v = f.read<float>("/params/" + n, &shape);
    c.names.push_back(n);
    c.shapes.push_back(shape);
    c.data.emplace_back(v.begin(), v.end());
  }
  return c;
}

}  // namespace frugal
