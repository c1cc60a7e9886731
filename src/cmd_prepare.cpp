// cmd_prepare.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_prepare(CLI::App& app) { app.add_subcommand("prepare", "(being written)"); }
}  // namespace frugal
