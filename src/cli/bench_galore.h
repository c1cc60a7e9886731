// bench_galore.h: `frugal bench galore`: GaLore-AdamW against AdamW on full fine-tuning of a preset
// (optimizer-state bytes, peak RSS, loss after the same steps, share of time in projector refreshes).
#pragma once
#include <CLI/CLI.hpp>

namespace frugal {
void register_bench_galore(CLI::App& bench_cmd);
}  // namespace frugal
