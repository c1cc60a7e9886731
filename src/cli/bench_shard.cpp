// bench_shard.cpp: `mpirun -np W frugal bench shard [--preset P] [--seq-len T] [--micro-batch B]
// [--steps S] [--prefetch K] [--rank r] [--dir D] [--json]`.
//
// Builds the preset (rank 0 runs init_model into D/model, or into a temp dir removed at the end),
// loads it sharded over the W ranks (Trainer with the world communicator: each rank reads and
// quantizes only its shard), LoRA rank r on all seven linears, synthetic data, and runs sharded
// training steps with FSDP prefetch 0 (each unit gathered when it is needed), then prefetch K:
// per setting one warm-up step (not counted), then S counted steps. Settings run in blocks, not
// alternating step by step, because prefetch K gathers the next pass's first unit during the
// previous step's backward: the warm-up step makes the counted steps see that steady state.
// Before each step the ranks meet at a barrier, so a step's time does not include waiting for a
// rank still in the previous one.
//
// Per setting, averaged over the S steps:
//   gathered bytes        received by the all-gathers of frozen + LoRA unit buffers, per rank
//                         (the layout pads every unit to W equal shards: the same on every rank)
//   reduce-scattered      LoRA gradient bytes sent into reduce-scatters, per rank
//   exposed seconds       time the compute thread waited for an FSDP collective (FsdpStats):
//                         mean and max over ranks; split into the first gather of each pass, the
//                         other gathers, and reduce-scatter completions
//   step seconds          Trainer::train_step wall time, max over ranks
//   exposed %             exposed / step per step and rank, averaged over steps; max over ranks
//   speedup               step seconds (prefetch 0) / step seconds (prefetch K)
// W = 1 runs unsharded (no communication): the compute-only reference.
#include "src/cli/bench_shard.h"

#include "src/cli/bench_train.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "sharding/fsdp.h"
#include "src/train/recipe.h"
#include "src/train/trainer.h"

