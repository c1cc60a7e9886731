// shard_checkpoint.cpp: sharded "frugal-ckpt-v1" checkpoints over parallel HDF5 (see the header).
//
// Sections: collective error agreement; checkpoint attributes (the same ones
// src/checkpoint.cpp writes and reads); hyperslab I/O of one rank's part of a tensor; save; load.
//
// Parallel HDF5 rules followed here: file create/open/close, dataset create/open and attribute
// writes are made by every rank in the same order with the same arguments; only the raw data
// transfers differ per rank. A rank whose raw transfer fails records the error and keeps making
// the collective calls (skipping its later transfers), so no rank is left waiting; the errors are
// agreed on after the collective close.
#include "sharding/shard_checkpoint.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <toml++/toml.h>

#include "sharding/mpi_check.h"
#include "src/atomic_file.h"
#include "src/h5.h"

namespace frugal {

namespace {

// ---- collective error agreement -------------------------------------------------

// The ranks taking part. comm == MPI_COMM_NULL: one process, serial HDF5 (MPI not initialized, or
// a communicator of one rank: the sec2 driver is simpler and faster than MPI-IO there).
struct Group {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  bool serial() const { return comm == MPI_COMM_NULL; }
};

Group make_group(MPI_Comm comm, const ModelLayout& L, const std::string& path) {
  int inited = 0, finalized = 0;
  MPI_CHECK(MPI_Initialized(&inited));
  MPI_CHECK(MPI_Finalized(&finalized));
  Group g;
  if (!inited || finalized) {
    if (L.world != 1)
      fail(path, ": sharded checkpoint for a layout of world ", L.world, " but MPI is not running");
    return g;
  }
  if (comm == MPI_COMM_NULL) fail(path, ": sharded checkpoint: communicator is MPI_COMM_NULL");
  MPI_CHECK(MPI_Comm_size(comm, &g.size));
  MPI_CHECK(MPI_Comm_rank(comm, &g.rank));
  if (g.size != L.world)
    fail(path, ": sharded checkpoint: the layout is for world ", L.world, ", the communicator has ", g.size, " ranks");
  if (g.size > 1) g.comm = comm;
  return g;
}

// Runs fn; returns "" or the message of the exception it threw.
std::string capture(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    std::string m = e.what();
    return m.empty() ? "unknown error" : m;
  }
  return "";
}

// Collective: every rank passes its own error ("" = none). Returns "" when no rank failed, else,
// on every rank, the message of the lowest failing rank with that rank named.
std::string agree(const Group& g, const std::string& err) {
  if (g.serial()) return err;
  int mine = err.empty() ? g.size : g.rank, first = g.size;
  MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, g.comm));
  if (first == g.size) return "";
  std::string msg = err;
  int len = int(msg.size());
  MPI_CHECK(MPI_Bcast(&len, 1, MPI_INT, first, g.comm));
  msg.resize(size_t(len));
  MPI_CHECK(MPI_Bcast(msg.data(), len, MPI_CHAR, first, g.comm));
  return str(msg, " [rank ", first, "/", g.size, "]");
}
void agree_or_throw(const Group& g, const std::string& err) {
  std::string m = agree(g, err);
  if (!m.empty()) throw Error(m);
}

// ---- checkpoint attributes (as src/checkpoint.cpp writes and reads them) ------------------
// TODO(lead): these mirror checkpoint.cpp's private helpers (join/split, lora_from_recipe,
// read_state, param_names); exposing them from checkpoint.h would remove the copy.

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

void write_attrs(h5::H5File& f, const TrainState& st, const std::vector<std::string>& order, bool has_lora,
                 const LoraConfig& lora) {
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
}

