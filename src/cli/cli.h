// cli.h: each `frugal` subcommand lives in src/cli/cmd_<name>.cpp and registers itself on the app.
// The callback runs the command; errors are thrown as frugal::Error and reported by main().
#pragma once
#include <CLI/CLI.hpp>

namespace frugal {
void register_init(CLI::App& app);     // frugal init: random-init model in HF format
void register_inspect(CLI::App& app);  // frugal inspect: list tensors of a safetensors file
void register_bench(CLI::App& app);    // frugal bench ops|...: benchmarks
void register_eval(CLI::App& app);     // frugal eval: loss / perplexity on a token file
void register_train(CLI::App& app);    // frugal train RECIPE.toml: QLoRA fine-tuning
void register_export(CLI::App& app);   // frugal export: PEFT adapter / merged HF model
void register_tokenize(CLI::App& app); // frugal tokenize: text -> token ids (tokenizer.json)
void register_import_gguf(CLI::App& app);  // frugal import-gguf: llama.cpp GGUF -> HF model dir
void register_prepare(CLI::App& app);  // frugal prepare: JSONL/text -> HDF5 token dataset
void register_generate(CLI::App& app); // frugal generate: sampling with a KV cache
void register_plan(CLI::App& app);     // frugal plan: per-rank memory plan of a recipe (src/train/plan.h)
}  // namespace frugal
