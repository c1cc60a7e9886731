// mpi_shard_load.cpp: sharded loading under mpirun (sharding/shard_load.h). Each rank loads its
// frozen shards with the real communicator, the ranks all_gather them, and every rank compares
// the gathered units BYTE FOR BYTE with pack_unit_frozen of LlamaModel::load (the whole-model
// loader, i.e. quant::nf4_quantize of each whole tensor), which it computes itself.
// Memory: peak RSS increase of each rank during the load, against its frozen shard bytes
// (frozen bytes resident per rank ∝ 1/W). FRUGAL_SHARD_LOAD_MODEL=<dir> measures that model
// instead of the generated one (e.g. `frugal init --preset llama3-8b-2layers`).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "sharding/shard_load.h"
#include "src/model/init.h"
#include "tests/mpi_util.h"
#include "tests/shard_load_util.h"

using namespace frugal;
using test_util::nf4_opts;
using test_util::shard_load_odd_config;

namespace {

// A directory name every rank agrees on (rank 0's pid), created by rank 0.
std::string shared_dir(const std::string& tag) {
  Communicator& comm = test::world();
  int64_t id = comm.rank() == 0 ? (int64_t)::getpid() : 0;
  comm.broadcast(std::span<int64_t>(&id, 1), 0);
  return (std::filesystem::temp_directory_path() / ("frugal_mpi_shard_load_" + tag + "_" + std::to_string(id))).string();
}

// Rank 0 writes a random model (init_model) into a shared dir; the others wait. Returns the dir.
std::string make_model(const std::string& tag, const LlamaConfig& cfg, size_t max_shard_bytes) {
  Communicator& comm = test::world();
  const std::string dir = shared_dir(tag);
  std::string err;
  if (comm.rank() == 0) {
    try {
      InitOptions o;
      o.force = true;
      o.max_shard_bytes = max_shard_bytes;
      init_model(cfg, dir, 11, o);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  EXPECT_ALL_RANKS(err.empty(), "init_model: " << err);
  return dir;
}

void remove_model(const std::string& dir) {
  test::world().barrier();  // nobody reads it any more
  if (test::world().rank() == 0) std::filesystem::remove_all(dir);
}

// Gathers this rank's shards of every unit and compares them with pack_unit_frozen of
// LlamaModel::load. Returns the number of differing bytes on this rank.
int64_t compare_with_whole_model_loader(const std::string& dir, const ModelLayout& L,
                                        const std::vector<avector<uint8_t>>& shards, std::string* err) {
  Communicator& comm = test::world();
  int64_t bad = 0;
  LlamaModel m = LlamaModel::load(dir, L.opt);
  for (size_t u = 0; u < L.units.size(); ++u) {
    const UnitLayout& U = L.units[u];
    // a wrong-sized shard still takes part in the all_gather (with zeros) so no rank hangs
    avector<uint8_t> all(U.frozen_padded), ref(U.frozen_padded), zeros;
    const uint8_t* mine = shards[u].data();
    if (shards[u].size() != U.frozen_shard) {
      *err = "unit " + U.name + ": shard of " + std::to_string(shards[u].size()) + " bytes";
      bad++;
      zeros.assign(U.frozen_shard, 0);
      mine = zeros.data();
    }
    comm.all_gather(std::span<const uint8_t>(mine, U.frozen_shard), std::span<uint8_t>(all.data(), all.size()));
    pack_unit_frozen(m, U, ref.data());
    for (size_t i = 0; i < all.size(); ++i)
      if (all[i] != ref[i] && bad++ == 0) *err = "unit " + U.name + " first differing byte " + std::to_string(i);
  }
  return bad;
}

// Loads with the world communicator, gathers every unit, compares with the whole-model loader.
// Returns the number of differing bytes on this rank (-1 on an error, reported in err).
int64_t check_load(const std::string& dir, const LlamaConfig& cfg, const ModelOptions& opt, std::string* err) {
  Communicator& comm = test::world();
  const int W = comm.world();
  const ModelLayout L = make_model_layout(cfg, opt, nullptr, W);
  std::vector<avector<uint8_t>> shards;
  try {
    shards = load_frozen_shards(dir, L, comm);
  } catch (const std::exception& e) {
    *err = e.what();
  }
  if (!test::all_ranks_ok(comm, err->empty())) return -1;  // compare (collectives) on all ranks or none
  return compare_with_whole_model_loader(dir, L, shards, err);
}

// VmHWM / VmRSS of this process, bytes.
int64_t status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key) + 1) * 1024;
  return -1;
}
bool reset_peak_rss() {  // Linux >= 4.0: "5" resets VmHWM to the current RSS
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return (bool)f;
}

}  // namespace

