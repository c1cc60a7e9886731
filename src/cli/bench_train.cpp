// bench_train.cpp: `frugal bench train [--preset P] [--seq-len T] [--micro-batch B] [--steps S]
// [--rank r] [--quant nf4|none] [--checkpointing] [--json]`.
// Builds the preset in a temp dir (init_model, random weights), loads it with the frozen base
// quantized per --quant, LoRA rank r (alpha 2r) on all seven linears, synthetic "patterns" data,
// and runs S optimizer steps of B×T tokens through Trainer::train_step. Reports the median step
// time and its tokens/s, peak RSS (getrusage, whole process: includes init and load) and the
// model's memory_report. JSON keys used by scripts/bench_vs_pytorch.py: tokens_per_s,
// peak_rss_bytes, step_seconds.
#include "src/cli/bench_train.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/train/recipe.h"
#include "src/train/trainer.h"

namespace frugal {

namespace {
namespace fs = std::filesystem;

struct BenchTrainOptions {
  std::string preset = "small", quant = "nf4", device = "cpu";
  int seq_len = 256, micro_batch = 1, steps = 5, rank = 16;
  bool checkpointing = false, json = false, keep = false;
};

// Removes the temp dir on every exit path.
struct TempDir {
  std::string path;
  bool keep = false;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "frugal-bench-train-XXXXXX").string();
    if (!mkdtemp(t.data())) fail("bench train: cannot create a temp dir under ", fs::temp_directory_path().string());
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    if (!keep) fs::remove_all(path, ec);
  }
};

}  // namespace

