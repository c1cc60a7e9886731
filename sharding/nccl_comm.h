// nccl_comm.h: the device communicator (CUDA builds only; defined in nccl_comm.cu). Same
// collectives as comm.h, but every buffer is DEVICE memory of this rank's GPU.
//
// NcclCommunicator runs all collectives on one CUDA stream of its own, in submission order;
// start_* enqueues the NCCL call, records an event and returns. wait() polls the event (and
// NCCL's asynchronous error state) until it completes or timeout_seconds() pass; on timeout the
// NCCL communicator is aborted (its kernels would otherwise spin forever on the device) and
// frugal::Error names the collective and the rank. After an abort every further call fails.
// bf16 reductions are native in NCCL (unlike MPI).
// No CUDA types here, so host-only code can hold one through Communicator&.
#pragma once
#include <memory>
#include <string>

#include "sharding/comm.h"

namespace frugal {

// True when a CUDA device is visible (never throws). Like the class, defined only in CUDA builds.
bool nccl_available();

class NcclCommunicator : public Communicator {
 public:
  // Collective over `bootstrap` (an MPI communicator spanning the same ranks, or a self
  // communicator for W = 1): rank 0 creates the ncclUniqueId and broadcasts it over bootstrap;
  // rank and world are bootstrap's. device: CUDA ordinal for this rank, -1 = rank % device count.
  explicit NcclCommunicator(Communicator& bootstrap, int device = -1);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int world() const override;
  std::string backend() const override { return "nccl"; }
  int device() const;
  // The cudaStream_t (as void*) the collectives run on, so callers can order kernels with them.
  void* stream() const;

  struct State;  // CUDA/NCCL handles (nccl_comm.cu)

 protected:
  CommRequest start_all_gather_raw(const void* send, void* recv, size_t count, CommType type) override;
  CommRequest start_reduce_scatter_raw(const void* send, void* recv, size_t count, CommType type, CommOp op) override;
  CommRequest start_all_reduce_raw(void* inout, size_t count, CommType type, CommOp op) override;
  CommRequest start_broadcast_raw(void* buf, size_t count, CommType type, int root) override;
  CommRequest start_barrier_raw() override;

 private:
  std::shared_ptr<State> s_;
};

}  // namespace frugal
