// cmd_bench.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_bench(CLI::App& app) { app.add_subcommand("bench", "(being written)"); }
}  // namespace frugal
