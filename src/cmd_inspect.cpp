// cmd_inspect.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_inspect(CLI::App& app) { app.add_subcommand("inspect", "(being written)"); }
}  // namespace frugal
