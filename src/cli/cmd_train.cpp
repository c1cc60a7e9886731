// cmd_train.cpp: `frugal train RECIPE.toml [--set k=v ...] [--resume PATH|auto] [--max-steps N]
// [--dry-run]`: QLoRA fine-tuning driven by a TOML recipe (src/train/recipe.h); the loop is Trainer
// (src/train/trainer.h). --dry-run prints the effective recipe and the memory plan (src/train/plan.h, the
// planner of `frugal plan`, at the world size mpirun started) and exits; rank 0 prints.
// --resume auto continues from output_dir/checkpoints/latest when there is one (else starts fresh).
// --max-steps N stops after optimizer step N (the schedule still spans train.steps), e.g. to
// interrupt a run on purpose and resume it.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "src/cli/cli.h"
#include "src/train/plan.h"
#include "src/train/recipe.h"
#include "src/train/trainer.h"

namespace frugal {

namespace {
struct TrainArgs {
  std::string recipe, resume, device;
  std::vector<std::string> sets;
  int64_t max_steps = -1;
  bool dry_run = false, quiet = false;
};

// The memory planner's table (src/train/plan.h) for this job: W = the ranks mpirun started (1 without
// mpirun), the CPU backend. The same figures as `frugal plan RECIPE --world W`.
std::string memory_plan(const Recipe& r) {
  PlanOptions o;
  o.world = mpi_world_size();
  // Under mpirun this process's RSS already holds MPI, which the planner adds for W > 1 as
  // kMpiRuntimeBytes: measure without it, else MPI would be counted twice.
  if (o.world > 1)
    o.runtime_bytes = std::max<int64_t>(0, (int64_t)plan_measure_runtime_bytes() - (int64_t)kMpiRuntimeBytes);
  return format_plan(make_plan(r, o));
}

void run_train(const TrainArgs& a) {
  std::vector<std::string> sets = a.sets;
  if (!a.device.empty()) sets.push_back("device.backend=" + a.device);  // --device = --set device.backend=
  const Recipe r = Recipe::load(a.recipe, sets);
  backend_by_name(r.device_backend);  // an unbuilt backend fails before any work
  const bool rank0 = mpi_world_rank() == 0;  // under mpirun every rank runs this; one talks
  if (a.dry_run) {
    if (rank0) {
      std::printf("# effective recipe (%s)\n%s\n", a.recipe.c_str(), r.to_toml().c_str());
      std::printf("# plan\n%s", memory_plan(r).c_str());
    }
    return;
  }
  if (!a.quiet && rank0) std::fprintf(stderr, "%s", memory_plan(r).c_str());
  Trainer t(r);
  t.verbose = !a.quiet;
  if (!a.resume.empty()) {
    if (a.resume == "auto") {
      const auto latest = std::filesystem::path(r.output_dir) / "checkpoints" / "latest";
      if (std::filesystem::exists(latest))
        t.resume(Trainer::latest_checkpoint(r.output_dir));
      else if (rank0)
        std::fprintf(stderr, "frugal train: --resume auto: no %s, starting from step 0\n", latest.c_str());
    } else {
      t.resume(a.resume);
    }
  }
  t.run(a.max_steps);
}
}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* sub = app.add_subcommand("train", "QLoRA fine-tuning from a TOML recipe");
  sub->add_option("recipe", a->recipe, "recipe file (TOML)")->required();
  sub->add_option("--set", a->sets, "override a recipe key: --set lora.rank=32 (repeatable)");
  sub->add_option("--resume", a->resume, "checkpoint to continue from, or 'auto' (output_dir/checkpoints/latest)");
  sub->add_option("--max-steps", a->max_steps, "stop after optimizer step N (the LR schedule still spans train.steps)");
  sub->add_option("--device", a->device, "backend the ops run on: cpu | cuda (overrides device.backend)");
  sub->add_flag("--dry-run", a->dry_run, "print the effective recipe and the per-rank memory plan (as frugal plan), then exit");
  sub->add_flag("-q,--quiet", a->quiet, "no progress output (metrics.jsonl is still written)");
  sub->callback([a] { run_train(*a); });
}

}  // namespace frugal