TrainState read_state(const h5::H5File& f) {
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

std::vector<std::string> param_names(const h5::H5File& f) {
  std::vector<std::string> listed = f.exists("/params") ? f.list("/params") : std::vector<std::string>{};
  if (!f.has_attr("param_order")) return listed;
  std::vector<std::string> order = split(f.attr_str("param_order"), '\n');
  std::set<std::string> a(order.begin(), order.end()), b(listed.begin(), listed.end());
  if (a != b || a.size() != order.size())
    fail(f.path(), ": attribute 'param_order' does not match the tensors under '/params'");
  return order;
}

// ---- one rank's part of a tensor ---------------------------------------------------------

// Raw transfers are independent: each rank moves only its own bytes and never waits for the
// others. Measured (tests/mpi_shard_checkpoint.cpp DISABLED_Timing, np 2, 3 × 49.8M floats in
// 1596 datasets, 2-core machine under load): independent save 0.9-1.7 s / load 0.35-0.4 s,
// collective (two-phase MPI-IO) save 2.6-5.2 s / load 1.2-1.5 s.
constexpr bool kCollectiveTransfer = false;

// Selects the flat element range [s, t) of a row-major dataset of shape [R, C] (or [N]) in
// `space`: at most three blocks (rest of the first row, full rows, start of the last row).
void select_flat_range(hid_t space, const std::vector<int64_t>& shape, int64_t s, int64_t t) {
  bool first = true;
  auto add = [&](std::vector<hsize_t> start, std::vector<hsize_t> count) {
    for (hsize_t c : count)
      if (c == 0) return;
    H5_CHECK(H5Sselect_hyperslab(space, first ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(), nullptr,
                                 count.data(), nullptr));
    first = false;
  };
  if (shape.size() == 1) {
    add({hsize_t(s)}, {hsize_t(t - s)});
    return;
  }
  FRUGAL_CHECK(shape.size() == 2, "select_flat_range: only 1-D and 2-D tensors, got ", shape_str(shape));
  const int64_t C = shape[1];
  int64_t r0 = s / C, c0 = s % C;
  const int64_t r1 = t / C, c1 = t % C;  // t is exclusive: row r1 holds c1 selected elements
  if (r0 == r1) {
    add({hsize_t(r0), hsize_t(c0)}, {1, hsize_t(c1 - c0)});
    return;
  }
  if (c0 > 0) {
    add({hsize_t(r0), hsize_t(c0)}, {1, hsize_t(C - c0)});
    r0++;
  }
  add({hsize_t(r0), 0}, {hsize_t(r1 - r0), hsize_t(C)});
  add({hsize_t(r1), 0}, {1, hsize_t(c1)});
}

// Writes (or reads) the part of tensor t that lies in this rank's shard [lo, hi) of the unit's
// trainable buffer; shard points at element lo.
void transfer_part(hid_t dset, hid_t dxpl, const LayoutTensor& t, size_t lo, size_t hi, float* shard, bool write) {
  const auto [b, e] = overlap(t.offset, t.numel, lo, hi);
  if (b == e && !kCollectiveTransfer) return;  // nothing of this tensor here
  h5::Handle fspace(H5_CHECK(H5Dget_space(dset)));
  hsize_t n = std::max<hsize_t>(e - b, 1);
  h5::Handle mspace(H5_CHECK(H5Screate_simple(1, &n, nullptr)));
  if (b == e) {  // collective transfer: every rank takes part, this one with nothing selected
    H5_CHECK(H5Sselect_none(fspace));
    H5_CHECK(H5Sselect_none(mspace));
  } else {
    select_flat_range(fspace, t.shape, int64_t(b - t.offset), int64_t(e - t.offset));
  }
  float* p = b == e ? shard : shard + (b - lo);
  if (write) H5_CHECK(H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p));
  else H5_CHECK(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p));
}

h5::Handle make_dxpl(const Group& g) {
  h5::Handle dxpl(H5_CHECK(H5Pcreate(H5P_DATASET_XFER)));
  if (!g.serial())
    H5_CHECK(H5Pset_dxpl_mpio(dxpl, kCollectiveTransfer ? H5FD_MPIO_COLLECTIVE : H5FD_MPIO_INDEPENDENT));
  return dxpl;
}

const char* const kSetPrefix[3] = {"/params/", "/optim/m/", "/optim/v/"};

