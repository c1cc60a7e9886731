// comm_mpi.cpp: the host communicators of comm.h and the process-wide MPI state.
//
//   SelfCommunicator  W = 1: all_gather / reduce_scatter copy send to recv, the rest are no-ops.
//   MpiCommunicator   W >= 1 over a duplicate of MPI_COMM_WORLD. One progress thread per
//                     communicator makes every MPI call on it: start_* appends a job to a FIFO
//                     and returns at once; the thread starts the job's nonblocking collective
//                     and drives it with MPI_Test (OpenMPI progresses nonblocking collectives
//                     only inside MPI calls), then marks it done. wait() sleeps on a condition
//                     variable for at most timeout_seconds() and throws naming the collective
//                     when it expires; the job stays queued, so a later wait() can still succeed.
//                     Before it throws, a liveness probe (PeerProbe below) finds which peers no
//                     longer answer, and the message names them.
#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "sharding/comm.h"
#include "sharding/mpi_check.h"

namespace frugal {

// ---- types -----------------------------------------------------------------------------------

size_t comm_type_size(CommType t) {
  switch (t) {
    case CommType::U8: return 1;
    case CommType::I32: return 4;
    case CommType::I64: return 8;
    case CommType::F32: return 4;
    case CommType::F64: return 8;
    case CommType::BF16: return 2;
  }
  fail("comm_type_size: unknown CommType ", static_cast<int>(t));
}

const char* comm_type_name(CommType t) {
  switch (t) {
    case CommType::U8: return "u8";
    case CommType::I32: return "i32";
    case CommType::I64: return "i64";
    case CommType::F32: return "f32";
    case CommType::F64: return "f64";
    case CommType::BF16: return "bf16";
  }
  fail("comm_type_name: unknown CommType ", static_cast<int>(t));
}

static const char* comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::Sum: return "sum";
    case CommOp::Max: return "max";
    case CommOp::Min: return "min";
  }
  fail("comm_op_name: unknown CommOp ", static_cast<int>(op));
}

// ---- CommRequest -----------------------------------------------------------------------------

CommRequest& CommRequest::operator=(CommRequest&& o) {
  if (this != &o) {
    if (p_) p_->wait();  // the replaced collective must finish before its buffers may be reused
    p_ = std::move(o.p_);
  }
  return *this;
}

CommRequest::~CommRequest() {
  // A destructor cannot throw: an error here was either already thrown by an explicit wait() or
  // will surface at the next collective (the caller then aborts the job).
  // During unwinding the rank is failing: waiting the full timeout for peers that may never join
  // would only delay the abort, so the request is abandoned instead.
  if (p_) {
    try {
      if (std::uncaught_exceptions() > 0) p_->abandon();
      else p_->wait();
    } catch (...) {
    }
  }
}

void CommRequest::wait() {
  if (p_) p_->wait();
}

bool CommRequest::test() { return p_ ? p_->test() : true; }

void Communicator::check_gather(size_t part, size_t whole, const char* what) const {
  const size_t W = static_cast<size_t>(world());
  if (whole != W * part)
    fail("rank ", rank(), "/", world(), ": ", what, ": the per-rank buffer has ", part,
         " elements and the whole buffer ", whole, ", but world ", W, " needs whole = ", W, "·", part,
         " = ", W * part);
}

namespace {

// A request that is complete when made (SelfCommunicator).
struct DoneImpl : CommRequest::Impl {
  void wait() override {}
  bool test() override { return true; }
};
CommRequest done_request() { return CommRequest(std::make_unique<DoneImpl>()); }

// ---- SelfCommunicator ------------------------------------------------------------------------

class SelfCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string backend() const override { return "self"; }

