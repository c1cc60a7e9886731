// cmd_eval.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_eval(CLI::App& app) { app.add_subcommand("eval", "(being written)"); }
}  // namespace frugal
