// mpi_shard_checkpoint.cpp: sharded checkpoints (sharding/shard_checkpoint.h) at np 1, 2, 4.
// Truth: element i of tensor `name` in set s (0 = weights, 1 = Adam m, 2 = Adam v) is
// truth(s, name, i), a function every rank evaluates itself. Checked against it:
//   - save at W, load at W: this rank's shards bitwise equal to the truth, padding zero;
//   - the file read on rank 0 by read_checkpoint_params / load_checkpoint (the single-process
//     reader) holds the truth, and its attributes equal those save_checkpoint writes;
//   - a file written by the single-process save_checkpoint loads sharded to the truth;
//   - cross world sizes: with MPI, sub-communicators of the first Ws ranks save at Ws and of the
//     first Wl ranks load at Wl, for every 1 <= Ws, Wl <= np (np 4 covers 4 -> 2, 4 -> 3, 3 -> 4 ...);
//   - bad inputs (missing file, not HDF5, HDF5 without 'format', wrong shapes, different LoRA
//     rank, missing tensor) fail on every rank with one message naming the file and the tensor.
// DISABLED_Timing (run with --gtest_also_run_disabled_tests) times save/load of ~50M floats per set.
#include <hdf5.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "sharding/mpi_check.h"
#include "sharding/shard_checkpoint.h"
#include "src/io/h5.h"
#include "tests/mpi_util.h"

using namespace frugal;
using frugal::test::world;

namespace {

bool mpi_running() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Exactly representable, distinct across sets/tensors/positions (bitwise comparisons below).
float truth(int set, const std::string& name, size_t i) {
  uint64_t h = fnv1a(name) + uint64_t(set) * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  const float x = float(int64_t(h % 65521) - 32760) / 128.f;
  return set == 2 ? std::fabs(x) + 0.5f : x;  // Adam v is non-negative
}

// hidden 45, q 45, kv 15, ffn 2003, LoRA rank 7 on q, v, down: down's A [7,2003] is most of a
// unit's trainable buffer, so at W = 3 and 4 whole shards lie inside it and start and end mid-row
// (LayoutCoversThreePieceRanges checks that); the Timing test covers all 7 linears.
LlamaConfig small_config(int hidden = 45) {
  LlamaConfig c;
  c.vocab_size = 67;
  c.hidden_size = hidden;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 1;
  c.head_dim = 15;
  c.intermediate_size = 2003;
  c.num_hidden_layers = 3;
  return c;
}

ModelLayout make_layout(int world, int lora_rank = 7, std::vector<std::string> targets = {"q_proj", "v_proj", "down_proj"},
                        int hidden = 45) {
  LoraConfig lc;
  lc.rank = lora_rank;
  lc.alpha = 2.f * float(lora_rank);
  lc.target_modules = targets;
  ModelOptions opt;
  opt.quant = QuantMode::NF4;
  return make_model_layout(small_config(hidden), opt, &lc, world);
}

TrainState make_state() {
  TrainState st;
  st.step = 17;
  st.adam_t = 13;
  st.seed = 0xF00DF00Dull;
  st.cursor = {2, 5, 11};
  st.tokens_seen = 12345.5;
  // LoRA attributes come from the recipe's [lora] section (the trainer's path).
  st.recipe_toml = "[lora]\nrank = 7\nalpha = 14.0\ndropout = 0.05\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n";
  st.base_model = "tiny/base";
  return st;
}

// This rank's shards of one set (per unit, train_shard floats): the truth, padding 0. The
// optimizer state goes to the checkpoint as AdamW's elementwise parts: per tensor piece of the
// shard (unit_pieces), m then v.
struct Shards {
  ModelLayout L;
  int rank = 0;
  std::vector<std::vector<float>> w, m, v;
  ShardBuffers buffers() {
    ShardBuffers b;
    for (auto& u : w) b.w.push_back(u.empty() ? nullptr : u.data());
    for (const UnitLayout& ul : L.units) {
      if (ul.train_shard == 0) continue;
      for (const ParamPiece& pc : unit_pieces(ul, L.world, rank))
        for (auto* set : {&m, &v})
          b.optim.push_back({set == &m ? "m" : "v", pc.name, pc.shape, pc.begin, pc.end, pc.begin, pc.end,
                             (*set)[size_t(ul.index)].data() + pc.offset});
    }
    return b;
  }
};

Shards expected_shards(const ModelLayout& L, int rank) {
  Shards sh{L, rank, {}, {}, {}};
  for (int s = 0; s < 3; s++) {
    auto& set = s == 0 ? sh.w : s == 1 ? sh.m : sh.v;
    for (const UnitLayout& u : L.units) {
      std::vector<float> buf(u.train_shard, 0.f);
      const auto [lo, hi] = shard_range(u.train_padded, L.world, rank);
      for (const TrainEntry& e : u.train) {
        const auto [b, en] = overlap(e.offset, e.numel, lo, hi);
        for (size_t i = b; i < en; i++) buf[i - lo] = truth(s, e.name, i - e.offset);
      }
      set.push_back(std::move(buf));
    }
  }
  return sh;
}

// Shards of the right sizes filled with NaN (so anything not written by the load shows). The
// optimizer state of the padding is no tensor's and never stored: zeros there, as a fresh
// optimizer's; the weights' padding is NaN too (the load zeroes it).
Shards garbage_shards(const ModelLayout& L, int rank = world().rank()) {
  Shards sh{L, rank, {}, {}, {}};
  for (auto* set : {&sh.w, &sh.m, &sh.v})
    for (const UnitLayout& u : L.units) {
      std::vector<float> buf(u.train_shard, set == &sh.w ? std::nanf("") : 0.f);
      if (set != &sh.w) {
        const auto [lo, hi] = shard_range(u.train_padded, L.world, rank);
        for (const TrainEntry& e : u.train) {
          const auto [b, en] = overlap(e.offset, e.numel, lo, hi);
          for (size_t i = b; i < en; i++) buf[i - lo] = std::nanf("");
        }
      }
      set->push_back(std::move(buf));
    }
  return sh;
}

bool bits_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  bool same = a.size() == b.size();
  for (size_t u = 0; same && u < a.size(); u++)
    same = a[u].size() == b[u].size() && std::memcmp(a[u].data(), b[u].data(), 4 * a[u].size()) == 0;
  return same;
}

