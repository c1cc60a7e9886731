// bench_galore.cpp: `frugal bench galore [--preset small] [--ranks 128,256] [--steps 20]
// [--svd exact,randomized] [--moments fp32,int8] [--gap 10] [--seq-len 128] [--micro-batch 2]
// [--grad-accum 1] [--per-layer] [--lr 1e-3] [--galore-lr 0] [--json]`.
// Full fine-tuning (bf16 base, every decoder linear and the RMSNorm weights train) of a randomly
// initialized preset on synthetic "patterns" data, the same data and seed for every optimizer:
//   adamw                  the baseline (torch AdamW)
//   galore r, exact        GaLore-AdamW rank r, LAPACK SVD at each refresh
//   galore r, randomized   GaLore-AdamW rank r, range finder + subspace iteration
//   each of those with galore.moments = "int8" too when --moments lists it (suffix :int8)
//   ...:per-layer          (--per-layer) the same with galore.per_layer: each block steps in the
//                          backward and frees its gradients (optim.grad_clip 0: no global norm)
// Each configuration runs in its own child process (this binary re-executed with --run-one), so
// its peak RSS is its own. Reported per configuration: optimizer-state bytes (what the optimizer
// holds after the last step), peak RSS, the mean loss of the last gap steps and its ratio to
// AdamW's, the median step time, and the share of all step time spent in projector refreshes
// (steps is a multiple of gap, so refreshes are averaged over whole periods).
#include "src/cli/bench_galore.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "src/cli/bench_train.h"
#include "src/model/init.h"
#include "src/train/galore.h"
#include "src/train/trainer.h"

extern char** environ;

