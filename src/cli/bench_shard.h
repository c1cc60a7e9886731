// bench_shard.h: `frugal bench shard`: what FSDP communication costs a sharded QLoRA training step
// (bytes all-gathered / reduce-scattered per rank, communication the compute thread waited for,
// step time) with prefetch off and on, under mpirun -np W.
#pragma once
#include <CLI/CLI.hpp>

namespace frugal {
// Adds the `shard` subcommand to `frugal bench` (registered in cmd_bench.cpp's register_bench).
void register_bench_shard(CLI::App& bench_cmd);
}  // namespace frugal