size_t count_bit_diffs(const Shards& a, const Shards& b, bool optim = true) {
  size_t bad = 0;
  for (int s = 0; s < (optim ? 3 : 1); s++) {
    const auto& x = s == 0 ? a.w : s == 1 ? a.m : a.v;
    const auto& y = s == 0 ? b.w : s == 1 ? b.m : b.v;
    if (x.size() != y.size()) return SIZE_MAX;
    for (size_t u = 0; u < x.size(); u++) {
      if (x[u].size() != y[u].size()) return SIZE_MAX;
      for (size_t i = 0; i < x[u].size(); i++) bad += std::memcmp(&x[u][i], &y[u][i], 4) != 0;
    }
  }
  return bad;
}

// The whole truth as the single-process checkpoint sees it (ParamRefs + AdamW moments).
struct FullParams {
  std::vector<std::vector<float>> w;
  std::vector<ParamRef> refs;
  AdamW opt{AdamWConfig{}};
};
void fill_full(const ModelLayout& L, FullParams* fp) {
  for (const LayoutTensor& t : layout_tensors(L)) {
    std::vector<float> w(t.numel);
    avector<float>& m = fp->opt.m(t.name);
    avector<float>& v = fp->opt.v(t.name);
    m.resize(t.numel);
    v.resize(t.numel);
    for (size_t i = 0; i < t.numel; i++) {
      w[i] = truth(0, t.name, i);
      m[i] = truth(1, t.name, i);
      v[i] = truth(2, t.name, i);
    }
    fp->w.push_back(std::move(w));
  }
  size_t k = 0;
  for (const LayoutTensor& t : layout_tensors(L)) {
    fp->refs.push_back(ParamRef{t.name, t.shape, fp->w[k].data(), nullptr, t.numel, {}});
    k++;
  }
}

