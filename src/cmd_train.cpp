// cmd_train.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_train(CLI::App& app) { app.add_subcommand("train", "(being written)"); }
}  // namespace frugal
