// cmd_export.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_export(CLI::App& app) { app.add_subcommand("export", "(being written)"); }
}  // namespace frugal