// Every unit with trainables needs this rank's shard pointers (w, and m, v when `optim`).
void check_buffers(const ModelLayout& L, const ShardBuffers& b, bool optim, const std::string& path) {
  for (size_t u = 0; u < L.units.size(); u++) {
    if (L.units[u].train_shard == 0) continue;
    const std::vector<float*>* sets[3] = {&b.w, &b.m, &b.v};
    for (int s = 0; s < (optim ? 3 : 1); s++)
      if (sets[s]->size() <= u || (*sets[s])[u] == nullptr)
        fail(path, ": sharded checkpoint: no ", "wmv"[s], " shard buffer for unit '", L.units[u].name, "'");
  }
}

}  // namespace

std::vector<LayoutTensor> layout_tensors(const ModelLayout& L) {
  std::vector<LayoutTensor> out;
  for (const UnitLayout& u : L.units)
    for (const TrainEntry& e : u.train) out.push_back({e.name, e.shape, u.index, e.offset, e.numel});
  return out;
}

// ---- save --------------------------------------------------------------------------------

void save_sharded_checkpoint(const std::string& path, const TrainState& st, const ModelLayout& L,
                             const ShardBuffers& b, MPI_Comm comm) {
  const Group g = make_group(comm, L, path);
  const std::vector<LayoutTensor> tensors = layout_tensors(L);
  const std::string tmp = path + ".tmp";

  // Local checks first (identical on every rank, agreed anyway).
  std::vector<std::string> order;
  LoraConfig lora = st.lora;
  bool has_lora = false;
  agree_or_throw(g, capture([&] {
    check_buffers(L, b, true, path);
    std::set<std::string> seen;
    for (const LayoutTensor& t : tensors) {
      if (t.name.empty() || t.name.find('/') != std::string::npos)
        fail(path, ": parameter name '", t.name, "' cannot be an HDF5 dataset name");
      if (!seen.insert(t.name).second) fail(path, ": duplicate parameter name '", t.name, "'");
      order.push_back(t.name);
    }
    // LoRA settings as save_checkpoint takes them: st.lora when set, else the recipe's [lora].
    has_lora = st.has_lora || lora_from_recipe(st.recipe_toml, tmp, &lora);
    if (g.rank == 0) {
      std::filesystem::path parent = std::filesystem::path(path).parent_path();
      std::error_code ec;
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    }
  }));
  if (!g.serial()) MPI_CHECK(MPI_Barrier(g.comm));  // the directory exists before anyone creates

  std::string err = capture([&] {
    h5::H5File f = g.serial() ? h5::H5File::create(tmp) : h5::H5File::create_parallel(tmp, g.comm);
    h5::Handle dxpl = make_dxpl(g);
    std::string io_err;  // first failed raw transfer of this rank; the collective calls go on
    for (const LayoutTensor& t : tensors) {
      const UnitLayout& u = L.units[size_t(t.unit)];
      const auto [lo, hi] = shard_range(u.train_padded, L.world, g.rank);
      float* shards[3] = {b.w[size_t(t.unit)], b.m[size_t(t.unit)], b.v[size_t(t.unit)]};
      for (int s = 0; s < 3; s++) {
        const std::string name = kSetPrefix[s] + t.name;
        h5::Handle d = f.create_dataset<float>(name, t.shape);
        if (io_err.empty())
          io_err = capture([&] {
            try {
              transfer_part(d, dxpl, t, lo, hi, shards[s], true);
            } catch (const Error& e) {
              fail(tmp, ": '", name, "': writing this rank's part: ", e.what());
            }
          });
      }
    }
    write_attrs(f, st, order, has_lora, lora);
    f.close();
    if (!io_err.empty()) throw Error(io_err);
  });
  std::string agreed = agree(g, err);
  if (!agreed.empty()) {
    if (g.rank == 0) std::remove(tmp.c_str());
    throw Error(agreed);
  }
  // Durable before anyone returns: rank 0 fsyncs, renames and fsyncs the directory.
  err = g.rank == 0 ? capture([&] { commit_temp_file(tmp, path); }) : std::string();
  agree_or_throw(g, err);  // also the closing barrier
}

// ---- load --------------------------------------------------------------------------------