TEST(MpiShardLoad, TinyPresetMatchesWholeModelLoader) {
  const std::string dir = make_model("tiny", LlamaConfig::preset("tiny"), 5'000'000'000ull);
  for (const ModelOptions& opt : {nf4_opts(64, true), nf4_opts(64, false), nf4_opts(4096, true), ModelOptions{}}) {
    std::string err;
    const int64_t bad = check_load(dir, LlamaConfig::preset("tiny"), opt, &err);
    EXPECT_ALL_RANKS(bad == 0, "bs " << opt.nf4_blocksize << " dq " << opt.nf4_double_quant << " quant "
                                     << (int)opt.quant << ": " << bad << " bytes differ; " << err);
  }
  remove_model(dir);
}

TEST(MpiShardLoad, OddShapesShardedFilesMatchWholeModelLoader) {
  // several safetensors files (30 KB each) + index; odd numel, partial blocks
  const std::string dir = make_model("odd", shard_load_odd_config(false), 30000);
  for (const ModelOptions& opt : {nf4_opts(64, true), nf4_opts(64, false), nf4_opts(4096, true),
                                  nf4_opts(4096, false), ModelOptions{}}) {
    std::string err;
    const int64_t bad = check_load(dir, shard_load_odd_config(false), opt, &err);
    EXPECT_ALL_RANKS(bad == 0, "bs " << opt.nf4_blocksize << " dq " << opt.nf4_double_quant << " quant "
                                     << (int)opt.quant << ": " << bad << " bytes differ; " << err);
  }
  remove_model(dir);
}

TEST(MpiShardLoad, MissingTensorFailsOnEveryRank) {
  // written tied (no lm_head.weight), read with an untied layout: every rank throws before any
  // collective, naming the tensor and the model
  const std::string dir = make_model("missing", shard_load_odd_config(true), 5'000'000'000ull);
  const ModelLayout L = make_model_layout(shard_load_odd_config(false), nf4_opts(64, true), nullptr, test::world().world());
  std::string msg;
  try {
    load_frozen_shards(dir, L, test::world());
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_ALL_RANKS(msg.find("missing tensor lm_head.weight") != std::string::npos && msg.find(dir) != std::string::npos,
                   "message: '" << msg << "'");
  remove_model(dir);
}

// Peak RSS increase during the load vs this rank's frozen shard. The model (generated unless
// FRUGAL_SHARD_LOAD_MODEL is set) has a large bf16 embedding and lm_head so that a loader holding
// whole tensors would show: bound = shard + slices (16 MB fp32 scratch + 8 MB of mapped pages +
// one NF4 slice) + the per-tensor absmax arrays (send, W·recv, absmax, centered) + 16 MB slack.
TEST(MpiShardLoad, PeakRssFollowsTheShard) {
  Communicator& comm = test::world();
  const int W = comm.world();
  const char* env = std::getenv("FRUGAL_SHARD_LOAD_MODEL");
  LlamaConfig cfg = LlamaConfig::preset("tiny");
  cfg.vocab_size = 16001;
  cfg.hidden_size = 1024;
  cfg.intermediate_size = 2752;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 128;
  cfg.rope.head_dim = 128;
  cfg.validate("rss test config");
  const std::string dir = env ? std::string(env) : make_model("rss", cfg, 5'000'000'000ull);
  if (env) cfg = LlamaConfig::load(dir);
  const ModelOptions opt = nf4_opts(64, true);
  const ModelLayout L = make_model_layout(cfg, opt, nullptr, W);
  comm.barrier();
  const bool reset = reset_peak_rss();
  const int64_t rss0 = status_kb("VmRSS:");
  std::vector<avector<uint8_t>> shards;
  std::string err;
  try {
    shards = load_frozen_shards(dir, L, comm);
  } catch (const std::exception& e) {
    err = e.what();
  }
  const int64_t peak = status_kb("VmHWM:"), rss1 = status_kb("VmRSS:");
  int64_t max_nb = 0;
  for (const auto& u : L.units)
    for (const auto& e : u.frozen)
      if (e.part == FrozenPart::NF4Codes) max_nb = std::max<int64_t>(max_nb, (int64_t)(e.bytes * 2 + 63) / 64);
  const int64_t shard = (int64_t)L.total_frozen_shard();
  const int64_t bound = shard + (16 + 8 + 4 + 16) * (int64_t(1) << 20) + max_nb * 4 * (W + 4);
  const int64_t delta = peak - rss0;
  // rank 0 prints every rank's figures
  int64_t mine[4] = {shard, delta, rss1 - rss0, bound}, all[4 * 64] = {};
  if (W <= 64) {
    comm.all_gather(std::span<const int64_t>(mine, 4), std::span<int64_t>(all, 4 * W));
    if (comm.rank() == 0) {
      size_t whole = 0;
      for (const auto& u : L.units) whole += u.frozen_bytes;
      std::printf("shard load %s: W %d, whole frozen model %.1f MB (NF4 bs64 dq)\n", env ? env : "generated", W,
                  whole / 1048576.0);
      for (int r = 0; r < W; ++r)
        std::printf("  rank %d: shard %.1f MB, peak RSS increase %.1f MB, RSS kept %.1f MB (bound %.1f MB)\n", r,
                    all[4 * r] / 1048576.0, all[4 * r + 1] / 1048576.0, all[4 * r + 2] / 1048576.0,
                    all[4 * r + 3] / 1048576.0);
    }
  }
  EXPECT_ALL_RANKS(err.empty() && reset, "load: " << err << (reset ? "" : " (cannot reset VmHWM)"));
  EXPECT_ALL_RANKS(delta <= bound, "peak RSS increase " << delta << " bytes > bound " << bound << " (shard " << shard << ")");
  // the shard itself is resident (shard bytes are written)
  EXPECT_ALL_RANKS(delta >= shard, "peak RSS increase " << delta << " < shard " << shard);
  // and the shards are right (against the whole-model loader)
  std::string cmp_err;
  const int64_t bad = test::all_ranks_ok(comm, err.empty()) ? compare_with_whole_model_loader(dir, L, shards, &cmp_err) : -1;
  EXPECT_ALL_RANKS(bad == 0, bad << " bytes differ; " << cmp_err);
  if (!env) remove_model(dir);
}
