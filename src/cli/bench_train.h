// bench_train.h: `frugal bench train`: tokens/s and peak memory of a QLoRA training step on a
// randomly initialized preset (built in a temp dir), LoRA on all linears, synthetic data.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "src/train/recipe.h"

namespace frugal {
// The benchmark recipe `bench train` and `bench shard` share: a preset created in model_path,
// LoRA of `rank` (alpha 2·rank) on all linears, synthetic data, constant lr, no accumulation.
Recipe bench_recipe(const std::string& preset, const std::string& quant, int rank, int seq_len,
                    int micro_batch, int steps, const std::string& model_path, const std::string& output_dir);

// The median of a sample (the mean of the middle two for an even count; 0 for none): the one
// statistic every bench reports for step and op times.
double median_of(std::vector<double> v);

// Adds the `train` subcommand to `frugal bench` (the lead wires it into register_bench).
void register_bench_train(CLI::App& bench_cmd);
}  // namespace frugal
