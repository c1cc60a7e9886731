// cmd_plan.cpp: `frugal plan RECIPE.toml --world W [--device-memory 24GiB] [--json] [--set k=v ...]`:
// per-rank memory by category, on the device and on the host, and whether it fits (src/train/plan.h).
// Runs as one process (not under mpirun): it plans the W-rank job, it does not start it.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "src/cli/cli.h"
#include "src/train/plan.h"
#include "src/train/recipe.h"

namespace frugal {

namespace {
struct PlanArgs {
  std::string recipe, device_memory, host_memory;
  std::vector<std::string> sets;
  int world = 1, threads = 0, ranks_per_node = 0;
  bool json = false;
};

void run_plan(const PlanArgs& a) {
  const Recipe r = Recipe::load(a.recipe, a.sets);
  PlanOptions o;
  o.world = a.world;
  o.device_memory = a.device_memory.empty() ? 0 : parse_byte_size(a.device_memory);
  if (!a.device_memory.empty() && !(o.device_memory > 0)) fail("--device-memory must be > 0, got '", a.device_memory, "'");
  o.host_memory = a.host_memory.empty() ? 0 : parse_byte_size(a.host_memory);
  o.threads = a.threads;
  o.ranks_per_node = a.ranks_per_node;
  const Plan p = make_plan(r, o);
  if (a.json)
    std::printf("%s\n", plan_json(p).dump(2).c_str());
  else
    std::printf("%s", format_plan(p).c_str());
}
}  // namespace

void register_plan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* sub = app.add_subcommand("plan", "per-rank memory plan of a recipe (device/host, by category) and whether it fits");
  sub->add_option("recipe", a->recipe, "recipe file (TOML)")->required();
  sub->add_option("--world,-w", a->world, "ranks (mpirun -np W); 1 = the single-process trainer")->check(CLI::PositiveNumber);
  sub->add_option("--device-memory", a->device_memory,
                  "GPU memory per rank (24GiB, 80GB, ...): plan for a GPU; without it: the CPU backend (device == host)");
  sub->add_option("--host-memory", a->host_memory, "host RAM per node (default: this machine's MemTotal)");
  sub->add_option("--ranks-per-node", a->ranks_per_node, "ranks sharing the host RAM (default: W, all on this node)");
  sub->add_option("--threads", a->threads, "OpenMP threads per rank (default: OMP_NUM_THREADS / this machine)");
  sub->add_option("--set", a->sets, "override a recipe key: --set data.seq_len=4096 (repeatable)");
  sub->add_flag("--json", a->json, "print the plan as JSON (bytes)");
  sub->callback([a] { run_plan(*a); });
}

}  // namespace frugal