Recipe bench_recipe(const std::string& preset, const std::string& quant, int rank, int seq_len,
                    int micro_batch, int steps, const std::string& model_path, const std::string& output_dir) {
  Recipe r;
  r.path = "bench";
  r.model_preset = preset;
  r.model_path = model_path;
  r.quant_type = quant;
  r.lora.rank = rank;
  r.lora.alpha = 2.f * rank;
  r.lora.target_modules = {"all-linear"};
  r.data_synthetic = "patterns";
  r.seq_len = seq_len;
  r.micro_batch = micro_batch;
  r.grad_accum = 1;
  r.steps = steps;
  r.lr_schedule = "constant";
  r.output_dir = output_dir;
  return r;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

namespace {

void run_bench_train(const BenchTrainOptions& o) {
  if (o.steps < 1) fail("bench train: --steps must be >= 1, got ", o.steps);
  TempDir tmp;
  tmp.keep = o.keep;
  Recipe r = bench_recipe(o.preset, o.quant, o.rank, o.seq_len, o.micro_batch, o.steps,
                          (fs::path(tmp.path) / "model").string(), (fs::path(tmp.path) / "run").string());
  r.device_backend = o.device;
  backend_by_name(r.device_backend);  // an unbuilt backend fails before any work
  r.path = "bench train";
  r.activation_checkpointing = o.checkpointing;
  if (!o.json) std::fprintf(stderr, "bench train: initializing preset %s in %s\n", o.preset.c_str(), tmp.path.c_str());
  const auto tl = std::chrono::steady_clock::now();
  Trainer t(r);
  t.verbose = false;
  const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count();
  const size_t rss_setup = peak_rss_bytes();
  std::vector<StepMetrics> ms;
  for (int s = 0; s < o.steps; s++) {
    ms.push_back(t.train_step());
    if (!o.json)
      std::fprintf(stderr, "bench train: step %d loss %.4f %.3f s %.0f tok/s\n", s, ms.back().loss,
                   ms.back().step_seconds, ms.back().tokens_per_s);
  }
  std::vector<double> sec;
  for (auto& m : ms) sec.push_back(m.step_seconds);
  const double med = median_of(sec);
  const int64_t tokens = (int64_t)o.seq_len * o.micro_batch;
  const double tps = tokens / med;
  const size_t rss = peak_rss_bytes();
  const MemoryReport mr = t.model().memory_report();
  size_t lora_params = 0;
  for (auto& p : t.params()) lora_params += p.numel;
  const LlamaConfig& c = t.model().config();
  if (o.json) {
    nlohmann::ordered_json j;
    j["preset"] = o.preset;
    j["quant"] = o.quant;
    j["seq_len"] = o.seq_len;
    j["micro_batch"] = o.micro_batch;
    j["steps"] = o.steps;
    j["rank"] = o.rank;
    j["threads"] = omp_get_max_threads();
    j["activation_checkpointing"] = o.checkpointing;
    j["parameters"] = c.num_parameters();
    j["trainable_parameters"] = lora_params;
    j["tokens_per_step"] = tokens;
    j["step_seconds"] = med;
    j["tokens_per_s"] = tps;
    j["peak_rss_bytes"] = rss;
    j["peak_rss_after_setup_bytes"] = rss_setup;
    j["setup_seconds"] = setup_s;
    j["step_seconds_all"] = [&] { std::vector<double> v; for (auto& m : ms) v.push_back(m.step_seconds); return v; }();
    j["losses"] = [&] { std::vector<double> v; for (auto& m : ms) v.push_back(m.loss); return v; }();
    j["memory_report"] = {{"frozen_linear_bytes", mr.frozen_linear_bytes}, {"embedding_bytes", mr.embedding_bytes},
                          {"norm_bytes", mr.norm_bytes}, {"grad_bytes", mr.grad_bytes},
                          {"activation_bytes", mr.activation_bytes}, {"total_bytes", mr.total()}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("frugal bench train: %s (%.1fM params), quant %s, LoRA r=%d all-linear (%.2fM trainable), "
              "B=%d T=%d, %d threads, %d steps\n",
              o.preset.c_str(), c.num_parameters() / 1e6, o.quant.c_str(), o.rank, lora_params / 1e6, o.micro_batch,
              o.seq_len, omp_get_max_threads(), o.steps);
  std::printf("%-28s %14s\n", "metric", "value");
  std::printf("%-28s %14.4f\n", "step seconds (median)", med);
  std::printf("%-28s %14.1f\n", "tokens/s (median step)", tps);
  std::printf("%-28s %14.1f\n", "peak RSS (MB)", rss / 1048576.0);
  std::printf("%-28s %14.1f\n", "peak RSS after setup (MB)", rss_setup / 1048576.0);
  std::printf("%-28s %14.1f\n", "setup seconds", setup_s);
  std::printf("memory_report: %s\n", mr.str().c_str());
}
}  // namespace

void register_bench_train(CLI::App& bench_cmd) {
  auto o = std::make_shared<BenchTrainOptions>();
  CLI::App* sub = bench_cmd.add_subcommand("train", "tokens/s and peak memory of a QLoRA training step");
  sub->add_option("--preset", o->preset, "model preset: tiny | small | llama3-8b-2layers | llama3-70b-2layers (llama3.1-8b/70b are full size)")
      ->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "tokens per row T")->capture_default_str();
  sub->add_option("--micro-batch", o->micro_batch, "rows per step B")->capture_default_str();
  sub->add_option("--steps", o->steps, "optimizer steps (median step time reported)")->capture_default_str();
  sub->add_option("--rank", o->rank, "LoRA rank (alpha = 2·rank)")->capture_default_str();
  sub->add_option("--quant", o->quant, "frozen base storage: nf4 | none")->capture_default_str();
  sub->add_option("--device", o->device, "backend the ops run on: cpu | cuda")->capture_default_str();
  sub->add_flag("--checkpointing", o->checkpointing, "activation checkpointing per block");
  sub->add_flag("--keep", o->keep, "keep the temp dir (model, data, run)");
  sub->add_flag("--json", o->json, "print JSON instead of a table");
  sub->callback([o] { run_bench_train(*o); });
}

}  // namespace frugal
