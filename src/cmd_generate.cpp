// cmd_generate.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_generate(CLI::App& app) { app.add_subcommand("generate", "(being written)"); }
}  // namespace frugal