// All root attributes of a file as "name=value" lines (numbers printed exactly, strings as is).
std::vector<std::string> root_attrs(const std::string& path) {
  h5::H5File f = h5::H5File::open(path);
  std::vector<std::string> names;
  hsize_t idx = 0;
  H5_CHECK(H5Aiterate2(f.id(), H5_INDEX_NAME, H5_ITER_INC, &idx,
                       [](hid_t, const char* n, const H5A_info_t*, void* d) -> herr_t {
                         static_cast<std::vector<std::string>*>(d)->push_back(n);
                         return 0;
                       },
                       &names));
  std::vector<std::string> out;
  for (const std::string& n : names) {
    h5::Handle a(H5_CHECK(H5Aopen(f.id(), n.c_str(), H5P_DEFAULT)));
    h5::Handle t(H5_CHECK(H5Aget_type(a)));
    const H5T_class_t cls = H5Tget_class(t);
    char buf[64];
    if (cls == H5T_STRING) out.push_back(n + "=" + f.attr_str(n));
    else if (cls == H5T_FLOAT) {
      std::snprintf(buf, sizeof buf, "%.17g", f.attr_f64(n));
      out.push_back(n + "=" + buf + " (float)");
    } else out.push_back(n + "=" + std::to_string(f.attr_i64(n)) + " (int)");
  }
  return out;
}

// One scratch directory for all ranks (named after rank 0's pid; ranks share the file system),
// removed by rank 0 when the tests end.
class ScratchEnv : public ::testing::Environment {
 public:
  static const std::string& dir() { return dir_; }
  void SetUp() override {
    int64_t pid = int64_t(::getpid());
    world().broadcast(std::span<int64_t>(&pid, 1), 0);
    dir_ = std::filesystem::temp_directory_path().string() + "/frugal_mpi_ckpt_" + std::to_string(pid);
    if (world().rank() == 0) std::filesystem::create_directories(dir_);
    world().barrier();
  }
  void TearDown() override {
    world().barrier();
    std::error_code ec;
    if (world().rank() == 0) std::filesystem::remove_all(dir_, ec);
  }

 private:
  static inline std::string dir_;
};
[[maybe_unused]] ::testing::Environment* const kScratchEnv = ::testing::AddGlobalTestEnvironment(new ScratchEnv);

std::string scratch(const std::string& name) { return ScratchEnv::dir() + "/" + name; }

// Runs fn, returns the frugal::Error message ("" = no error).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Every rank: the call failed, its message contains every needle, and all ranks got the same one.
void expect_error_everywhere(const std::string& msg, const std::vector<std::string>& needles, const std::string& what) {
  bool ok = !msg.empty();
  for (const std::string& n : needles) ok = ok && msg.find(n) != std::string::npos;
  EXPECT_ALL_RANKS(ok, what << ": message '" << msg << "' lacks one of the expected parts");
  // Same message on every rank: compare a hash with rank 0's.
  int64_t h = int64_t(fnv1a(msg) >> 1), h0 = h;
  world().broadcast(std::span<int64_t>(&h0, 1), 0);
  EXPECT_ALL_RANKS(h == h0, what << ": this rank's message differs from rank 0's: " << msg);
}

}  // namespace

// ---- same world size -----------------------------------------------------------------------

