// nccl_comm.cu: NcclCommunicator (see nccl_comm.h). Device buffers, one CUDA stream, one NCCL
// communicator per instance; the ncclUniqueId travels over the bootstrap (MPI) communicator.
#include <chrono>
#include <mutex>
#include <thread>

#include "kernels/cuda/cuda_check.cuh"
#include "sharding/nccl_comm.h"

namespace frugal {

bool nccl_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return false;
  }
  return n > 0;
}

struct NcclCommunicator::State {
  int rank = 0, world = 1, device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int* barrier_buf = nullptr;  // device int for the barrier (NCCL has none: an all-reduce of 1)
  std::mutex m;                // guards `aborted` and the abort itself
  bool aborted = false;
  std::string abort_reason;

  // Ends the NCCL communicator so its kernels stop waiting for peers. Idempotent.
  void abort(const std::string& why) {
    std::lock_guard<std::mutex> lk(m);
    if (aborted) return;
    aborted = true;
    abort_reason = why;
    ncclCommAbort(comm);
  }
  void check_usable(const std::string& what) {
    std::lock_guard<std::mutex> lk(m);
    if (aborted) fail("rank ", rank, "/", world, ": ", what, ": the NCCL communicator was aborted (", abort_reason, ")");
  }
};

namespace {

ncclDataType_t nccl_type(CommType t) {
  switch (t) {
    case CommType::U8: return ncclUint8;
    case CommType::I32: return ncclInt32;
    case CommType::I64: return ncclInt64;
    case CommType::F32: return ncclFloat32;
    case CommType::F64: return ncclFloat64;
    case CommType::BF16: return ncclBfloat16;
  }
  fail("nccl_type: unknown CommType ", static_cast<int>(t));
}

ncclRedOp_t nccl_op(CommOp op) {
  switch (op) {
    case CommOp::Sum: return ncclSum;
    case CommOp::Max: return ncclMax;
    case CommOp::Min: return ncclMin;
  }
  fail("nccl_op: unknown CommOp ", static_cast<int>(op));
}

// A collective enqueued on the stream, complete when its event is.
struct NcclRequestImpl : CommRequest::Impl {
  std::shared_ptr<NcclCommunicator::State> s;
  const Communicator* comm;  // for the timeout, read only while the request is pending
  cudaEvent_t ev = nullptr;
  std::string what;
  bool done = false;

