// cmd_init.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_init(CLI::App& app) { app.add_subcommand("init", "(being written)"); }
}  // namespace frugal