TEST(ShardCheckpoint, SaveLoadSameWorldBitwise) {
  const int W = world().world(), r = world().rank();
  const ModelLayout L = make_layout(W);
  Shards truth_sh = expected_shards(L, r);
  const std::string path = scratch("same_w.h5");
  std::string err = error_of([&] { save_sharded_checkpoint(path, make_state(), L, truth_sh.buffers()); });
  EXPECT_ALL_RANKS(err.empty(), "save: " << err);
  EXPECT_ALL_RANKS(!std::filesystem::exists(path + ".tmp"), "temporary file left behind");

  Shards got = garbage_shards(L);
  TrainState st;
  err = error_of([&] { st = load_sharded_checkpoint(path, L, got.buffers(), true); });
  EXPECT_ALL_RANKS(err.empty(), "load: " << err);
  const size_t bad = count_bit_diffs(got, truth_sh);
  EXPECT_ALL_RANKS(bad == 0, bad << " elements differ from the truth");
  const TrainState want = make_state();
  EXPECT_ALL_RANKS(st.step == want.step && st.adam_t == want.adam_t && st.seed == want.seed &&
                       st.cursor == want.cursor && st.tokens_seen == want.tokens_seen &&
                       st.recipe_toml == want.recipe_toml && st.base_model == want.base_model,
                   "train state differs after the round trip");
  EXPECT_ALL_RANKS(st.has_lora && st.lora.rank == 7 && st.lora.dropout == 0.05f && st.lora.target_modules.size() == 3,
                   "LoRA attributes not restored from the recipe");

  // Weights only: m and v shards are left as they were (NaN here).
  Shards w_only = garbage_shards(L);
  err = error_of([&] { load_sharded_checkpoint(path, L, w_only.buffers(), false); });
  EXPECT_ALL_RANKS(err.empty(), "load weights only: " << err);
  const size_t bad_w = count_bit_diffs(w_only, truth_sh, false);
  Shards fresh = garbage_shards(L);
  const bool mv_untouched = bits_equal(w_only.m, fresh.m) && bits_equal(w_only.v, fresh.v);
  EXPECT_ALL_RANKS(bad_w == 0 && mv_untouched, bad_w << " weight elements differ; m untouched: " << mv_untouched);
}

// The configuration really exercises every hyperslab shape: at W = 4 some shard lies inside one
// tensor and starts and ends mid-row (partial row + full rows + partial row).
TEST(ShardCheckpoint, LayoutCoversThreePieceRanges) {
  const ModelLayout L = make_layout(4);
  bool three_piece = false;
  for (const UnitLayout& u : L.units)
    for (int r = 0; r < 4; r++) {
      const auto [lo, hi] = shard_range(u.train_padded, 4, r);
      for (const TrainEntry& e : u.train) {
        const auto [b, en] = overlap(e.offset, e.numel, lo, hi);
        const size_t C = size_t(e.shape[1]), s = b - e.offset, t = en - e.offset;
        if (b < en && s % C != 0 && t % C != 0 && t / C > s / C + 1) three_piece = true;
      }
    }
  EXPECT_TRUE(three_piece);
}

