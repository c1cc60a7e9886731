// comm_fail_main.cpp: one failing rank must end the whole job, quickly, with one message naming it.
// Run under mpirun -np >= 2 (ctest comm_fail_np2 / _np4): rank 1 throws frugal::Error while every
// other rank waits in an all_gather that rank 1 will never join. The error reaches the same handler
// as frugal's main (abort_job), which prints "frugal: rank 1/W: ..." and MPI_Aborts the job. The
// waiting ranks' timeout is 120 s and the ctest TIMEOUT 60 s, so the test passes only if the abort,
// not a timeout, ended them; a rank-0 message would mean the wrong rank reported.
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "sharding/comm.h"

int main(int argc, char** argv) {
  using namespace frugal;
  try {
    mpi_init(&argc, &argv);
    std::unique_ptr<Communicator> comm = make_world_communicator();
    if (comm->world() < 2) fail("comm_fail_main: run under mpirun -np 2 or more");
    comm->set_timeout_seconds(120);
    comm->barrier();
    const int W = comm->world(), R = comm->rank();
    std::vector<float> send(1023, float(R)), recv(1023 * W);
    comm->all_gather(std::span<const float>(send), std::span<float>(recv));  // every rank completes this one
    if (R == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the others are waiting by now
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
