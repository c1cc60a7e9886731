// cmd_init.cpp: `frugal init` — write a randomly initialized Llama model in Hugging Face format.
//   frugal init --preset tiny|small|llama3-8b-2layers|llama3-70b-2layers|llama3.1-8b|llama3.1-70b --out DIR [--seed S]
//               [--tokenizer tokenizer.json] [--force]
// (or --config config.json instead of --preset). The work is init_model() in src/model/init.cpp.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "src/cli/cli.h"
#include "src/model/config.h"
#include "src/model/init.h"

namespace frugal {

namespace {
struct InitArgs {
  std::string preset, config, out, tokenizer;
  uint64_t seed = 0;
  bool force = false, verbose = false;
};

void run_init(const InitArgs& a) {
  LlamaConfig cfg = a.preset.empty() ? LlamaConfig::load(a.config) : LlamaConfig::preset(a.preset);
  InitOptions opt;
  opt.tokenizer = a.tokenizer;
  opt.force = a.force;
  opt.verbose = a.verbose;
  auto t0 = std::chrono::steady_clock::now();
  LlamaConfig out = init_model(cfg, a.out, a.seed, opt);
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t n = out.num_parameters();
  std::printf("frugal init: %s: %lld parameters (%.2f GB bf16), vocab %d, %d layers, seed %llu, %.1f s\n",
              a.out.c_str(), (long long)n, (double)n * 2 / 1e9, out.vocab_size, out.num_hidden_layers,
              (unsigned long long)a.seed, sec);
}
}  // namespace

void register_init(CLI::App& app) {
  auto args = std::make_shared<InitArgs>();
  CLI::App* sub = app.add_subcommand("init", "write a randomly initialized Llama model (HF format, bf16)");
  std::string names;
  for (auto& n : config_preset_names()) names += (names.empty() ? "" : "|") + n;
  auto* p = sub->add_option("--preset", args->preset, "model shape: " + names);
  auto* c = sub->add_option("--config", args->config, "model shape from a config.json (file or dir)");
  p->excludes(c);
  sub->add_option("--out", args->out, "output directory (must be empty or absent)")->required();
  sub->add_option("--seed", args->seed, "random seed (same seed, same weights)");
  sub->add_option("--tokenizer", args->tokenizer, "tokenizer.json to copy; sets vocab_size and bos/eos ids")
      ->check(CLI::ExistingFile);
  sub->add_flag("--force", args->force, "overwrite a non-empty output directory");
  sub->add_flag("-v,--verbose", args->verbose, "print one line per tensor");
  sub->callback([args, sub]() {
    if (args->preset.empty() && args->config.empty()) throw CLI::RequiredError("--preset or --config");
    run_init(*args);
  });
}

}  // namespace frugal