namespace frugal {

namespace {
namespace fs = std::filesystem;

struct BenchGaloreOptions {
  std::string preset = "small";
  std::vector<int> ranks = {128, 256};
  std::vector<std::string> svds = {"exact", "randomized"};
  std::vector<std::string> moments = {"fp32"};
  int steps = 20, gap = 10, seq_len = 128, micro_batch = 2, grad_accum = 1;
  float lr = 1e-3f, galore_lr = 0.f;  // galore_lr 0: lr
  bool json = false, per_layer = false;
  std::string run_one, model_dir;  // internal: the child's configuration and the shared model
};

// The full fine-tuning recipe every configuration shares; `config` = adamw | galore:<r>:<svd> (fp32
// moments) | galore:<r>:<svd>[:int8][:per-layer].
Recipe galore_bench_recipe(const BenchGaloreOptions& o, const std::string& config, const std::string& out) {
  Recipe r = bench_recipe(o.preset, "none", 8, o.seq_len, o.micro_batch, o.steps, o.model_dir, out);
  r.path = "bench galore";
  r.train_mode = "full";
  r.train_trainable = {"norm", "input_layernorm", "post_attention_layernorm"};
  r.lr = o.lr;
  r.lr_schedule = "constant";
  r.grad_clip = 1.0f;
  r.optim_name = "adamw";
  r.grad_accum = o.grad_accum;
  if (config != "adamw") {
    int rank = 0;
    char svd[32] = {0};
    if (std::sscanf(config.c_str(), "galore:%d:%31[^:]", &rank, svd) != 2) fail("bench galore: bad configuration '", config, "'");
    std::string moments = "fp32";
    bool per_layer = false;
    for (size_t at = config.find(':', config.find(':', 7) + 1); at != std::string::npos;) {  // :int8, :per-layer
      const size_t next = config.find(':', at + 1);
      const std::string opt = config.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
      if (opt == "int8") moments = opt;
      else if (opt == "per-layer") per_layer = true;
      else fail("bench galore: bad configuration '", config, "' (option '", opt, "')");
      at = next;
    }
    r.optim_name = "galore_adamw";
    r.galore.moments = moments;
    r.galore.rank = rank;
    r.galore.svd = svd;
    r.galore.update_proj_gap = o.gap;
    r.galore.scale = 0.25f;
    if (o.galore_lr > 0.f) r.lr = o.galore_lr;
    if (per_layer) r.galore.per_layer = true, r.grad_clip = 0.f;  // per-layer steps cannot clip by the global norm
  }
  return r;
}

// Child: one configuration, its figures as one JSON line on stdout.
void run_one(const BenchGaloreOptions& o) {
  const std::string out = fs::path(o.model_dir).parent_path() / ("run-" + std::to_string(::getpid()));
  Recipe r = galore_bench_recipe(o, o.run_one, out);
  Trainer t(r);
  t.verbose = false;
  std::vector<double> losses, secs;
  for (int s = 0; s < o.steps; s++) {
    const StepMetrics m = t.train_step();
    losses.push_back(m.loss);
    secs.push_back(m.step_seconds);
  }
  size_t state = 0, floats = 0;
  double refresh_s = 0;
  int64_t refreshes = 0;
  for (const ParamRef& p : t.params()) floats += p.numel;
  if (const auto* g = dynamic_cast<const GaloreAdamW*>(&t.optimizer())) {
    state = g->state_bytes();
    refresh_s = g->stats().refresh_seconds;
    refreshes = g->stats().refreshes;
  } else {
    state = 8 * floats;  // AdamW: m, v per trainable float
  }
  nlohmann::ordered_json j = {{"config", o.run_one},     {"optimizer_state_bytes", state},
                              {"trainable_floats", floats}, {"peak_rss_bytes", peak_rss_bytes()},
                              {"losses", losses},        {"step_seconds", secs},
                              {"refresh_seconds", refresh_s}, {"refreshes", refreshes}};
  std::printf("%s\n", j.dump().c_str());
  std::error_code ec;
  fs::remove_all(out, ec);
}

// Parent: runs `self bench galore --run-one config ...` and parses its JSON line.
nlohmann::json spawn_one(const BenchGaloreOptions& o, const std::string& config) {
  std::vector<std::string> args = {"/proc/self/exe", "bench", "galore", "--run-one", config, "--model-dir", o.model_dir,
                                   "--preset", o.preset, "--steps", std::to_string(o.steps), "--gap", std::to_string(o.gap),
                                   "--seq-len", std::to_string(o.seq_len), "--micro-batch", std::to_string(o.micro_batch), "--grad-accum", std::to_string(o.grad_accum),
                                   "--lr", str(o.lr), "--galore-lr", str(o.galore_lr)};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) fail("bench galore: pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    fail("bench galore: cannot start a child for ", config);
  }
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("bench galore: the run of ", config, " failed (see above)");
  const size_t nl = text.rfind('{');
  if (nl == std::string::npos) fail("bench galore: no result from ", config);
  return nlohmann::json::parse(text.substr(nl));
}

double mean_tail(const std::vector<double>& v, size_t k) {
  k = std::min(k, v.size());
  double s = 0;
  for (size_t i = v.size() - k; i < v.size(); i++) s += v[i];
  return k ? s / double(k) : 0.0;
}

void run_bench_galore(BenchGaloreOptions o) {
  if (!o.run_one.empty()) return run_one(o);
  if (o.steps < 1 || o.gap < 1) fail("bench galore: --steps and --gap must be >= 1");
  if (o.steps % o.gap != 0) fail("bench galore: --steps ", o.steps, " must be a multiple of --gap ", o.gap,
                                 " (refresh time is averaged over whole periods)");
  std::string tmp = (fs::temp_directory_path() / "frugal-bench-galore-XXXXXX").string();
  if (!mkdtemp(tmp.data())) fail("bench galore: cannot create a temp dir");
  o.model_dir = (fs::path(tmp) / "model").string();
  struct Cleanup {
    std::string d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{tmp};
  if (!o.json) std::fprintf(stderr, "bench galore: initializing preset %s in %s\n", o.preset.c_str(), tmp.c_str());
  init_model(LlamaConfig::preset(o.preset), o.model_dir, 1);

  std::vector<std::string> configs = {"adamw"};
  for (int r : o.ranks)
    for (const std::string& svd : o.svds)
      for (const std::string& m : o.moments) {
        const std::string c = str("galore:", r, ":", svd, m == "fp32" ? "" : ":" + m);
        configs.push_back(c);
        if (o.per_layer) configs.push_back(c + ":per-layer");
      }
  std::vector<nlohmann::json> res;
  for (const std::string& c : configs) {
    if (!o.json) std::fprintf(stderr, "bench galore: %s ...\n", c.c_str());
    res.push_back(spawn_one(o, c));
  }
  const double base_state = res[0]["optimizer_state_bytes"].get<double>();
  const double base_loss = mean_tail(res[0]["losses"].get<std::vector<double>>(), size_t(o.gap));
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const nlohmann::json& r : res) {
    const auto losses = r["losses"].get<std::vector<double>>();
    const auto secs = r["step_seconds"].get<std::vector<double>>();
    double total = 0;
    for (double s : secs) total += s;
    const double loss = mean_tail(losses, size_t(o.gap));
    out.push_back({{"config", r["config"]},
                   {"optimizer_state_bytes", r["optimizer_state_bytes"]},
                   {"optimizer_state_vs_adamw", r["optimizer_state_bytes"].get<double>() / base_state},
                   {"peak_rss_bytes", r["peak_rss_bytes"]},
                   {"loss_last_gap_mean", loss},
                   {"loss_vs_adamw", loss / base_loss},
                   {"first_loss", losses.front()},
                   {"step_seconds_median", median_of(secs)},
                   {"refresh_share", total > 0 ? r["refresh_seconds"].get<double>() / total : 0.0},
                   {"refreshes", r["refreshes"]}});
  }
  if (o.json) {
    nlohmann::ordered_json j = {{"preset", o.preset}, {"steps", o.steps}, {"gap", o.gap}, {"seq_len", o.seq_len},
                                {"micro_batch", o.micro_batch}, {"lr", o.lr}, {"galore_lr", o.galore_lr > 0 ? o.galore_lr : o.lr}, {"trainable_floats", res[0]["trainable_floats"]},
                                {"results", out}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("frugal bench galore: %s full fine-tuning (%.1fM trainable), B=%d T=%d, %d steps, refresh every %d, lr %g (GaLore %g)\n",
              o.preset.c_str(), res[0]["trainable_floats"].get<double>() / 1e6, o.micro_batch, o.seq_len, o.steps, o.gap,
              (double)o.lr, (double)(o.galore_lr > 0 ? o.galore_lr : o.lr));
  std::printf("%-33s %12s %8s %10s %10s %8s %10s %9s\n", "optimizer", "state MB", "vs AdamW", "peak RSS MB",
              "loss", "vs AdamW", "step s", "refresh %");
  for (const auto& r : out)
    std::printf("%-33s %12.1f %7.1f%% %10.1f %10.4f %7.2f%% %10.3f %8.1f%%\n", r["config"].get<std::string>().c_str(),
                r["optimizer_state_bytes"].get<double>() / 1048576.0, 100.0 * r["optimizer_state_vs_adamw"].get<double>(),
                r["peak_rss_bytes"].get<double>() / 1048576.0, r["loss_last_gap_mean"].get<double>(),
                100.0 * r["loss_vs_adamw"].get<double>(), r["step_seconds_median"].get<double>(),
                100.0 * r["refresh_share"].get<double>());
  std::printf("loss: mean over the last %d steps (first step's loss %.4f for all); refresh %%: projector refresh time / "
              "all step time over %d steps\n", o.gap, res[0]["losses"][0].get<double>(), o.steps);
}

}  // namespace

void register_bench_galore(CLI::App& bench_cmd) {
  auto o = std::make_shared<BenchGaloreOptions>();
  CLI::App* sub = bench_cmd.add_subcommand("galore", "GaLore-AdamW vs AdamW: optimizer state, peak RSS, loss, refresh time");
  sub->add_option("--preset", o->preset, "model preset (full fine-tuning of a bf16 base): small | llama3-8b-2layers | ...")
      ->capture_default_str();
  sub->add_option("--ranks", o->ranks, "GaLore ranks to run (each with the exact and the randomized projector)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--svd", o->svds, "projectors to run for each rank: exact, randomized")
      ->delimiter(',')
      ->check(CLI::IsMember({"exact", "randomized"}))
      ->capture_default_str();
  sub->add_option("--moments", o->moments, "GaLore moment storages to run for each rank and projector: fp32, int8")
      ->delimiter(',')
      ->check(CLI::IsMember({"fp32", "int8"}))
      ->capture_default_str();
  sub->add_option("--steps", o->steps, "optimizer steps per configuration (a multiple of --gap)")->capture_default_str();
  sub->add_option("--gap", o->gap, "galore.update_proj_gap")->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "tokens per row T")->capture_default_str();
  sub->add_option("--micro-batch", o->micro_batch, "rows per step B")->capture_default_str();
  sub->add_option("--grad-accum", o->grad_accum, "micro-batches per step (train.grad_accum)")->capture_default_str();
  sub->add_flag("--per-layer", o->per_layer, "also run each GaLore configuration with galore.per_layer (grad_clip 0)");
  sub->add_option("--lr", o->lr, "learning rate (constant) of every optimizer")->capture_default_str();
  sub->add_option("--galore-lr", o->galore_lr, "learning rate of the GaLore configurations (0: --lr)")->capture_default_str();
  sub->add_flag("--json", o->json, "print JSON instead of a table");
  sub->add_option("--run-one", o->run_one, "internal: run one configuration in this process")->group("");
  sub->add_option("--model-dir", o->model_dir, "internal: the model of --run-one")->group("");
  sub->callback([o] { run_bench_galore(*o); });
}

}  // namespace frugal