 protected:
  CommRequest start_all_gather_raw(const void* send, void* recv, size_t count, CommType type) override {
    if (count && send != recv) std::memmove(recv, send, count * comm_type_size(type));
    return done_request();
  }
  CommRequest start_reduce_scatter_raw(const void* send, void* recv, size_t count, CommType type, CommOp) override {
    if (count && send != recv) std::memmove(recv, send, count * comm_type_size(type));
    return done_request();
  }
  CommRequest start_all_reduce_raw(void*, size_t, CommType, CommOp) override { return done_request(); }
  CommRequest start_broadcast_raw(void*, size_t, CommType, int root) override {
    if (root != 0) fail("broadcast: root ", root, " is not a rank of a world of 1");
    return done_request();
  }
  CommRequest start_barrier_raw() override { return done_request(); }
};

// ---- MpiCommunicator -------------------------------------------------------------------------

MPI_Datatype mpi_type(CommType t) {
  switch (t) {
    case CommType::U8: return MPI_UINT8_T;
    case CommType::I32: return MPI_INT32_T;
    case CommType::I64: return MPI_INT64_T;
    case CommType::F32: return MPI_FLOAT;
    case CommType::F64: return MPI_DOUBLE;
    case CommType::BF16: return MPI_UINT16_T;  // moved, never reduced (MPI has no bf16 arithmetic)
  }
  fail("mpi_type: unknown CommType ", static_cast<int>(t));
}

MPI_Op mpi_op(CommOp op) {
  switch (op) {
    case CommOp::Sum: return MPI_SUM;
    case CommOp::Max: return MPI_MAX;
    case CommOp::Min: return MPI_MIN;
  }
  fail("mpi_op: unknown CommOp ", static_cast<int>(op));
}

// One queued collective. `run` executes on the progress thread; `done` and `error` are guarded by
// MpiShared::m.
struct MpiJob {
  std::string what;  // "all_gather of 7 f32", for messages
  std::function<void()> run;
  bool done = false;
  std::string error;
};

// State shared by the communicator, its progress thread and its requests.
struct MpiShared {
  std::mutex m;
  std::condition_variable work_cv;  // progress thread: a job was queued or stop was set
  std::condition_variable done_cv;  // waiters: some job finished
  std::deque<std::shared_ptr<MpiJob>> queue;
  std::atomic<bool> stop{false};
  std::atomic<bool> abandon{false};  // this rank is failing: stop making MPI calls at once
  // Liveness probe: a timed-out wait() asks for probe number probe_wanted; the progress thread
  // runs it and publishes its report with probe_done (both guarded by m, probe_wanted also read
  // without the lock by the progress thread).
  std::atomic<int64_t> probe_wanted{0};
  int64_t probe_done = 0;
  std::string probe_report;
};

// How long a probe waits for answers: the last quarter of the timeout (at most 10 s), so that a
// collective still fails `timeout` seconds after its wait() began, now with the missing ranks named.
double probe_window(double timeout) { return std::min(10.0, timeout / 4); }

// ---- PeerProbe -----------------------------------------------------------------------------
// Why a probe: a timed-out collective only says that some peer did not arrive. MPI cannot say
// which (a nonblocking collective has no per-peer status), and a peer killed with -9 or cut off
// by a dead link raises no error on the survivors (shared memory and a silent TCP link just stop
// moving data). So after a timeout the survivors ask every peer directly: an 8-byte ping, point
// to point on a private duplicate of the communicator, that every live rank's progress thread
// answers whatever it is doing (driving another collective, or idle). A peer that does not answer
// within probe_window() is named as dead or unreachable; if all answer, they are alive and the
// job is stuck or diverged instead.
// Why this is cheap: nothing is sent until a timeout fired. On the hot path the progress thread
// only tests one pre-posted receive, at most once a millisecond while it drives a collective and
// every 10 ms while idle.
// Every request owns its 8-byte buffer (Pending), so a request that is cancelled or left to a dead
// peer never shares memory with a later one; such requests are tested in the background until
// they complete.
class PeerProbe {
 public:
  PeerProbe(MPI_Comm c, int rank, int world) : c_(c), rank_(rank), world_(world), pong_in_(world), answered_(world) {
    post_ping_receive();
  }
  bool active() const { return active_; }