// The sharded file is the single-process format: read_checkpoint_params and load_checkpoint on
// rank 0 see the truth, and its attributes equal those save_checkpoint writes for the same state.
TEST(ShardCheckpoint, FileReadableBySingleProcessReader) {
  const int W = world().world(), r = world().rank();
  const ModelLayout L = make_layout(W);
  Shards sh = expected_shards(L, r);
  const std::string path = scratch("for_serial.h5"), serial = scratch("serial_ref.h5");
  std::string err = error_of([&] { save_sharded_checkpoint(path, make_state(), L, sh.buffers()); });
  EXPECT_ALL_RANKS(err.empty(), "save: " << err);

  bool ok = true;
  std::string why;
  if (r == 0) {
    err = error_of([&] {
      const std::vector<LayoutTensor> ts = layout_tensors(L);
      CheckpointContents c = read_checkpoint_params(path);
      if (c.names.size() != ts.size()) fail("tensor count ", c.names.size(), " != ", ts.size());
      size_t bad = 0;
      for (size_t k = 0; k < ts.size(); k++) {
        if (c.names[k] != ts[k].name || c.shapes[k] != ts[k].shape) fail("tensor ", k, ": ", c.names[k], " / ", ts[k].name);
        for (size_t i = 0; i < ts[k].numel; i++) {
          const float want = truth(0, ts[k].name, i);
          bad += std::memcmp(&c.data[k][i], &want, 4) != 0;
        }
      }
      if (bad) fail(bad, " parameter elements differ from the truth");
      // Single-process load (W -> 1) including the optimizer moments.
      FullParams fp;
      fill_full(L, &fp);
      for (auto& w : fp.w) std::fill(w.begin(), w.end(), -1.f);
      AdamW opt{AdamWConfig{}};
      TrainState st = load_checkpoint(path, fp.refs, &opt);
      if (opt.t() != 13 || st.step != 17) fail("adam_t/step not restored");
      for (size_t k = 0; k < ts.size(); k++)
        for (size_t i = 0; i < ts[k].numel; i++) {
          const float want[3] = {truth(0, ts[k].name, i), truth(1, ts[k].name, i), truth(2, ts[k].name, i)};
          bad += std::memcmp(&fp.w[k][i], &want[0], 4) != 0;
          bad += std::memcmp(&opt.m(ts[k].name)[i], &want[1], 4) != 0;
          bad += std::memcmp(&opt.v(ts[k].name)[i], &want[2], 4) != 0;
        }
      if (bad) fail(bad, " elements differ after load_checkpoint");
      // Attributes equal to what save_checkpoint writes for the same params and state.
      FullParams ref;
      fill_full(L, &ref);
      save_checkpoint(serial, make_state(), ref.refs, ref.opt);
      std::vector<std::string> a = root_attrs(path), b = root_attrs(serial);
      if (a != b) {
        for (size_t i = 0; i < std::max(a.size(), b.size()); i++)
          if (i >= a.size() || i >= b.size() || a[i] != b[i])
            fail("attribute ", i, ": sharded '", i < a.size() ? a[i] : "-", "' vs single-process '",
                 i < b.size() ? b[i] : "-", "'");
      }
    });
    ok = err.empty();
    why = err;
  }
  EXPECT_ALL_RANKS(ok, why);
}

// A file written by the single-process save_checkpoint (rank 0) loads sharded (1 -> W).
TEST(ShardCheckpoint, LoadsSingleProcessFile) {
  const int W = world().world(), r = world().rank();
  const ModelLayout L = make_layout(W);
  const std::string path = scratch("from_serial.h5");
  std::string err;
  if (r == 0)
    err = error_of([&] {
      FullParams fp;
      fill_full(L, &fp);
      save_checkpoint(path, make_state(), fp.refs, fp.opt);
    });
  EXPECT_ALL_RANKS(err.empty(), "save_checkpoint: " << err);  // (also the barrier)
  Shards got = garbage_shards(L);
  TrainState st;
  err = error_of([&] { st = load_sharded_checkpoint(path, L, got.buffers(), true); });
  EXPECT_ALL_RANKS(err.empty(), "load: " << err);
  const size_t bad = count_bit_diffs(got, expected_shards(L, r));
  EXPECT_ALL_RANKS(bad == 0 && st.adam_t == 13, bad << " elements differ; adam_t " << st.adam_t);
}

// ---- across world sizes ----------------------------------------------------------------------

// Sub-communicators of the first Ws ranks save at world Ws; of the first Wl ranks load at Wl.
TEST(ShardCheckpoint, CrossWorldSizes) {
  const int np = world().world(), r = world().rank();
  if (!mpi_running()) GTEST_SKIP() << "needs mpirun (np 1 runs without MPI)";
  auto sub = [&](int n) {
    MPI_Comm c = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, r < n ? 0 : MPI_UNDEFINED, r, &c));
    return c;
  };
  for (int Ws = 1; Ws <= np; Ws++) {
    const std::string path = scratch("cross_" + std::to_string(Ws) + ".h5");
    MPI_Comm cs = sub(Ws);
    std::string err;
    if (cs != MPI_COMM_NULL) {
      const ModelLayout Ls = make_layout(Ws);
      Shards sh = expected_shards(Ls, r);
      err = error_of([&] { save_sharded_checkpoint(path, make_state(), Ls, sh.buffers(), cs); });
      MPI_Comm_free(&cs);
    }
    EXPECT_ALL_RANKS(err.empty(), "save at W=" << Ws << ": " << err);
    for (int Wl = 1; Wl <= np; Wl++) {
      MPI_Comm cl = sub(Wl);
      size_t bad = 0;
      err.clear();
      if (cl != MPI_COMM_NULL) {
        const ModelLayout Ll = make_layout(Wl);
        Shards got = garbage_shards(Ll);
        err = error_of([&] { load_sharded_checkpoint(path, Ll, got.buffers(), true, cl); });
        bad = count_bit_diffs(got, expected_shards(Ll, r));
        MPI_Comm_free(&cl);
      }
      EXPECT_ALL_RANKS(err.empty() && bad == 0,
                       "saved at W=" << Ws << ", loaded at W=" << Wl << ": " << bad << " elements differ; " << err);
    }
  }
}

