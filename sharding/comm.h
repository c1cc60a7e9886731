// comm.h: the communicator FSDP runs on. World size and rank come from mpirun (MPI_Init_thread);
// without mpirun frugal is one rank (W = 1) and every collective is a local copy.
//
// Collectives (sum is the only reduction FSDP needs; max/min for failure counts and timings):
//   all_gather      send [n] on every rank            -> recv [W·n], rank r's block at r·n
//   reduce_scatter  send [W·n] on every rank          -> recv [n] = Σ_ranks send[rank·n .. +n]
//   all_reduce      inout [n]                         -> elementwise op over ranks, in place
//   broadcast       buf [n] on root                   -> buf on every rank
//   barrier
// Each has an asynchronous form (start_*) returning a CommRequest; wait() blocks until it is
// done. Buffers must stay alive and untouched until then. Spans are typed (CommSpan<T>): sizes
// are ELEMENT counts and the element type picks the wire type, so a byte/element mix-up does not
// compile. A collective that does not finish within timeout_seconds() throws frugal::Error
// naming the collective, the rank and the timeout; the caller then aborts the job (a hung peer
// never hangs the others forever).
//
// MpiCommunicator (comm_mpi.cpp): host buffers; all MPI calls are made by one progress thread
// that runs the queued collectives in submission order, so compute threads overlap with
// communication. NcclCommunicator (nccl_comm.cu, CUDA builds): device buffers, one CUDA stream,
// ncclUniqueId broadcast over the MPI communicator.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "src/common.h"

namespace frugal {

enum class CommOp { Sum, Max, Min };
enum class CommType { U8, I32, I64, F32, F64, BF16 };

template <class T> struct CommTypeOf;
template <> struct CommTypeOf<uint8_t> { static constexpr CommType v = CommType::U8; };
template <> struct CommTypeOf<int32_t> { static constexpr CommType v = CommType::I32; };
template <> struct CommTypeOf<int64_t> { static constexpr CommType v = CommType::I64; };
template <> struct CommTypeOf<float> { static constexpr CommType v = CommType::F32; };
template <> struct CommTypeOf<double> { static constexpr CommType v = CommType::F64; };
template <> struct CommTypeOf<bf16> { static constexpr CommType v = CommType::BF16; };
size_t comm_type_size(CommType t);
const char* comm_type_name(CommType t);

// A pending asynchronous collective. wait() is idempotent; destroying an unwaited request waits
// (errors swallowed), except during stack unwinding, where it abandons the collective (see
// Impl::abandon).
class CommRequest {
 public:
  struct Impl {
    virtual ~Impl() = default;
    virtual void wait() = 0;       // throws frugal::Error on timeout / failure
    virtual bool test() = 0;       // done?
    // Called instead of wait() when the request dies during stack unwinding (this rank is failing
    // and will abort the job): stop driving the collective without waiting for peers, so a dead
    // or diverged peer cannot stall the abort. The communicator is unusable afterwards.
    virtual void abandon() { wait(); }
  };
  CommRequest() = default;
  explicit CommRequest(std::unique_ptr<Impl> p) : p_(std::move(p)) {}
  CommRequest(CommRequest&&) noexcept = default;
  // Waits for the request it replaces; a failure of that one propagates (hence not noexcept).
  CommRequest& operator=(CommRequest&& o);
  ~CommRequest();
  void wait();
  bool test();
  bool valid() const { return p_ != nullptr; }

 private:
  std::unique_ptr<Impl> p_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string backend() const = 0;  // "mpi", "nccl", "self"
  double timeout_seconds() const { return timeout_s_; }
  void set_timeout_seconds(double s) { timeout_s_ = s; }

  // ---- typed API (what callers use) ----
  template <class T> CommRequest start_all_gather(std::span<const T> send, std::span<T> recv) {
    check_gather(send.size(), recv.size(), "all_gather");
    return start_all_gather_raw(send.data(), recv.data(), send.size(), CommTypeOf<T>::v);
  }
  template <class T> CommRequest start_reduce_scatter(std::span<const T> send, std::span<T> recv, CommOp op = CommOp::Sum) {
    check_gather(recv.size(), send.size(), "reduce_scatter");
    return start_reduce_scatter_raw(send.data(), recv.data(), recv.size(), CommTypeOf<T>::v, op);
  }
  template <class T> CommRequest start_all_reduce(std::span<T> inout, CommOp op = CommOp::Sum) {
    return start_all_reduce_raw(inout.data(), inout.size(), CommTypeOf<T>::v, op);
  }
  template <class T> CommRequest start_broadcast(std::span<T> buf, int root) {
    return start_broadcast_raw(buf.data(), buf.size(), CommTypeOf<T>::v, root);
  }
  CommRequest start_barrier() { return start_barrier_raw(); }

  template <class T> void all_gather(std::span<const T> send, std::span<T> recv) { start_all_gather(send, recv).wait(); }
  template <class T> void reduce_scatter(std::span<const T> send, std::span<T> recv, CommOp op = CommOp::Sum) {
    start_reduce_scatter(send, recv, op).wait();
  }
  template <class T> void all_reduce(std::span<T> inout, CommOp op = CommOp::Sum) { start_all_reduce(inout, op).wait(); }
  template <class T> T all_reduce_value(T v, CommOp op = CommOp::Sum) {
    all_reduce(std::span<T>(&v, 1), op);
    return v;
  }
  template <class T> void broadcast(std::span<T> buf, int root) { start_broadcast(buf, root).wait(); }
  void barrier() { start_barrier().wait(); }

 protected:
  // counts are elements of `type`; recv of all_gather holds world()·count, send of reduce_scatter
  // world()·count.
  virtual CommRequest start_all_gather_raw(const void* send, void* recv, size_t count, CommType type) = 0;
  virtual CommRequest start_reduce_scatter_raw(const void* send, void* recv, size_t count, CommType type, CommOp op) = 0;
  virtual CommRequest start_all_reduce_raw(void* inout, size_t count, CommType type, CommOp op) = 0;
  virtual CommRequest start_broadcast_raw(void* buf, size_t count, CommType type, int root) = 0;
  virtual CommRequest start_barrier_raw() = 0;
  void check_gather(size_t part, size_t whole, const char* what) const;  // whole == world()·part

 private:
  double timeout_s_ = 600.0;
};

// ---- process-wide MPI state -----------------------------------------------------------------
// mpi_init: MPI_Init_thread(MPI_THREAD_MULTIPLE) once (idempotent; a no-op when MPI is already
// initialized); mpi_finalize at exit. launched_by_mpirun(): OMPI_COMM_WORLD_SIZE / PMI_SIZE set.
void mpi_init(int* argc, char*** argv);
void mpi_finalize();
bool launched_by_mpirun();
int mpi_world_rank();   // 0 when MPI is not initialized
int mpi_world_size();   // 1 when MPI is not initialized
// Ends every rank of the job: prints "frugal: rank R/W: <message>" on stderr, then MPI_Abort
// (or exit when MPI is not initialized). Never returns.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

// The world communicator: MpiCommunicator over MPI_COMM_WORLD when MPI is initialized and W > 1,
// else a single-rank communicator (collectives are copies). Environment FRUGAL_COMM_TIMEOUT
// (seconds) sets the timeout.
std::unique_ptr<Communicator> make_world_communicator();
// A single-rank communicator (tests, W = 1 runs).
std::unique_ptr<Communicator> make_self_communicator();
// An MpiCommunicator over a duplicate of MPI_COMM_WORLD whatever the world size (MPI must be
// initialized): tests of the MPI path at W = 1, and the bootstrap channel of NcclCommunicator.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace frugal
