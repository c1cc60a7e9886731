// cmd_tokenize.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_tokenize(CLI::App& app) { app.add_subcommand("tokenize", "(being written)"); }
}  // namespace frugal
