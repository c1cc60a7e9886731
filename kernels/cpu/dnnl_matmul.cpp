// dnnl_matmul.cpp: the cached oneDNN matmul behind gemm_bf16 and gemm_f32 (see dnnl_matmul.h).
// Transposes and leading dimensions are memory-descriptor strides, alpha an output scale and beta
// a sum post-op (beta == 0: C is only written, never read).
#include "kernels/cpu/dnnl_matmul.h"

#include <omp.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include "src/common.h"

namespace frugal {

// ---- oneDNN engine, stream and primitive cache -------------------------------------------
namespace {

struct GemmKey {
  bool f32;  // operand dtype: fp32 (else bf16)
  bool ta, tb;
  int M, N, K, lda, ldb, ldc;
  uint32_t alpha_bits, beta_bits;
  bool nested;  // created inside an OpenMP parallel region: oneDNN plans for one thread
  bool operator==(const GemmKey& o) const {
    return f32 == o.f32 && ta == o.ta && tb == o.tb && M == o.M && N == o.N && K == o.K && lda == o.lda &&
           ldb == o.ldb && ldc == o.ldc && alpha_bits == o.alpha_bits &&
           beta_bits == o.beta_bits && nested == o.nested;
  }
};
struct GemmKeyHash {
  size_t operator()(const GemmKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(k.f32); mix(k.ta); mix(k.tb); mix((uint32_t)k.M); mix((uint32_t)k.N); mix((uint32_t)k.K);
    mix((uint32_t)k.lda); mix((uint32_t)k.ldb); mix((uint32_t)k.ldc);
    mix(k.alpha_bits); mix(k.beta_bits); mix(k.nested);
    return (size_t)h;
  }
};

struct GemmPrim {
  dnnl::memory::desc a_md, b_md, c_md, scratch_md;
  dnnl::matmul prim;
};

struct DnnlContext {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::mutex mu;
  // Entries are shared_ptr so a primitive being executed survives the cache being cleared.
  std::unordered_map<GemmKey, std::shared_ptr<const GemmPrim>, GemmKeyHash> cache;
};
// Bound on cached primitives (many distinct shapes, e.g. variable sequence lengths, would
// otherwise grow the cache without limit); when full the cache is simply cleared.
constexpr size_t kMaxCachedPrimitives = 1024;

DnnlContext& ctx() {
  static DnnlContext c;  // one engine and (outside parallel regions) one stream per process
  return c;
}

// Calls made from inside an OpenMP parallel region (e.g. linear_forward's per-thread NF4 tiles)
// each use their thread's own stream; oneDNN then runs the primitive on the calling thread.
dnnl::stream& nested_stream() {
  thread_local dnnl::stream s{ctx().eng};
  return s;
}

std::string shape_str(bool ta, bool tb, int M, int N, int K, int lda, int ldb, int ldc) {
  return str("[M=", M, " N=", N, " K=", K, " transA=", ta, " transB=", tb, " lda=", lda,
             " ldb=", ldb, " ldc=", ldc, "]");
}

std::shared_ptr<const GemmPrim> make_prim(const GemmKey& k, float alpha, float beta) {
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  // A: logical [M,K]; stored [M,K] (strides {lda,1}) or [K,M] (strides {1,lda}).
  const dt in = k.f32 ? dt::f32 : dt::bf16;
  dnnl::memory::desc a_md(dims{k.M, k.K}, in,
                          k.ta ? dims{1, k.lda} : dims{k.lda, 1});
  // B: logical [K,N]; stored [K,N] (strides {ldb,1}) or [N,K] (strides {1,ldb}).
  dnnl::memory::desc b_md(dims{k.K, k.N}, in,
                          k.tb ? dims{1, k.ldb} : dims{k.ldb, 1});
  dnnl::memory::desc c_md(dims{k.M, k.N}, dt::f32, dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  // User-managed scratchpad: oneDNN's default library scratchpad is shared by all primitives of
  // the process, so two threads running GEMMs at once (linear_forward's per-thread NF4 tiles)
  // would overwrite each other's partial sums (seen as wrong results at M = 1, where the K loop
  // is split and reduced through the scratchpad). Each calling thread passes its own buffer.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.f) attr.set_output_scales(0, {alpha});
  if (beta != 0.f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  dnnl::matmul::desc d(a_md, b_md, c_md);
  dnnl::matmul::primitive_desc pd(d, attr, ctx().eng);
  return std::make_shared<const GemmPrim>(GemmPrim{a_md, b_md, c_md, pd.scratchpad_desc(), dnnl::matmul(pd)});
}

}  // namespace

static std::atomic<uint64_t> g_jitter_seed{0};

void set_gemm_output_jitter(uint64_t seed) { g_jitter_seed.store(seed); }

// One fp32 ulp up or down per element of C[M,N] (see the header).
static void apply_output_jitter(uint64_t seed, int M, int N, float* C, int ldc) {
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float* c = C + (size_t)m * ldc + n;
      uint64_t h = seed ^ ((uint64_t)m << 32) ^ (uint64_t)n ^ ((uint64_t)fm::f32_bits(*c) << 17);
      h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdull;
      h = (h ^ (h >> 33)) * 0xc4ceb9fe1a85ec53ull;
      *c = std::nextafter(*c, (h >> 63) ? INFINITY : -INFINITY);
    }
}

size_t dnnl_matmul_cache_size() {
  std::lock_guard<std::mutex> lk(ctx().mu);
  return ctx().cache.size();
}

// ---- fast path ---------------------------------------------------------------------------
void dnnl_matmul(MatmulInput in, const char* who, bool transA, bool transB, int M, int N, int K,
                 float alpha, const void* A, int lda, const void* B, int ldb, float beta, float* C,
                 int ldc) {
  FRUGAL_CHECK(M >= 0 && N >= 0 && K >= 0, who, ": negative size ",
               shape_str(transA, transB, M, N, K, lda, ldb, ldc));
  FRUGAL_CHECK(lda >= (transA ? M : K) && lda >= 1 && ldb >= (transB ? K : N) && ldb >= 1 &&
                   ldc >= N && ldc >= 1,
               who, ": leading dimension too small ",
               shape_str(transA, transB, M, N, K, lda, ldb, ldc));
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty product: C = beta*C (beta == 0 overwrites, also NaN)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        float* c = C + (size_t)m * ldc + n;
        *c = beta == 0.f ? 0.f : beta * *c;
      }
    return;
  }
  const bool nested = omp_in_parallel();
  // Inside a parallel region a nested team has one thread, but omp_get_max_threads() still says
  // the outer count, which oneDNN reads to plan a primitive (and to key its own cache); a plan for
  // N threads run by one computes only part of C. Telling this thread's ICV the truth (1) makes
  // creation and execution agree. The setting dies with the enclosing parallel region.
  if (nested && omp_get_max_threads() != 1) omp_set_num_threads(1);
  GemmKey key{in == MatmulInput::F32, transA, transB, M, N, K, lda, ldb, ldc, fm::f32_bits(alpha), fm::f32_bits(beta), nested};
  DnnlContext& c = ctx();
  try {
    std::shared_ptr<const GemmPrim> p;
    {
      std::lock_guard<std::mutex> lk(c.mu);
      auto it = c.cache.find(key);
      if (it == c.cache.end()) {
        if (c.cache.size() >= kMaxCachedPrimitives) c.cache.clear();
        it = c.cache.emplace(key, make_prim(key, alpha, beta)).first;
      }
      p = it->second;
    }
    dnnl::memory a_mem(p->a_md, c.eng, const_cast<void*>(A));
    dnnl::memory b_mem(p->b_md, c.eng, const_cast<void*>(B));
    dnnl::memory c_mem(p->c_md, c.eng, C);
    dnnl::stream& strm = nested ? nested_stream() : c.strm;
    thread_local avector<uint8_t> scratch;  // this thread's scratchpad, grown as needed
    if (scratch.size() < p->scratch_md.get_size()) scratch.resize(p->scratch_md.get_size());
    dnnl::memory s_mem(p->scratch_md, c.eng, scratch.data());
    p->prim.execute(strm, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem},
                           {DNNL_ARG_SCRATCHPAD, s_mem}});
    strm.wait();
    if (const uint64_t seed = g_jitter_seed.load(std::memory_order_relaxed)) apply_output_jitter(seed, M, N, C, ldc);
  } catch (const dnnl::error& e) {
    fail(who, " ", shape_str(transA, transB, M, N, K, lda, ldb, ldc),
         ": oneDNN error: ", e.what(), " (status ", (int)e.status, ")");
  }
}

}  // namespace frugal
