// gpu_nccl.cpp: NcclCommunicator on one rank (W = 1, bootstrapped over a self communicator):
// every collective on device buffers, each CommType, odd sizes. With one rank the exact answers
// are known (all_gather / reduce_scatter copy, all_reduce and broadcast leave the data as is), so
// this checks the plumbing: types, counts, in-place gather, events, stream order. Skips without a
// device; multi-GPU runs are the mpi tests' job once a machine has GPUs.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "sharding/nccl_comm.h"

using namespace frugal;

#define SKIP_WITHOUT_GPU() \
  if (!nccl_available()) GTEST_SKIP() << "no CUDA device"

namespace {

template <class T> struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t n_) : n(n_) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(p, 0xA5, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);  // sentinel
  }
  ~DevBuf() { cudaFree(p); }
  void put(const std::vector<T>& h) { EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  std::span<T> span() { return {p, n}; }
  std::span<const T> cspan() const { return {p, n}; }
};

template <class T> std::vector<T> pattern(size_t n, int salt) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t x = (i * 2654435761u + salt * 97u) & 0x3f;  // small: exact in every type
    if constexpr (std::is_same_v<T, bf16>) v[i] = bf16::from_float(float(x));
    else v[i] = static_cast<T>(x);
  }
  return v;
}

template <class T> bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

const size_t kSizes[] = {0, 1, 7, 1023, 65537};

template <class T> void every_collective(NcclCommunicator& c, const char* tname) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(testing::Message() << tname << " n=" << n);
    const auto x = pattern<T>(n, 1);
    DevBuf<T> send(n), recv(n);
    send.put(x);
    c.all_gather(send.cspan(), recv.span());
    EXPECT_TRUE(same_bytes(recv.get(), x)) << "all_gather";

    DevBuf<T> rs(n);
    c.start_reduce_scatter(send.cspan(), rs.span(), CommOp::Sum).wait();
    EXPECT_TRUE(same_bytes(rs.get(), x)) << "reduce_scatter";

    for (CommOp op : {CommOp::Sum, CommOp::Max, CommOp::Min}) {
      DevBuf<T> ar(n);
      ar.put(x);
      c.all_reduce(ar.span(), op);
      EXPECT_TRUE(same_bytes(ar.get(), x)) << "all_reduce op " << int(op);
    }
    DevBuf<T> bc(n);
    bc.put(x);
    CommRequest q = c.start_broadcast(bc.span(), 0);
    q.wait();
    EXPECT_TRUE(q.test());
    EXPECT_TRUE(same_bytes(bc.get(), x)) << "broadcast";
  }
}

}  // namespace

TEST(Nccl, EveryCollectiveOnOneRank) {
  SKIP_WITHOUT_GPU();
  auto boot = make_self_communicator();
  NcclCommunicator c(*boot);
  EXPECT_EQ(c.world(), 1);
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.backend(), "nccl");
  every_collective<uint8_t>(c, "u8");
  every_collective<int32_t>(c, "i32");
  every_collective<int64_t>(c, "i64");
  every_collective<float>(c, "f32");
  every_collective<double>(c, "f64");
  every_collective<bf16>(c, "bf16");
  c.barrier();
}

TEST(Nccl, InPlaceGatherAndSeveralRequestsInFlight) {
  SKIP_WITHOUT_GPU();
  auto boot = make_self_communicator();
  NcclCommunicator c(*boot);
  const size_t n = 65537;
  const auto x = pattern<float>(n, 2), y = pattern<float>(n, 3);
  DevBuf<float> a(n), b(n), g(n);
  a.put(x);
  b.put(y);
  g.put(x);
  std::vector<CommRequest> reqs;
  reqs.push_back(c.start_all_gather(std::span<const float>(g.p, n), g.span()));  // in place
  reqs.push_back(c.start_all_reduce(a.span()));
  reqs.push_back(c.start_broadcast(b.span(), 0));
  reqs.push_back(c.start_barrier());
  for (size_t k = reqs.size(); k-- > 0;) reqs[k].wait();
  EXPECT_TRUE(same_bytes(g.get(), x));
  EXPECT_TRUE(same_bytes(a.get(), x));
  EXPECT_TRUE(same_bytes(b.get(), y));
}

TEST(Nccl, SizeMismatchAndBadRootThrow) {
  SKIP_WITHOUT_GPU();
  auto boot = make_self_communicator();
  NcclCommunicator c(*boot);
  DevBuf<float> a(7), b(8);
  EXPECT_THROW(c.all_gather(a.cspan(), b.span()), Error);
  EXPECT_THROW(c.broadcast(a.span(), 1), Error);
}