// ---- bad inputs --------------------------------------------------------------------------------

TEST(ShardCheckpoint, BadInputsFailOnEveryRank) {
  const int W = world().world(), r = world().rank();
  const ModelLayout L = make_layout(W);
  Shards got = garbage_shards(L);
  auto load = [&](const std::string& p, const ModelLayout& lay, Shards* into) {
    return error_of([&] { load_sharded_checkpoint(p, lay, into->buffers(), true); });
  };

  expect_error_everywhere(load(scratch("does_not_exist.h5"), L, &got), {"does_not_exist.h5", "no such file"},
                          "missing file");

  const std::string text = scratch("not_hdf5.h5");
  if (r == 0) std::ofstream(text) << "this is not an HDF5 file\n";
  world().barrier();
  expect_error_everywhere(load(text, L, &got), {"not_hdf5.h5", "not a frugal checkpoint"}, "text file");

  const std::string plain = scratch("plain.h5");
  std::string err;
  if (r == 0)
    err = error_of([&] {
      h5::H5File f = h5::H5File::create(plain);
      const float x[3] = {1, 2, 3};
      f.write("/data", x, {3});
      f.close();
    });
  EXPECT_ALL_RANKS(err.empty(), err);
  expect_error_everywhere(load(plain, L, &got), {"plain.h5", "no 'format' attribute"}, "HDF5 without format");

  // A good checkpoint at this W, then layouts that do not match it.
  const std::string good = scratch("good.h5");
  Shards sh = expected_shards(L, r);
  err = error_of([&] { save_sharded_checkpoint(good, make_state(), L, sh.buffers()); });
  EXPECT_ALL_RANKS(err.empty(), "save: " << err);

  const ModelLayout wider = make_layout(W, 7, {"q_proj", "v_proj", "down_proj"}, 60);  // hidden 60: every A is [7,60]
  Shards g2 = garbage_shards(wider);
  expect_error_everywhere(load(good, wider, &g2),
                          {"good.h5", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "[7, 45]", "[7, 60]"},
                          "shape mismatch");

  const ModelLayout rank5 = make_layout(W, 5);
  Shards g3 = garbage_shards(rank5);
  expect_error_everywhere(load(good, rank5, &g3), {"good.h5", "LoRA rank 7", "5 in the model"}, "LoRA rank");

  // File with q,v only; the model also has k: missing tensor. And the reverse: unexpected tensor.
  const ModelLayout qv = make_layout(W, 7, {"q_proj", "v_proj"});
  const ModelLayout qkv = make_layout(W, 7, {"q_proj", "k_proj", "v_proj"});
  const std::string qv_path = scratch("qv.h5");
  Shards shq = expected_shards(qv, r);
  TrainState st = make_state();
  st.recipe_toml.clear();  // no [lora] text: the LoRA attributes come from st.lora
  st.has_lora = true;
  st.lora.rank = 7;
  err = error_of([&] { save_sharded_checkpoint(qv_path, st, qv, shq.buffers()); });
  EXPECT_ALL_RANKS(err.empty(), "save q,v: " << err);
  Shards g4 = garbage_shards(qkv);
  expect_error_everywhere(load(qv_path, qkv, &g4),
                          {"qv.h5", "missing tensor", "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"},
                          "missing tensor");
  Shards g6 = garbage_shards(qv);
  expect_error_everywhere(load(good, qv, &g6),
                          {"good.h5", "unexpected tensor", "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"},
                          "unexpected tensor");

  // Validation happens before anything is written: the shards are still as garbage_shards made them.
  const bool untouched = count_bit_diffs(g2, garbage_shards(wider)) == 0 && count_bit_diffs(g3, garbage_shards(rank5)) == 0 &&
                         count_bit_diffs(g4, garbage_shards(qkv)) == 0 && count_bit_diffs(g6, garbage_shards(qv)) == 0;
  EXPECT_ALL_RANKS(untouched, "a failed load modified the shard buffers");

  // A layout for another world size than the communicator's: a clean error, no hang.
  if (W > 1) {
    const ModelLayout other = make_layout(W + 1);
    Shards g5 = garbage_shards(other);
    expect_error_everywhere(load(good, other, &g5), {"good.h5", "world"}, "layout world != communicator");
  }
}