TrainState load_sharded_checkpoint(const std::string& path, const ModelLayout& L, const ShardBuffers& b,
                                   bool load_optimizer, MPI_Comm comm) {
  const Group g = make_group(comm, L, path);
  const std::vector<LayoutTensor> tensors = layout_tensors(L);

  // Before the collective open: is it an HDF5 file at all? (Each rank looks for itself, so a file
  // one rank cannot see is reported, not a collective open that fails on some ranks only.)
  agree_or_throw(g, capture([&] {
    check_buffers(L, b, load_optimizer, path);
    struct stat sb;
    if (stat(path.c_str(), &sb) != 0) fail(path, ": no such file");
    if (!S_ISREG(sb.st_mode)) fail(path, ": not a regular file");
    h5::init();
    htri_t is = H5Fis_hdf5(path.c_str());
    H5Eclear2(H5E_DEFAULT);
    if (is <= 0) fail(path, ": not a frugal checkpoint (not an HDF5 file)");
  }));

  std::optional<h5::H5File> f;
  agree_or_throw(g, capture([&] {
    f.emplace(g.serial() ? h5::H5File::open(path) : h5::H5File::open_parallel(path, g.comm));
  }));

  // Validate everything before touching a buffer. The file stays open on every rank until the
  // agreement, so its (collective) close happens on all ranks together.
  TrainState st;
  agree_or_throw(g, capture([&] {
    st = read_state(*f);
    std::vector<std::string> names = param_names(*f);
    if (st.has_lora && L.has_lora && st.lora.rank != L.lora.rank)
      fail(path, ": LoRA rank ", st.lora.rank, " in the checkpoint, ", L.lora.rank, " in the model");
    std::set<std::string> in_file(names.begin(), names.end()), wanted;
    for (const LayoutTensor& t : tensors) {
      wanted.insert(t.name);
      if (!in_file.count(t.name))
        fail(path, ": missing tensor '", t.name, "' (the model has it, the checkpoint does not)");
    }
    for (const std::string& n : names)
      if (!wanted.count(n))
        fail(path, ": unexpected tensor '", n, "' (in the checkpoint, not in the model: different LoRA config?)");
    for (const LayoutTensor& t : tensors)
      for (int s = 0; s < (load_optimizer ? 3 : 1); s++) {
        const std::string ds = kSetPrefix[s] + t.name;
        h5::DatasetInfo di = f->info(ds);
        if (di.kind != h5::Kind::F32)
          fail(path, ": tensor '", ds, "': wrong dtype ", di.type_desc, ", expected float32");
        if (di.shape != t.shape)
          fail(path, ": tensor '", ds, "': shape ", shape_str(di.shape), " in the checkpoint, ", shape_str(t.shape),
               " in the model");
      }
  }));

  std::string err = capture([&] {
    // Padding (and anything outside the tensors) reads as zero.
    for (size_t u = 0; u < L.units.size(); u++) {
      const size_t n = L.units[u].train_shard;
      if (n == 0) continue;
      std::memset(b.w[u], 0, n * sizeof(float));
      if (load_optimizer) {
        std::memset(b.m[u], 0, n * sizeof(float));
        std::memset(b.v[u], 0, n * sizeof(float));
      }
    }
    h5::Handle dxpl = make_dxpl(g);
    std::string io_err;
    for (const LayoutTensor& t : tensors) {
      const UnitLayout& u = L.units[size_t(t.unit)];
      const auto [lo, hi] = shard_range(u.train_padded, L.world, g.rank);
      for (int s = 0; s < (load_optimizer ? 3 : 1); s++) {
        float* shard = (s == 0 ? b.w : s == 1 ? b.m : b.v)[size_t(t.unit)];
        const std::string name = kSetPrefix[s] + t.name;
        h5::Handle d = f->open_dataset(name);
        if (io_err.empty())
          io_err = capture([&] {
            try {
              transfer_part(d, dxpl, t, lo, hi, shard, false);
            } catch (const Error& e) {
              fail(path, ": '", name, "': reading this rank's part: ", e.what());
            }
          });
      }
    }
    f->close();
    if (!io_err.empty()) throw Error(io_err);
  });
  agree_or_throw(g, err);
  return st;
}

}  // namespace frugal
