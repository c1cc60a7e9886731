// main.cpp: the `frugal` command line. Subcommands register in src/cmd_*.cpp (see cli.h).
#include <cstdio>
#include <exception>

#include "src/cli.h"
#include "src/common.h"

int main(int argc, char** argv) {
  CLI::App app{"frugal: memory-frugal fine-tuning of Llama-family models (QLoRA, FSDP, GaLore)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "frugal 0.1.0");
  frugal::register_init(app);
  frugal::register_inspect(app);
  frugal::register_bench(app);
  frugal::register_eval(app);
  frugal::register_train(app);
  frugal::register_export(app);
  frugal::register_tokenize(app);
  frugal::register_import_gguf(app);
  frugal::register_prepare(app);
  frugal::register_generate(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "frugal: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "frugal: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
