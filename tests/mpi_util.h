// mpi_util.h: GoogleTest main and helpers for multi-rank tests (tests/mpi_*.cpp).
//
// How to write one:
//   #include "tests/mpi_util.h"          // defines main(): include it in exactly one .cpp per binary
//   TEST(MyArea, Thing) {
//     frugal::Communicator& comm = frugal::test::world();   // W ranks under mpirun, W = 1 without
//     ... every rank computes its own expected data from (rank, index) ...
//     EXPECT_ALL_RANKS(max_err <= 1e-6, "max_err " << max_err);
//   }
// Rules (a rank that leaves a collective early hangs the others until the ctest TIMEOUT):
//   - Every rank runs every test and calls the same collectives in the same order. Do not use
//     ASSERT_* / GTEST_SKIP on a condition that can differ between ranks; compute a local bool,
//     then EXPECT_ALL_RANKS (or all_ranks_ok) so every rank passes or fails the test together.
//     Skipping on world() (the same everywhere) is fine: `if (comm.world() < 2) GTEST_SKIP();`
//   - EXPECT_ALL_RANKS(cond, msg) is itself a collective (an all-reduce): call it unconditionally.
//     A failing rank prints "[rank r/W] file:line: cond: msg"; every rank then fails with the list
//     of failing ranks.
//   - Output: rank 0 prints the usual gtest report; the other ranks print only their failures.
//   - world() is a communicator created once after MPI_Init (mpi_init when launched by mpirun,
//     otherwise no MPI at all: the single-rank path, W = 1, a "self" communicator). A test that
//     needs its own communicator (e.g. to set a timeout) calls frugal::make_world_communicator()
//     on every rank in the same order.
// CMake registers each tests/mpi_<name>.cpp as <name>_np1 (no mpirun), _np2 and _np4 (mpirun,
// --oversubscribe), label `mpi`; add the name to FRUGAL_MPI_NP3_TESTS for an extra _np3 run.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sharding/comm.h"

namespace frugal::test {

inline std::unique_ptr<Communicator>& world_ptr() {
  static std::unique_ptr<Communicator> c;
  return c;
}

// The communicator every test uses (created in main after MPI init).
inline Communicator& world() {
  if (!world_ptr()) world_ptr() = make_world_communicator();
  return *world_ptr();
}

// True on every rank iff local_ok is true on every rank (an all-reduce of the failure count).
// `failing` (optional) receives the ranks whose local_ok was false.
inline bool all_ranks_ok(Communicator& comm, bool local_ok, std::vector<int>* failing = nullptr) {
  std::vector<int32_t> flags(comm.world(), 0);
  flags[comm.rank()] = local_ok ? 0 : 1;
  comm.all_reduce(std::span<int32_t>(flags), CommOp::Sum);
  bool ok = true;
  if (failing) failing->clear();
  for (int r = 0; r < comm.world(); ++r)
    if (flags[r]) {
      ok = false;
      if (failing) failing->push_back(r);
    }
  return ok;
}

inline std::string ranks_str(const std::vector<int>& r) {
  std::string s;
  for (size_t i = 0; i < r.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(r[i]);
  }
  return s;
}

// Prints failures of this (non-zero) rank with its rank; rank 0 keeps gtest's normal printer.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  RankFailurePrinter(int rank, int world) : rank_(rank), world_(world) {}
  // The test name is remembered at start: UnitTest::current_test_info() inside OnTestPartResult
  // would deadlock on gtest's own (non-recursive) mutex.
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d/%d] %s: %s:%d: %s\n", rank_, world_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_, world_;
  std::string test_;
};

}  // namespace frugal::test

// Collective assertion: every rank evaluates cond, the failures are all-reduced, then every rank
// EXPECTs that no rank failed. msg is streamed (`"err " << err`) and printed by failing ranks.
#define EXPECT_ALL_RANKS(cond, msg)                                                                  \
  do {                                                                                               \
    ::frugal::Communicator& c_ = ::frugal::test::world();                                            \
    const bool ok_ = static_cast<bool>(cond);                                                        \
    if (!ok_) {                                                                                      \
      std::ostringstream os_;                                                                        \
      os_ << msg;                                                                                    \
      std::fprintf(stderr, "[rank %d/%d] %s:%d: %s: %s\n", c_.rank(), c_.world(), __FILE__, __LINE__, \
                   #cond, os_.str().c_str());                                                        \
    }                                                                                                \
    std::vector<int> failing_;                                                                       \
    const bool all_ok_ = ::frugal::test::all_ranks_ok(c_, ok_, &failing_);                          \
    EXPECT_TRUE(all_ok_) << #cond << " failed on rank(s) " << ::frugal::test::ranks_str(failing_);   \
  } while (0)

int main(int argc, char** argv) {
  // Same rule as the frugal binary: MPI only when launched by mpirun.
  try {
    if (frugal::launched_by_mpirun()) frugal::mpi_init(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi test: %s\n", e.what());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = frugal::mpi_world_rank(), W = frugal::mpi_world_size();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new frugal::test::RankFailurePrinter(rank, W));
  }
  int rc = RUN_ALL_TESTS();
  frugal::test::world_ptr().reset();  // its progress thread ends before MPI_Finalize
  frugal::mpi_finalize();
  return rc;
}