  // Answers pings that arrived and retires finished background requests.
  void answer_pings() {
    MPI_Status st;
    while (test(ping_in_, &st)) {
      Pending pong = pending(*ping_in_.buf);  // echo the probe's number
      MPI_CHECK(MPI_Isend(pong.buf.get(), 1, MPI_INT64_T, st.MPI_SOURCE, kPong, c_, &pong.req));
      background_.push_back(std::move(pong));
      post_ping_receive();
    }
    std::erase_if(background_, [&](Pending& p) { return test(p, MPI_STATUS_IGNORE); });
  }

  // Pings every peer; answers are collected by poll() until `window` seconds from now.
  void start(int64_t seq, double window) {
    seq_ = seq;
    deadline_ = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(window));
    window_ = window;
    active_ = true;
    for (int p = 0; p < world_; p++) {
      answered_[p] = p == rank_;
      if (p == rank_) continue;
      post_pong_receive(p);
      Pending ping = pending(seq);
      MPI_CHECK(MPI_Isend(ping.buf.get(), 1, MPI_INT64_T, p, kPing, c_, &ping.req));
      background_.push_back(std::move(ping));
    }
  }

  // Collects answers; when the window has ended, returns true and the report.
  bool poll(std::string* report) {
    for (int p = 0; p < world_; p++) {
      if (answered_[p] || !test(pong_in_[p], MPI_STATUS_IGNORE)) continue;
      if (*pong_in_[p].buf == seq_) answered_[p] = 1;
      else post_pong_receive(p);  // a late answer to an earlier probe
    }
    if (std::chrono::steady_clock::now() < deadline_) return false;
    std::vector<int> missing;
    for (int p = 0; p < world_; p++) {
      if (answered_[p]) continue;
      missing.push_back(p);
      MPI_CHECK(MPI_Cancel(&pong_in_[p].req));  // completes in the background
      background_.push_back(std::move(pong_in_[p]));
    }
    active_ = false;
    *report = missing_report(missing);
    return true;
  }

  // Cancels the ping receive and waits up to `seconds` for every request to complete; false when
  // some did not (a send to a dead peer): the caller must then leak this object and its
  // communicator, whose buffers MPI may still reference.
  bool shutdown(double seconds) {
    MPI_Cancel(&ping_in_.req);
    background_.push_back(std::move(ping_in_));
    if (active_)
      for (int p = 0; p < world_; p++)
        if (pong_in_[p].req != MPI_REQUEST_NULL) {
          MPI_Cancel(&pong_in_[p].req);
          background_.push_back(std::move(pong_in_[p]));
        }
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                            std::chrono::duration<double>(seconds));
    while (!background_.empty() && std::chrono::steady_clock::now() < end) {
      std::erase_if(background_, [&](Pending& p) {
        int flag = 0;
        return MPI_Test(&p.req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag;
      });
      sched_yield();
    }
    return background_.empty();
  }

 private:
  static constexpr int kPing = 1, kPong = 2;
  struct Pending {
    MPI_Request req = MPI_REQUEST_NULL;
    std::unique_ptr<int64_t> buf;
  };
  static Pending pending(int64_t v) { return Pending{MPI_REQUEST_NULL, std::make_unique<int64_t>(v)}; }
  static bool test(Pending& p, MPI_Status* st) {
    if (p.req == MPI_REQUEST_NULL) return false;
    int flag = 0;
    MPI_CHECK(MPI_Test(&p.req, &flag, st));
    return flag != 0;
  }
  void post_ping_receive() {
    ping_in_ = pending(0);
    MPI_CHECK(MPI_Irecv(ping_in_.buf.get(), 1, MPI_INT64_T, MPI_ANY_SOURCE, kPing, c_, &ping_in_.req));
  }
  void post_pong_receive(int p) {
    pong_in_[p] = pending(-1);
    MPI_CHECK(MPI_Irecv(pong_in_[p].buf.get(), 1, MPI_INT64_T, p, kPong, c_, &pong_in_[p].req));
  }
  std::string missing_report(const std::vector<int>& missing) const {
    if (missing.empty())
      return str("every other rank answered a liveness probe (all alive: a rank is stuck elsewhere or the ranks "
                 "diverged)");
    std::string list;
    for (size_t i = 0; i < missing.size(); i++) list += (i ? ", " : "") + std::to_string(missing[i]);
    return str(missing.size() == 1 ? "rank " : "ranks ", list, " did not answer a liveness probe within ", window_,
               " s (dead, or unreachable over the network)");
  }

  MPI_Comm c_;
  int rank_, world_;
  Pending ping_in_;                   // any-source receive of pings, always posted
  std::vector<Pending> pong_in_;      // per peer, during a probe
  std::vector<char> answered_;        // per peer, during a probe
  std::vector<Pending> background_;   // answers sent, pings sent, cancelled receives
  bool active_ = false;
  int64_t seq_ = 0;
  double window_ = 0;
  std::chrono::steady_clock::time_point deadline_;
};