namespace frugal {

namespace {
namespace fs = std::filesystem;

struct BenchShardOptions {
  std::string preset = "small", quant = "nf4", dir;
  int seq_len = 256, micro_batch = 0, steps = 3, prefetch = 1, rank = 16;
  bool json = false, keep = false;
};

// The working directory, the same path on every rank: --dir, or a temp dir rank 0 creates and
// broadcasts (ranks of one job share the machine's file system; on several hosts pass --dir on a
// shared file system). Rank 0 removes a temp dir at the end.
struct BenchDir {
  std::string path;
  bool temp = false, keep = false;
  Communicator* comm = nullptr;
  BenchDir(const std::string& given, Communicator& c, bool keep_it) : keep(keep_it), comm(&c) {
    if (!given.empty()) {
      path = fs::absolute(given).string();
      if (c.rank() == 0) {
        std::error_code ec;
        fs::create_directories(path, ec);
        if (!fs::is_directory(path)) fail("bench shard: cannot create --dir '", path, "'", ec ? ": " + ec.message() : "");
      }
      c.barrier();
      return;
    }
    temp = true;
    std::vector<uint8_t> buf(4096, 0);
    if (c.rank() == 0) {
      std::string t = (fs::temp_directory_path() / "frugal-bench-shard-XXXXXX").string();
      if (!mkdtemp(t.data())) fail("bench shard: cannot create a temp dir under ", fs::temp_directory_path().string());
      FRUGAL_CHECK(t.size() < buf.size(), "bench shard: temp dir path too long: ", t);
      std::memcpy(buf.data(), t.data(), t.size());
    }
    c.broadcast(std::span<uint8_t>(buf.data(), buf.size()), 0);
    path = reinterpret_cast<const char*>(buf.data());
  }
  ~BenchDir() {
    if (!temp || keep) return;
    try {
      comm->barrier();  // nobody still reads the model or data
    } catch (...) {
    }
    std::error_code ec;
    if (comm->rank() == 0) fs::remove_all(path, ec);
  }
};

// One counted step of one setting, on this rank.
struct StepSample {
  double step_s = 0, exposed_s = 0, first_s = 0, rs_s = 0, gathered = 0, reduce_scattered = 0;
  int64_t gathers = 0, reduce_scatters = 0;
};

// A setting's figures: means over its steps on this rank, then reduced over ranks.
struct ModeResult {
  int prefetch = 0;
  double gathered = 0, reduce_scattered = 0, gathers = 0, reduce_scatters = 0;  // per step, rank 0
  double step_s_max = 0, step_s_rank0 = 0;
  double exposed_s_mean = 0, exposed_s_max = 0, first_s_max = 0, other_s_max = 0, rs_s_max = 0;
  double pct_mean = 0, pct_max = 0;  // 100·exposed/step
};

ModeResult reduce_mode(int prefetch, const std::vector<StepSample>& v, Communicator& c) {
  const double n = (double)v.size();
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // step, exposed, first, rs, pct, gathered, rs bytes, gathers
  double cnt[2] = {0, 0};
  for (const StepSample& x : v) {
    s[0] += x.step_s / n, s[1] += x.exposed_s / n, s[2] += x.first_s / n, s[3] += x.rs_s / n;
    s[4] += 100.0 * x.exposed_s / x.step_s / n;
    s[5] += x.gathered / n, s[6] += x.reduce_scattered / n, s[7] += (double)x.gathers / n;
    cnt[0] += (double)x.reduce_scatters / n;
  }
  ModeResult r;
  r.prefetch = prefetch;
  r.step_s_rank0 = s[0];
  r.gathered = s[5], r.reduce_scattered = s[6], r.gathers = s[7], r.reduce_scatters = cnt[0];
  double mx[6] = {s[0], s[1], s[2], s[1] - s[2] - s[3], s[3], s[4]};
  double sum[2] = {s[1], s[4]};
  c.all_reduce(std::span<double>(mx, 6), CommOp::Max);
  c.all_reduce(std::span<double>(sum, 2), CommOp::Sum);
  r.step_s_max = mx[0], r.exposed_s_max = mx[1], r.first_s_max = mx[2], r.other_s_max = mx[3], r.rs_s_max = mx[4];
  r.pct_max = mx[5];
  r.exposed_s_mean = sum[0] / c.world(), r.pct_mean = sum[1] / c.world();
  return r;
}

void run_bench_shard(const BenchShardOptions& o) {
  if (o.steps < 1) fail("bench shard: --steps must be >= 1, got ", o.steps);
  if (o.prefetch < 1) fail("bench shard: --prefetch must be >= 1 (prefetch 0 is always measured), got ", o.prefetch);
  if (o.seq_len < 2) fail("bench shard: --seq-len must be >= 2, got ", o.seq_len);
  std::unique_ptr<Communicator> comm = make_world_communicator();
  const int W = comm->world(), me = comm->rank();
  const bool root = me == 0;
  const int B = o.micro_batch > 0 ? o.micro_batch : W;  // global batch: one row per rank by default
  if (B < W) fail("bench shard: --micro-batch ", B, " is the global batch; it must be >= the ", W, " ranks");
  BenchDir dir(o.dir, *comm, o.keep);

  Recipe r = bench_recipe(o.preset, o.quant, o.rank, o.seq_len, B, 2 * (o.steps + 1),
                          (fs::path(dir.path) / ("model-" + o.preset)).string(),
                          (fs::path(dir.path) / ("run-" + o.preset + "-w" + std::to_string(W))).string());
  r.path = "bench shard";
  r.fsdp_prefetch = o.prefetch;
  if (root && !o.json)
    std::fprintf(stderr, "bench shard: preset %s, %d ranks, model in %s\n", o.preset.c_str(), W, r.model_path.c_str());
  Trainer t(r, comm.get());
  t.verbose = false;
  Fsdp* f = t.fsdp();  // null at W = 1

  const int modes[2] = {0, o.prefetch};
  std::vector<StepSample> samples[2];
  auto one_step = [&](int mi, bool counted) {
    if (f) f->set_prefetch(modes[mi]);
    comm->barrier();
    if (f) f->stats().reset();
    const StepMetrics m = t.train_step();
    StepSample s;
    s.step_s = m.step_seconds;
    if (f) {
      const FsdpStats& st = f->stats();
      s.exposed_s = st.exposed_comm_seconds, s.first_s = st.exposed_first_gather_seconds;
      s.rs_s = st.exposed_reduce_scatter_seconds;
      s.gathered = st.gathered_bytes, s.reduce_scattered = st.reduce_scattered_bytes;
      s.gathers = st.gathers, s.reduce_scatters = st.reduce_scatters;
    }
    if (root && !o.json)
      std::fprintf(stderr, "bench shard: %s prefetch %d: loss %.4f step %.3f s exposed %.3f s (rank 0)\n",
                   counted ? "step" : "warm-up", modes[mi], m.loss, s.step_s, s.exposed_s);
    if (counted) samples[mi].push_back(s);
  };
  for (int mi = 0; mi < 2; mi++) {
    one_step(mi, false);
    for (int s = 0; s < o.steps; s++) one_step(mi, true);
  }
  const ModeResult off = reduce_mode(modes[0], samples[0], *comm), on = reduce_mode(modes[1], samples[1], *comm);
  const double speedup = off.step_s_max / on.step_s_max;
  const LlamaConfig& c = t.model().config();
  const int64_t tokens_rank = (int64_t)(B / W) * o.seq_len;  // rank 0's rows (ranks differ by at most one row)
  const int threads = omp_get_max_threads();
  if (!root) return;

  if (o.json) {
    nlohmann::ordered_json j;
    j["preset"] = o.preset;
    j["quant"] = o.quant;
    j["world"] = W;
    j["threads_per_rank"] = threads;
    j["seq_len"] = o.seq_len;
    j["micro_batch"] = B;
    j["tokens_per_rank"] = tokens_rank;
    j["steps"] = o.steps;
    j["lora_rank"] = o.rank;
    j["parameters"] = c.num_parameters();
    j["units"] = f ? (int64_t)f->layout().units.size() : 0;
    for (const ModeResult* m : {&off, &on}) {
      nlohmann::ordered_json k;
      k["prefetch"] = m->prefetch;
      k["gathered_bytes_per_step"] = m->gathered;
      k["reduce_scattered_bytes_per_step"] = m->reduce_scattered;
      k["gathers_per_step"] = m->gathers;
      k["reduce_scatters_per_step"] = m->reduce_scatters;
      k["step_seconds"] = m->step_s_max;
      k["step_seconds_rank0"] = m->step_s_rank0;
      k["exposed_comm_seconds_mean"] = m->exposed_s_mean;
      k["exposed_comm_seconds_max"] = m->exposed_s_max;
      k["exposed_first_gather_seconds_max"] = m->first_s_max;
      k["exposed_other_gather_seconds_max"] = m->other_s_max;
      k["exposed_reduce_scatter_seconds_max"] = m->rs_s_max;
      k["exposed_percent_mean"] = m->pct_mean;
      k["exposed_percent_max"] = m->pct_max;
      j[m == &off ? "prefetch_off" : "prefetch_on"] = k;
    }
    j["speedup_prefetch_on"] = speedup;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("frugal bench shard: %s (%.1fM params, %zu units), quant %s, LoRA r=%d all-linear, W=%d, "
              "%d OMP threads/rank, global batch %d x %d (%lld tokens/rank), %d steps per setting\n",
              o.preset.c_str(), c.num_parameters() / 1e6, f ? f->layout().units.size() : (size_t)0, o.quant.c_str(),
              o.rank, W, threads, B, o.seq_len, (long long)tokens_rank, o.steps);
  std::printf("%-40s %14s %14s\n", "per step", "prefetch 0", ("prefetch " + std::to_string(o.prefetch)).c_str());
  auto row = [](const char* name, const char* fmt, double a, double b) {
    char fa[32], fb[32];
    std::snprintf(fa, sizeof fa, fmt, a), std::snprintf(fb, sizeof fb, fmt, b);
    std::printf("%-40s %14s %14s\n", name, fa, fb);
  };
  row("all-gathered MB / rank", "%.2f", off.gathered / 1e6, on.gathered / 1e6);
  row("reduce-scattered MB / rank", "%.2f", off.reduce_scattered / 1e6, on.reduce_scattered / 1e6);
  row("collectives (gathers + reduce-scatters)", "%.0f", off.gathers + off.reduce_scatters, on.gathers + on.reduce_scatters);
  row("step seconds (max over ranks)", "%.4f", off.step_s_max, on.step_s_max);
  row("exposed comm s (mean over ranks)", "%.4f", off.exposed_s_mean, on.exposed_s_mean);
  row("exposed comm s (max over ranks)", "%.4f", off.exposed_s_max, on.exposed_s_max);
  row("  first gather of a pass (max)", "%.4f", off.first_s_max, on.first_s_max);
  row("  other gathers (max)", "%.4f", off.other_s_max, on.other_s_max);
  row("  reduce-scatter waits (max)", "%.4f", off.rs_s_max, on.rs_s_max);
  row("exposed / step % (mean over ranks)", "%.1f", off.pct_mean, on.pct_mean);
  row("exposed / step % (max over ranks)", "%.1f", off.pct_max, on.pct_max);
  std::printf("%-40s %14s %14.3f\n", "speedup of prefetch (step time)", "1.000", speedup);
}
}  // namespace

void register_bench_shard(CLI::App& bench_cmd) {
  auto o = std::make_shared<BenchShardOptions>();
  CLI::App* sub = bench_cmd.add_subcommand(
      "shard", "FSDP communication per sharded training step, prefetch off vs on (run under mpirun -np W)");
  sub->add_option("--preset", o->preset, "model preset: tiny | small | llama3-8b-2layers | llama3-70b-2layers (llama3.1-8b/70b are full size)")
      ->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "tokens per row T")->capture_default_str();
  sub->add_option("--micro-batch", o->micro_batch, "global rows per step B (each rank takes B/W; default W)")
      ->capture_default_str();
  sub->add_option("--steps", o->steps, "counted steps per setting (+1 warm-up each)")->capture_default_str();
  sub->add_option("--prefetch", o->prefetch, "prefetch depth K of the 'on' setting (>= 1)")->capture_default_str();
  sub->add_option("--rank", o->rank, "LoRA rank (alpha = 2·rank)")->capture_default_str();
  sub->add_option("--quant", o->quant, "frozen base storage: nf4 | none")->capture_default_str();
  sub->add_option("--dir", o->dir, "working dir (model-<preset> is created there once and reused; "
                                   "default: a temp dir removed at the end)");
  sub->add_flag("--keep", o->keep, "keep the temp dir");
  sub->add_flag("--json", o->json, "print JSON (rank 0) instead of a table");
  sub->callback([o] { run_bench_shard(*o); });
}

}  // namespace frugal
