// checkpoint.cpp: HDF5 training checkpoints (see checkpoint.h for the layout).
#include "src/model/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <set>

#include "src/io/atomic_file.h"
#include "src/model/checkpoint_attrs.h"
#include "src/io/h5.h"

namespace frugal {

namespace {

void check_param(const ParamRef& p, const std::string& where) {
  check_checkpoint_param_name(p.name, where);
  if (size_t(shape_numel(p.shape)) != p.numel)
    fail(where, ": parameter '", p.name, "': numel ", p.numel, " does not match its shape");
}

}  // namespace

void write_checkpoint_file(const std::string& file, const TrainState& st, const std::vector<ParamRef>& params, Optimizer& opt) {
  std::vector<std::string> order;
  std::set<std::string> seen;
  for (const ParamRef& p : params) {
    check_param(p, file);
    if (!seen.insert(p.name).second) fail(file, ": duplicate parameter name '", p.name, "'");
    order.push_back(p.name);
  }
  LoraConfig lora;
  const bool has_lora = checkpoint_lora(st, file, &lora);

  // Optimizer state only through state_parts (a state tensor may have any shape: GaLore's
  // projected moments); one process holds and writes each stored tensor whole.
  const std::vector<OptimStatePart> parts = opt.state_parts(params);
  check_optim_parts(parts, file, /*whole=*/true);
  h5::H5File f = h5::H5File::create(file);
  for (const ParamRef& p : params) f.write("/params/" + p.name, p.w, p.shape);
  for (const OptimStatePart& q : parts) f.write("/optim/" + q.state + "/" + q.tensor, q.data, q.shape);
  write_checkpoint_attrs(f, st, order, has_lora ? &lora : nullptr);
  f.close();
  opt.end_state_io(/*loaded=*/false);  // the parts are written: staging copies can go
}

void save_checkpoint(const std::string& path, const TrainState& st, const std::vector<ParamRef>& params, Optimizer& opt) {
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

TrainState load_checkpoint(const std::string& path, const std::vector<ParamRef>& params, Optimizer* opt) {
  h5::H5File f = h5::H5File::open(path);
  TrainState st = read_checkpoint_state(f);
  // Validate names, shapes and dtypes of everything before overwriting anything.
  std::vector<std::string> wanted;
  for (const ParamRef& p : params) {
    check_param(p, path);
    wanted.push_back(p.name);
  }
  check_checkpoint_names(path, checkpoint_param_names(f), wanted);
  // state_parts only makes empty (= zero) state real, so asking for it changes no values.
  std::vector<OptimStatePart> parts;
  if (opt) {
    parts = opt->state_parts(params);
    check_optim_parts(parts, path, /*whole=*/true);
  }
  for (const ParamRef& p : params) check_checkpoint_tensor(f, path, "/params/" + p.name, p.shape);
  for (const OptimStatePart& q : parts) check_checkpoint_tensor(f, path, "/optim/" + q.state + "/" + q.tensor, q.shape);
  for (const ParamRef& p : params) f.read_into("/params/" + p.name, p.w, p.shape);
  for (const OptimStatePart& q : parts) f.read_into("/optim/" + q.state + "/" + q.tensor, q.data, q.shape);
  if (opt) opt->end_state_io(/*loaded=*/true);  // e.g. GaLore int8 requantizes what was read
  if (opt) opt->set_t(st.adam_t);
  return st;
}

CheckpointContents read_checkpoint_params(const std::string& path) {
  h5::H5File f = h5::H5File::open(path);
  CheckpointContents c;
  c.state = read_checkpoint_state(f);
  for (const std::string& n : checkpoint_param_names(f)) {
    std::vector<int64_t> shape;
    std::vector<float> v = f.read<float>("/params/" + n, &shape);
    c.names.push_back(n);
    c.shapes.push_back(shape);
    c.data.emplace_back(v.begin(), v.end());
  }
  return c;
}

}  // namespace frugal