class MpiCommunicator;

struct MpiRequestImpl : CommRequest::Impl {
  std::shared_ptr<MpiShared> sh;
  std::shared_ptr<MpiJob> job;
  const Communicator* comm;  // read for the timeout only while the job is pending (the
                             // communicator drains its queue before it dies)
  int rank, world;

  void wait() override {
    std::unique_lock<std::mutex> lk(sh->m);
    if (!job->done) {
      const double t = comm->timeout_seconds(), w = probe_window(t);
      auto dur = [](double s) {
        return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
      };
      if (!sh->done_cv.wait_for(lk, dur(t - w), [&] { return job->done; })) {
        // Not done in time: ask the progress thread for a liveness probe over the rest of the timeout
        // (its report names the peers that no longer answer), then fail unless the job finished.
        const int64_t ticket = ++sh->probe_wanted;
        sh->work_cv.notify_all();
        const double grace = 2.0;  // the progress thread publishes within a poll of the window's end
        sh->done_cv.wait_for(lk, dur(w + grace), [&] { return job->done || sh->probe_done >= ticket; });
        if (!job->done) {
          const std::string report = sh->probe_done >= ticket
                                         ? sh->probe_report
                                         : "no liveness probe report (this rank's progress thread is stuck in MPI)";
          fail("rank ", rank, "/", world, ": ", job->what, " did not finish within ", t, " s: ", report);
        }
      }
    }
    if (!job->error.empty()) throw Error(job->error);
  }
  bool test() override {
    std::lock_guard<std::mutex> lk(sh->m);
    return job->done;
  }
  void abandon() override {
    std::unique_lock<std::mutex> lk(sh->m);
    sh->abandon = true;
    sh->work_cv.notify_all();
    // The progress thread leaves MPI_Test within one poll; after that nothing writes this
    // request's buffers, so the caller may free them.
    sh->done_cv.wait_for(lk, std::chrono::seconds(10), [&] { return job->done; });
  }
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator() : sh_(std::make_shared<MpiShared>()) {
    int init = 0, fin = 0;
    MPI_CHECK(MPI_Initialized(&init));
    MPI_CHECK(MPI_Finalized(&fin));
    if (!init || fin) fail("MpiCommunicator: MPI is not initialized (call mpi_init first)");
    int provided = 0;
    MPI_CHECK(MPI_Query_thread(&provided));
    if (provided < MPI_THREAD_MULTIPLE)
      fail("MpiCommunicator: MPI was initialized without MPI_THREAD_MULTIPLE (level ", provided,
           "); the progress thread needs it");
    // The dup is collective over MPI_COMM_WORLD: every rank creates its communicators in the same order.
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &world_));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &probe_comm_));
    MPI_CHECK(MPI_Comm_set_errhandler(probe_comm_, MPI_ERRORS_RETURN));
    probe_ = std::make_unique<PeerProbe>(probe_comm_, rank_, world_);
    thread_ = std::thread([this] { progress_loop(); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lk(sh_->m);
      sh_->stop = true;
      // Destroyed by an exception: drop queued and in-flight collectives instead of draining them.
      if (std::uncaught_exceptions() > 0) sh_->abandon = true;
    }
    sh_->work_cv.notify_all();
    thread_.join();
    int fin = 0;
    MPI_Finalized(&fin);
    // An abandoned collective may still reference the communicator: leak it rather than free it.
    // Likewise the probe: a ping to a dead peer may never complete.
    const bool clean = !fin && !abandoned_ && !sh_->abandon;
    if (clean) MPI_Comm_free(&comm_);
    if (clean && probe_->shutdown(1.0)) MPI_Comm_free(&probe_comm_);
    else (void)probe_.release();
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string backend() const override { return "mpi"; }

 protected:
  CommRequest start_all_gather_raw(const void* send, void* recv, size_t count, CommType type) override {
    const std::string what = describe("all_gather", count, type);
    check_int_count(count, what);
    const size_t bytes = count * comm_type_size(type);
    // Sending from this rank's own block of recv is MPI_IN_PLACE; any other overlap is an error.
    const char* own_block = static_cast<const char*>(recv) + static_cast<size_t>(rank_) * bytes;
    const bool in_place = count && send == own_block;
    if (count && !in_place) check_disjoint(send, bytes, recv, bytes * world_, what);
    MPI_Datatype dt = mpi_type(type);
    MPI_Comm c = comm_;
    return enqueue(what, [this, send, recv, count, dt, c, in_place] {
      MPI_Request req;
      MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, (int)count, dt, recv, (int)count, dt, c, &req));
      complete(&req);
    });
  }

  CommRequest start_reduce_scatter_raw(const void* send, void* recv, size_t count, CommType type, CommOp op) override {
    const std::string what = describe("reduce_scatter", count, type, op);
    check_reducible(type, what);
    check_int_count(count, what);
    const size_t bytes = count * comm_type_size(type);
    if (count) check_disjoint(send, bytes * world_, recv, bytes, what);
    MPI_Datatype dt = mpi_type(type);
    MPI_Op mop = mpi_op(op);
    MPI_Comm c = comm_;
    return enqueue(what, [this, send, recv, count, dt, mop, c] {
      MPI_Request req;
      MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, (int)count, dt, mop, c, &req));
      complete(&req);
    });
  }

  CommRequest start_all_reduce_raw(void* inout, size_t count, CommType type, CommOp op) override {
    const std::string what = describe("all_reduce", count, type, op);
    check_reducible(type, what);
    MPI_Datatype dt = mpi_type(type);
    MPI_Op mop = mpi_op(op);
    MPI_Comm c = comm_;
    const size_t esize = comm_type_size(type);
    return enqueue(what, [this, inout, count, dt, mop, c, esize] {
      // Elementwise, so counts beyond MPI's int are done in chunks.
      for (size_t off = 0; off < count; off += kChunk) {
        const size_t n = std::min(kChunk, count - off);
        MPI_Request req;
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(inout) + off * esize, (int)n, dt, mop, c, &req));
        complete(&req);
      }
    });
  }

  CommRequest start_broadcast_raw(void* buf, size_t count, CommType type, int root) override {
    const std::string what = str(describe("broadcast", count, type), " from rank ", root);
    if (root < 0 || root >= world_) fail("rank ", rank_, "/", world_, ": ", what, ": root is not a rank");
    MPI_Datatype dt = mpi_type(type);
    MPI_Comm c = comm_;
    const size_t esize = comm_type_size(type);
    return enqueue(what, [this, buf, count, dt, c, root, esize] {
      for (size_t off = 0; off < count; off += kChunk) {
        const size_t n = std::min(kChunk, count - off);
        MPI_Request req;
        MPI_CHECK(MPI_Ibcast(static_cast<char*>(buf) + off * esize, (int)n, dt, root, c, &req));
        complete(&req);
      }
    });
  }

  CommRequest start_barrier_raw() override {
    MPI_Comm c = comm_;
    return enqueue("barrier", [this, c] {
      MPI_Request req;
      MPI_CHECK(MPI_Ibarrier(c, &req));
      complete(&req);
    });
  }

 private:
  static constexpr size_t kChunk = size_t(1) << 30;  // elements per MPI call (< INT_MAX)

  std::string describe(const char* coll, size_t count, CommType type) const {
    return str(coll, " of ", count, " ", comm_type_name(type));
  }
  std::string describe(const char* coll, size_t count, CommType type, CommOp op) const {
    return str(coll, " (", comm_op_name(op), ") of ", count, " ", comm_type_name(type));
  }
  void check_reducible(CommType type, const std::string& what) const {
    if (type == CommType::BF16)
      fail("rank ", rank_, "/", world_, ": ", what, ": MPI cannot reduce bf16 (reduce in f32 instead)");
  }
  void check_int_count(size_t count, const std::string& what) const {
    if (count > static_cast<size_t>(INT_MAX) / static_cast<size_t>(world_))
      fail("rank ", rank_, "/", world_, ": ", what, ": more elements than one MPI call can carry (",
           INT_MAX / world_, " per rank)");
  }
  void check_disjoint(const void* a, size_t an, const void* b, size_t bn, const std::string& what) const {
    const char* pa = static_cast<const char*>(a);
    const char* pb = static_cast<const char*>(b);
    if (pa < pb + bn && pb < pa + an)
      fail("rank ", rank_, "/", world_, ": ", what, ": send and receive buffers overlap");
  }

  CommRequest enqueue(std::string what, std::function<void()> run) {
    auto job = std::make_shared<MpiJob>();
    job->what = std::move(what);
    job->run = std::move(run);
    {
      std::lock_guard<std::mutex> lk(sh_->m);
      if (sh_->stop || sh_->abandon)
        fail("rank ", rank_, "/", world_, ": ", job->what, ": communicator is shut down or abandoned");
      sh_->queue.push_back(job);
    }
    sh_->work_cv.notify_one();
    auto impl = std::make_unique<MpiRequestImpl>();
    impl->sh = sh_;
    impl->job = std::move(job);
    impl->comm = this;
    impl->rank = rank_;
    impl->world = world_;
    return CommRequest(std::move(impl));
  }

  // Progress thread: runs the queued jobs in order; on stop it drains the queue first.
  void progress_loop() {
    for (;;) {
      std::shared_ptr<MpiJob> job;
      {
        std::unique_lock<std::mutex> lk(sh_->m);
        // Idle: wake every 10 ms to answer liveness pings (and run a requested probe).
        while (!sh_->stop && sh_->queue.empty()) {
          if (sh_->work_cv.wait_for(lk, std::chrono::milliseconds(10), [&] { return sh_->stop || !sh_->queue.empty(); }))
            break;
          lk.unlock();
          service_probe();
          lk.lock();
        }
        if (sh_->queue.empty()) return;  // stop requested and nothing left
        job = sh_->queue.front();
        sh_->queue.pop_front();
      }
      std::string err;
      try {
        if (sh_->abandon) fail("abandoned (this rank is failing)");
        job->run();
      } catch (const std::exception& e) {
        err = str("rank ", rank_, "/", world_, ": ", job->what, " failed: ", e.what());
      }
      {
        std::lock_guard<std::mutex> lk(sh_->m);
        job->done = true;
        job->error = std::move(err);
        job->run = nullptr;  // drop captured pointers
      }
      sh_->done_cv.notify_all();
    }
  }

  // Drives one nonblocking MPI request to completion. Each MPI_Test lets OpenMPI move the next
  // fragments, so the loop polls without sleeping, yielding the core to compute threads between
  // polls. When the communicator is being destroyed and the request has been pending longer than
  // the timeout (a peer is gone), the request is abandoned so the destructor cannot hang.
  void complete(MPI_Request* req) {
    const auto t0 = std::chrono::steady_clock::now();
    auto last_service = t0;
    for (;;) {
      int flag = 0;
      MPI_CHECK(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
      if (flag) return;
      const auto now = std::chrono::steady_clock::now();
      if (now - last_service >= std::chrono::milliseconds(1)) {
        service_probe();
        last_service = now;
      }
      if (sh_->abandon.load(std::memory_order_relaxed)) {
        abandoned_ = true;
        fail("abandoned (this rank is failing)");
      }
      if (sh_->stop.load(std::memory_order_relaxed)) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (waited > timeout_seconds()) {
          abandoned_ = true;
          fail("abandoned while the communicator was destroyed (pending for ", waited, " s)");
        }
      }
      sched_yield();
    }
  }

  // Progress thread: answers peers' pings, starts a probe a timed-out wait() asked for, and
  // publishes the report of a finished one.
  void service_probe() {
    probe_->answer_pings();
    if (!probe_->active()) {
      const int64_t wanted = sh_->probe_wanted.load();
      if (wanted > probe_started_) {
        probe_started_ = wanted;
        probe_->start(wanted, probe_window(timeout_seconds()));
      }
      return;
    }
    std::string report;
    if (!probe_->poll(&report)) return;
    {
      std::lock_guard<std::mutex> lk(sh_->m);
      sh_->probe_done = probe_started_;
      sh_->probe_report = std::move(report);
    }
    sh_->done_cv.notify_all();
  }

  std::shared_ptr<MpiShared> sh_;
  MPI_Comm comm_ = MPI_COMM_NULL, probe_comm_ = MPI_COMM_NULL;
  std::unique_ptr<PeerProbe> probe_;  // used by the progress thread only
  int64_t probe_started_ = 0;         // progress thread only
  int rank_ = 0, world_ = 1;
  bool abandoned_ = false;  // written by the progress thread, read after join
  std::thread thread_;
};