// ---- timing (not run by default) ----------------------------------------------------------------

// ~50M floats per set: Llama-3-8B-like dims (hidden 4096, kv 1024, ffn 14336), LoRA r 16 on all
// 7 linears = 1.31M floats per layer, 38 layers = 49.8M floats; saves and loads w, m, v.
TEST(ShardCheckpoint, DISABLED_Timing) {
  const int W = world().world(), r = world().rank();
  LlamaConfig c;
  c.vocab_size = 128;
  c.hidden_size = 4096;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 38;
  LoraConfig lc;
  lc.rank = 16;
  ModelOptions opt;
  opt.quant = QuantMode::NF4;
  const ModelLayout L = make_model_layout(c, opt, &lc, W);
  Shards sh = expected_shards(L, r);
  const std::string path = std::getenv("FRUGAL_CKPT_BENCH_PATH") ? std::getenv("FRUGAL_CKPT_BENCH_PATH") : scratch("big.h5");
  TrainState st;
  st.has_lora = true;
  st.lora = lc;
  double t_save = 1e30, t_load = 1e30;
  for (int rep = 0; rep < 3; rep++) {
    world().barrier();
    auto t0 = std::chrono::steady_clock::now();
    save_sharded_checkpoint(path, st, L, sh.buffers());
    auto t1 = std::chrono::steady_clock::now();
    Shards got = garbage_shards(L);
    world().barrier();
    auto t2 = std::chrono::steady_clock::now();
    load_sharded_checkpoint(path, L, got.buffers(), true);
    auto t3 = std::chrono::steady_clock::now();
    t_save = std::min(t_save, std::chrono::duration<double>(t1 - t0).count());
    t_load = std::min(t_load, std::chrono::duration<double>(t3 - t2).count());
    if (r == 0)
      std::printf("  rep %d: save %.3f s, load %.3f s\n", rep, std::chrono::duration<double>(t1 - t0).count(),
                  std::chrono::duration<double>(t3 - t2).count());
    const size_t bad = count_bit_diffs(got, sh);
    EXPECT_ALL_RANKS(bad == 0, bad << " elements differ");
  }
  // Baseline: the single-process save_checkpoint / load_checkpoint of the same tensors on rank 0.
  if (r == 0) {
    FullParams fp;
    fill_full(L, &fp);
    const std::string serial = path + ".serial";
    auto t0 = std::chrono::steady_clock::now();
    save_checkpoint(serial, st, fp.refs, fp.opt);
    auto t1 = std::chrono::steady_clock::now();
    load_checkpoint(serial, fp.refs, &fp.opt);
    auto t2 = std::chrono::steady_clock::now();
    std::printf("  single-process save_checkpoint %.3f s, load_checkpoint %.3f s\n",
                std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count());
    std::filesystem::remove(serial);
  }
  world().barrier();
  if (r == 0)
    std::printf("np %d: %zu floats per set (%zu datasets), file %.1f MB: save %.3f s, load %.3f s (best of 3)\n", W,
                L.total_train_numel(), 3 * layout_tensors(L).size(),
                double(std::filesystem::file_size(path)) / 1e6, t_save, t_load);
}
