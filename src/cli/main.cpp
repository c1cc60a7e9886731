// main.cpp: the `frugal` command line. Subcommands register in src/cli/cmd_*.cpp (see cli.h).
// Under mpirun (W ranks) MPI is initialized before parsing, every rank parses the same arguments,
// and an error on any rank ends the whole job with one message naming that rank (abort_job);
// without mpirun frugal is one rank and reports errors as "frugal: error: ...".
#include <cstdio>
#include <exception>
#include <sstream>

#include "sharding/comm.h"
#include "src/cli/cli.h"
#include "src/common.h"

int main(int argc, char** argv) {
  if (frugal::launched_by_mpirun()) {
    try {
      frugal::mpi_init(&argc, &argv);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "frugal: error: %s\n", e.what());
      return 1;
    }
  }
  const int W = frugal::mpi_world_size();
  const int rank = frugal::mpi_world_rank();

  CLI::App app{"frugal: memory-frugal fine-tuning of Llama-family models (QLoRA, FSDP)"};
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
  frugal::register_plan(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank parsed the same arguments, so every rank gets here: rank 0 prints (help, version
    // or the usage error), the others stay quiet, and all finalize normally.
    std::ostringstream quiet;
    const int code = rank == 0 ? app.exit(e) : app.exit(e, quiet, quiet);
    frugal::mpi_finalize();
    return code;
  } catch (const frugal::Error& e) {
    if (W > 1) frugal::abort_job(e.what(), 1);
    std::fprintf(stderr, "frugal: error: %s\n", e.what());
    frugal::mpi_finalize();
    return 1;
  } catch (const std::exception& e) {
    if (W > 1) frugal::abort_job(frugal::str("internal error: ", e.what()), 2);
    std::fprintf(stderr, "frugal: internal error: %s\n", e.what());
    frugal::mpi_finalize();
    return 2;
  }
  frugal::mpi_finalize();
  return 0;
}
