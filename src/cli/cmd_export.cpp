// cmd_export.cpp: `frugal export --checkpoint PATH (--adapter OUT | --merged OUT) [--base DIR]
// [--shard-size BYTES] [--bf16]`: a training checkpoint as a PEFT adapter directory, or as the
// base model with LoRA merged (HF sharded bf16 safetensors). The work is in src/train/export.cpp.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "src/cli/cli.h"
#include "src/train/export.h"

namespace frugal {

void register_export(CLI::App& app) {
  struct Opts {
    std::string checkpoint, adapter, merged, base;
    size_t shard_size = 5'000'000'000ull;
    bool bf16 = false, verbose = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("export", "export a checkpoint as a PEFT adapter or a merged HF model");
  cmd->add_option("--checkpoint", o->checkpoint, "training checkpoint (.h5)")->required()->check(CLI::ExistingFile);
  auto* a = cmd->add_option("--adapter", o->adapter, "write a PEFT adapter dir (adapter_config.json + adapter_model.safetensors)");
  auto* m = cmd->add_option("--merged", o->merged, "write the base model with LoRA merged (HF sharded bf16 safetensors)");
  a->excludes(m);
  cmd->add_option("--base", o->base, "base model dir for --merged (default: the one recorded in the checkpoint)");
  cmd->add_option("--shard-size", o->shard_size, "shard limit in bytes for --merged (default 5e9)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--bf16", o->bf16, "store the adapter tensors as BF16 instead of F32");
  cmd->add_flag("-v,--verbose", o->verbose, "one line per tensor");
  cmd->callback([o]() {
    if (o->adapter.empty() && o->merged.empty()) throw CLI::RequiredError("--adapter or --merged");
    ExportOptions opt;
    opt.max_shard_bytes = o->shard_size;
    opt.adapter_bf16 = o->bf16;
    opt.verbose = o->verbose;
    auto t0 = std::chrono::steady_clock::now();
    if (!o->adapter.empty()) export_adapter(o->checkpoint, o->adapter, opt);
    else export_merged(o->checkpoint, o->merged, o->base, opt);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("frugal export: %s -> %s (%s) in %.1f s\n", o->checkpoint.c_str(),
                (o->adapter.empty() ? o->merged : o->adapter).c_str(), o->adapter.empty() ? "merged" : "adapter", sec);
  });
}

}  // namespace frugal
