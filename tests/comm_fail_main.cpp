// comm_fail_main.cpp: how a multi-rank job ends when one rank fails, dies or stops. Run under
// mpirun -np >= 2. Every rank completes one all_gather; then rank 1 misbehaves while the others
// wait in a second all_gather that rank 1 never joins. Modes (argv[1]):
//   throw  (default) rank 1 throws frugal::Error. The error reaches the same handler as frugal's
//          main (abort_job), which prints "frugal: rank 1/W: ..." and MPI_Aborts the job. The
//          waiting ranks' timeout is 120 s and the ctest TIMEOUT 60 s, so the test passes only if
//          the abort, not a timeout, ended them (ctest comm_fail_np2/_np4).
//   die    rank 1 kills itself with SIGKILL (as `kill -9`). Under `mpirun --enable-recovery`
//          (mpirun does not end the job itself) only the survivors' own timeout (FRUGAL_COMM_TIMEOUT)
//          can end it: their liveness probe must name rank 1 as not answering.
//   stuck  rank 1 sleeps (alive, its progress thread idle): the survivors' timeout must fire and
//          the probe must report that every rank answered (alive, so not "dead").
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "sharding/comm.h"

int main(int argc, char** argv) {
  using namespace frugal;
  try {
    mpi_init(&argc, &argv);
    const std::string mode = argc > 1 ? argv[1] : "throw";
    if (mode != "throw" && mode != "die" && mode != "stuck")
      fail("comm_fail_main: unknown mode '", mode, "' (throw | die | stuck)");
    std::unique_ptr<Communicator> comm = make_world_communicator();
    if (comm->world() < 2) fail("comm_fail_main: run under mpirun -np 2 or more");
    if (mode == "throw") comm->set_timeout_seconds(120);  // else FRUGAL_COMM_TIMEOUT (or the default)
    comm->barrier();
    const int W = comm->world(), R = comm->rank();
    std::vector<float> send(1023, float(R)), recv(1023 * W);
    comm->all_gather(std::span<const float>(send), std::span<float>(recv));  // every rank completes this one
    if (R == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the others are waiting by now
      if (mode == "die") std::raise(SIGKILL);
      if (mode == "stuck") std::this_thread::sleep_for(std::chrono::hours(1));
      fail("injected failure while the other ranks wait in a collective");
    }
    comm->all_gather(std::span<const float>(send), std::span<float>(recv));  // rank 1 never joins
    std::printf("rank %d: all_gather finished although rank 1 failed (should not happen)\n", R);
    comm.reset();
    mpi_finalize();
    return 0;
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
}
