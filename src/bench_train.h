// bench_train.h: `frugal bench train`: tokens/s and peak memory of a QLoRA training step on a
// randomly initialized preset (built in a temp dir), LoRA on all linears, synthetic data.
#pragma once
#include <CLI/CLI.hpp>

namespace frugal {
// Adds the `train` subcommand to `frugal bench` (the lead wires it into register_bench).
void register_bench_train(CLI::App& bench_cmd);
}  // namespace frugal
