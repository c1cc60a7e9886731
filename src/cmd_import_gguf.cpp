// cmd_import_gguf.cpp: placeholder registration, replaced by the command's real implementation.
#include "src/cli.h"
namespace frugal {
void register_import_gguf(CLI::App& app) { app.add_subcommand("import-gguf", "(being written)"); }
}  // namespace frugal