double env_timeout_or(double dflt) {
  const char* s = std::getenv("FRUGAL_COMM_TIMEOUT");
  if (!s || !*s) return dflt;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v > 0))
    fail("FRUGAL_COMM_TIMEOUT='", s, "': expected a positive number of seconds");
  return v;
}

bool mpi_active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

}  // namespace

// ---- process-wide MPI state -----------------------------------------------------------------

void mpi_init(int* argc, char*** argv) {
  int init = 0, provided = 0;
  MPI_CHECK(MPI_Initialized(&init));
  if (init) {
    MPI_CHECK(MPI_Query_thread(&provided));
  } else {
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) fail("MPI_Init_thread failed: ", mpi_error_string(rc));
    // Errors come back as codes (MPI_CHECK turns them into frugal::Error with MPI's message);
    // communicators duplicated from the world inherit this.
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  }
  if (provided < MPI_THREAD_MULTIPLE)
    fail("MPI provides thread level ", provided, " but frugal needs MPI_THREAD_MULTIPLE (", MPI_THREAD_MULTIPLE,
         "): its communicators make MPI calls from a progress thread. Use an MPI built with thread support "
         "(OpenMPI: --enable-mpi-thread-multiple, the default since 3.0)");
}

void mpi_finalize() {
  if (mpi_active()) MPI_Finalize();
}

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

int mpi_world_rank() {
  if (!mpi_active()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int mpi_world_size() {
  if (!mpi_active()) return 1;
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

void abort_job(const std::string& message, int code) {
  const bool active = mpi_active();
  std::fprintf(stderr, "frugal: rank %d/%d: %s\n", mpi_world_rank(), mpi_world_size(), message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  if (active) MPI_Abort(MPI_COMM_WORLD, code);
  _exit(code);  // MPI_Abort does not return; this covers W = 1 without MPI
}

std::unique_ptr<Communicator> make_self_communicator() {
  auto c = std::make_unique<SelfCommunicator>();
  c->set_timeout_seconds(env_timeout_or(c->timeout_seconds()));
  return c;
}

std::unique_ptr<Communicator> make_mpi_communicator() {
  auto c = std::make_unique<MpiCommunicator>();
  c->set_timeout_seconds(env_timeout_or(c->timeout_seconds()));
  return c;
}

std::unique_ptr<Communicator> make_world_communicator() {
  if (mpi_active() && mpi_world_size() > 1) return make_mpi_communicator();
  return make_self_communicator();
}

}  // namespace frugal