  ~NcclRequestImpl() override {
    if (ev) cudaEventDestroy(ev);
  }
  // One poll: true when complete; throws on a CUDA or NCCL error.
  bool poll() {
    if (done) return true;
    CUDA_CHECK(cudaSetDevice(s->device));
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return done = true;
    if (e != cudaErrorNotReady) CUDA_CHECK(e);
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(s->comm, &async));
    if (async != ncclSuccess && async != ncclInProgress)
      fail("rank ", s->rank, "/", s->world, ": ", what, " failed: NCCL: ", ncclGetErrorString(async));
    return false;
  }
  void wait() override {
    if (done) return;
    s->check_usable(what);
    const double t = comm->timeout_seconds();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                  std::chrono::duration<double>(t));
    while (!poll()) {
      if (std::chrono::steady_clock::now() > deadline) {
        const std::string msg = str("rank ", s->rank, "/", s->world, ": ", what, " did not finish within ", t,
                                    " s (a peer rank is stuck or dead)");
        s->abort(msg);
        throw Error(msg);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  bool test() override { return poll(); }
  void abandon() override {
    // The rank is failing: stop the device-side collective so freed buffers are never written.
    if (!done) s->abort(str(what, " abandoned (this rank is failing)"));
  }
};

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device) : s_(std::make_shared<State>()) {
  s_->rank = bootstrap.rank();
  s_->world = bootstrap.world();
  int ndev = 0;
  CUDA_CHECK(cudaGetDeviceCount(&ndev));
  if (ndev == 0) fail("rank ", s_->rank, "/", s_->world, ": NcclCommunicator: no CUDA device");
  s_->device = device >= 0 ? device : s_->rank % ndev;
  if (s_->device >= ndev)
    fail("rank ", s_->rank, "/", s_->world, ": NcclCommunicator: device ", s_->device, " but only ", ndev, " visible");
  CUDA_CHECK(cudaSetDevice(s_->device));

  // Rank 0 makes the id; everyone gets it over the bootstrap communicator (as raw bytes).
  ncclUniqueId id;
  if (s_->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(&id), sizeof(id)), 0);
  NCCL_CHECK(ncclCommInitRank(&s_->comm, s_->world, id, s_->rank));
  CUDA_CHECK(cudaStreamCreateWithFlags(&s_->stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaMalloc(&s_->barrier_buf, sizeof(int)));
  CUDA_CHECK(cudaMemset(s_->barrier_buf, 0, sizeof(int)));
  set_timeout_seconds(bootstrap.timeout_seconds());
}

NcclCommunicator::~NcclCommunicator() {
  // Destroy cleanly only when the stream drains within the timeout; otherwise a peer is gone and
  // the communicator must be aborted (ncclCommDestroy would wait for it forever). No throwing.
  cudaSetDevice(s_->device);
  bool drained = false;
  {
    std::lock_guard<std::mutex> lk(s_->m);
    drained = s_->aborted;  // nothing left to wait for
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                std::chrono::duration<double>(timeout_seconds()));
  while (!drained && std::uncaught_exceptions() == 0) {
    cudaError_t e = cudaStreamQuery(s_->stream);
    if (e == cudaSuccess) {
      drained = true;
      break;
    }
    if (e != cudaErrorNotReady || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  {
    std::lock_guard<std::mutex> lk(s_->m);
    if (!s_->aborted) {
      if (drained) ncclCommDestroy(s_->comm);
      else ncclCommAbort(s_->comm);
      s_->aborted = true;
      s_->abort_reason = "communicator destroyed";
    }
  }
  if (s_->barrier_buf) cudaFree(s_->barrier_buf);
  if (s_->stream) cudaStreamDestroy(s_->stream);
}

int NcclCommunicator::rank() const { return s_->rank; }
int NcclCommunicator::world() const { return s_->world; }
int NcclCommunicator::device() const { return s_->device; }
void* NcclCommunicator::stream() const { return static_cast<void*>(s_->stream); }

namespace {

// Enqueues `call` (an NCCL collective on the stream) and returns a request on an event after it.
template <class F>
CommRequest enqueue(const std::shared_ptr<NcclCommunicator::State>& s, const Communicator* comm, std::string what, F call) {
  s->check_usable(what);
  CUDA_CHECK(cudaSetDevice(s->device));
  auto impl = std::make_unique<NcclRequestImpl>();
  impl->s = s;
  impl->comm = comm;
  impl->what = std::move(what);
  try {
    NCCL_CHECK(call());
  } catch (const Error& e) {
    fail("rank ", s->rank, "/", s->world, ": ", impl->what, ": ", e.what());
  }
  CUDA_CHECK(cudaEventCreateWithFlags(&impl->ev, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(impl->ev, s->stream));
  return CommRequest(std::move(impl));
}

std::string describe(const char* coll, size_t count, CommType type) {
  return str(coll, " of ", count, " ", comm_type_name(type));
}

}  // namespace

CommRequest NcclCommunicator::start_all_gather_raw(const void* send, void* recv, size_t count, CommType type) {
  // In place (send == recv + rank·count) is NCCL's own in-place convention.
  return enqueue(s_, this, describe("all_gather", count, type), [&] {
    return ncclAllGather(send, recv, count, nccl_type(type), s_->comm, s_->stream);
  });
}

CommRequest NcclCommunicator::start_reduce_scatter_raw(const void* send, void* recv, size_t count, CommType type,
                                                       CommOp op) {
  return enqueue(s_, this, describe("reduce_scatter", count, type), [&] {
    return ncclReduceScatter(send, recv, count, nccl_type(type), nccl_op(op), s_->comm, s_->stream);
  });
}

CommRequest NcclCommunicator::start_all_reduce_raw(void* inout, size_t count, CommType type, CommOp op) {
  return enqueue(s_, this, describe("all_reduce", count, type), [&] {
    return ncclAllReduce(inout, inout, count, nccl_type(type), nccl_op(op), s_->comm, s_->stream);
  });
}

CommRequest NcclCommunicator::start_broadcast_raw(void* buf, size_t count, CommType type, int root) {
  const std::string what = str(describe("broadcast", count, type), " from rank ", root);
  if (root < 0 || root >= s_->world) fail("rank ", s_->rank, "/", s_->world, ": ", what, ": root is not a rank");
  return enqueue(s_, this, what, [&] {
    return ncclBroadcast(buf, buf, count, nccl_type(type), root, s_->comm, s_->stream);
  });
}

CommRequest NcclCommunicator::start_barrier_raw() {
  return enqueue(s_, this, "barrier", [&] {
    return ncclAllReduce(s_->barrier_buf, s_->barrier_buf, 1, ncclInt32, ncclSum, s_->comm, s_->stream);
  });
}

}  // namespace frugal
