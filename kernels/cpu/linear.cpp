// linear.cpp: frozen linear layers over bf16 or NF4 weights W: [out, in].
//   forward          y[M,out]  = x[M,in]·Wᵀ + beta·y
//   backward_input   dx[M,in]  = dy[M,out]·W + beta·dx
//   backward_weight  dW[out,in] += dyᵀ·x
// bf16 weights go straight to gemm_bf16 (oneDNN). NF4 weights are dequantized a tile of
// linear_nf4_tile_rows(in) rows at a time into a bounded bf16 scratch (<= 8 MB per tile):
//  - forward: OpenMP threads take whole tiles (dynamic schedule); each thread dequantizes its tile
//    into its own scratch and runs the GEMM for the column slice y[:, o0:o0+tr] (ldc = out)
//    itself (oneDNN runs single-threaded inside a parallel region). One thread's dequant overlaps
//    the other threads' GEMMs, and the tile is still in cache when its GEMM reads it.
//  - backward_input: the sum runs over the out dimension, so threads take column slabs of dx
//    instead (one writer per slab) and walk W's rows in tiles, again dequant + own GEMM.
#include "kernels/cpu/linear.h"

#include <omp.h>

#include <algorithm>

#include "kernels/cpu/gemm.h"

namespace frugal {

FrozenWeight FrozenWeight::from_bf16(avector<bf16> w, int64_t out, int64_t in) {
  FRUGAL_CHECK(out > 0 && in > 0, "FrozenWeight::from_bf16: bad shape [", out, ", ", in, "]");
  if ((int64_t)w.size() != out * in)
    fail("FrozenWeight::from_bf16: weight has ", w.size(), " elements, expected [", out, ", ", in, "]");
  FrozenWeight f;
  f.kind = Kind::BF16;
  f.out = out;
  f.in = in;
  f.w = std::move(w);
  return f;
}

FrozenWeight FrozenWeight::quantize_nf4(const bf16* w, int64_t out, int64_t in, int blocksize,
                                        bool double_quant) {
  FRUGAL_CHECK(out > 0 && in > 0, "FrozenWeight::quantize_nf4: bad shape [", out, ", ", in, "]");
  FrozenWeight f;
  f.kind = Kind::NF4;
  f.out = out;
  f.in = in;
  f.q = quant::nf4_quantize(w, std::vector<int64_t>{out, in}, blocksize, double_quant);
  return f;
}

size_t FrozenWeight::bytes() const {
  return kind == Kind::BF16 ? w.size() * sizeof(bf16) : q.bytes();
}

int linear_nf4_tile_rows(int64_t in) {
  // ~4M bf16 elements (8 MB) per tile, a multiple of 16 rows, 16..512. The tile is the N of its
  // GEMM [M, rows] = x[M, in]·tileᵀ: narrow tiles (64 rows at in = 14336, down_proj) ran that
  // GEMM well below oneDNN's speed on wide ones (measured 1.6x the plain GEMM's time for the whole
  // linear with 2 MB tiles), while the dequantization itself costs only a few % of the GEMM.
  int64_t r = ((int64_t)1 << 22) / std::max<int64_t>(in, 1);
  r = std::clamp<int64_t>(r / 16 * 16, 16, 512);
  return (int)r;
}

Nf4ForwardTiles linear_nf4_forward_tiles(int64_t out64, int64_t in, int nthr) {
  const int out = (int)out64;
  int tr = linear_nf4_tile_rows(in);
  // keep at least two tiles per thread so the dynamic schedule can balance
  const int balance = std::max(16, (out + 2 * nthr - 1) / (2 * nthr) / 16 * 16);
  tr = std::min(tr, balance);
  // a tile count that is a multiple of the thread count (equal tiles: no thread idles at the end)
  int ntiles = (out + tr - 1) / tr;
  ntiles = (ntiles + nthr - 1) / nthr * nthr;
  tr = std::max(16, ((out + ntiles - 1) / ntiles + 15) / 16 * 16);
  return {tr, (out + tr - 1) / tr};
}

Nf4BackwardTiles linear_nf4_backward_tiles(int64_t in64, int nthr) {
  const int in = (int)in64;
  int ti = (in + 2 * nthr - 1) / (2 * nthr);
  ti = std::min(in, std::max(256, (ti + 63) / 64 * 64));
  const int tr = std::clamp(((1 << 20) / ti) / 16 * 16, 16, 1024);
  return {tr, ti, (in + ti - 1) / ti};
}

size_t linear_nf4_scratch_elems(int64_t out, int64_t in, int nthr) {
  const Nf4ForwardTiles f = linear_nf4_forward_tiles(out, in, nthr);
  const Nf4BackwardTiles b = linear_nf4_backward_tiles(in, nthr);
  return std::max((size_t)f.rows * (size_t)in, (size_t)std::min<int64_t>(b.rows, out) * (size_t)b.cols);
}

namespace {

void check_weight(const FrozenWeight& W, const char* who) {
  FRUGAL_CHECK(W.out > 0 && W.in > 0 && W.out <= INT32_MAX && W.in <= INT32_MAX, who,
               ": bad weight shape [", W.out, ", ", W.in, "]");
  if (W.kind == FrozenWeight::Kind::BF16) {
    if ((int64_t)W.w.size() != W.out * W.in)
      fail(who, ": bf16 weight has ", W.w.size(), " elements, expected [", W.out, ", ", W.in, "]");
  } else {
    if (W.q.numel != W.out * W.in)
      fail(who, ": NF4 weight has ", W.q.numel, " elements, expected [", W.out, ", ", W.in, "]");
  }
}

// The calling thread's dequantization scratch (kept between calls: bounded by one tile).
bf16* thread_scratch(size_t n) {
  thread_local avector<bf16> buf;
  grow_to(buf, n);
  return buf.data();
}

}  // namespace

// y[M,out] = x[M,in]·Wᵀ + beta·y
void linear_forward(float* y, const bf16* x, const FrozenWeight& W, int M, float beta) {
  check_weight(W, "linear_forward");
  FRUGAL_CHECK(M >= 0, "linear_forward: M=", M);
  if (M == 0) return;
  const int out = (int)W.out, in = (int)W.in;
  if (W.kind == FrozenWeight::Kind::BF16) {
    gemm_bf16(false, true, M, out, in, 1.f, x, in, W.w.data(), in, beta, y, out);
    return;
  }
  const Nf4ForwardTiles tiles = linear_nf4_forward_tiles(out, in, omp_get_max_threads());
  const int tr = tiles.rows, ntiles = tiles.count;
  // the first error in a worker is rethrown after the parallel region
  std::string err;
#pragma omp parallel
  {
    bf16* scratch = thread_scratch((size_t)tr * in);  // this thread's tile: [tr, in] bf16
#pragma omp for schedule(dynamic, 1)
    for (int ti = 0; ti < ntiles; ++ti) {
      const int o0 = ti * tr, rows = std::min(tr, out - o0);
      try {
        quant::nf4_dequantize_bf16(W.q, (int64_t)o0 * in, (int64_t)rows * in, scratch);
        // y[:, o0:o0+rows] = x · tileᵀ + beta·y[:, o0:o0+rows]
        gemm_bf16(false, true, M, rows, in, 1.f, x, in, scratch, in, beta, y + o0, out);
      } catch (const std::exception& e) {
#pragma omp critical(frugal_linear_err)
        if (err.empty()) err = e.what();
      }
    }
  }
  if (!err.empty()) fail("linear_forward (NF4 [", out, ", ", in, "], M=", M, "): ", err);
}

// dx[M,in] = dy[M,out]·W + beta·dx
void linear_backward_input(float* dx, const bf16* dy, const FrozenWeight& W, int M, float beta) {
  check_weight(W, "linear_backward_input");
  FRUGAL_CHECK(M >= 0, "linear_backward_input: M=", M);
  if (M == 0) return;
  const int out = (int)W.out, in = (int)W.in;
  if (W.kind == FrozenWeight::Kind::BF16) {
    gemm_bf16(false, false, M, in, out, 1.f, dy, out, W.w.data(), in, beta, dx, in);
    return;
  }
  // Tasks are column slabs dx[:, i0:i0+ti] (one writer each, no reduction). A task walks the rows
  // of W in tiles of tr rows: dequantize W[o0:o0+tr, i0:i0+ti] row segment by row segment into
  // its scratch, then dx_slab (+)= dy[:, o0:o0+tr] · tile (K = tr, single-threaded oneDNN).
  const Nf4BackwardTiles tiles = linear_nf4_backward_tiles(in, omp_get_max_threads());
  const int tr = tiles.rows, ti = tiles.cols, nslabs = tiles.slabs;
  std::string err;
#pragma omp parallel
  {
    bf16* scratch = thread_scratch((size_t)std::min(tr, out) * ti);  // this thread's tile: [tr, ti] bf16
#pragma omp for schedule(dynamic, 1)
    for (int si = 0; si < nslabs; ++si) {
      const int i0 = si * ti, cols = std::min(ti, in - i0);
      try {
        for (int o0 = 0; o0 < out; o0 += tr) {
          const int rows = std::min(tr, out - o0);
          for (int r = 0; r < rows; ++r)
            quant::nf4_dequantize_bf16(W.q, (int64_t)(o0 + r) * in + i0, cols, scratch + (size_t)r * cols);
          gemm_bf16(false, false, M, cols, rows, 1.f, dy + o0, out, scratch, cols,
                    o0 == 0 ? beta : 1.f, dx + i0, in);
        }
      } catch (const std::exception& e) {
#pragma omp critical(frugal_linear_err)
        if (err.empty()) err = e.what();
      }
    }
  }
  if (!err.empty()) fail("linear_backward_input (NF4 [", out, ", ", in, "], M=", M, "): ", err);
}

// dW[out,in] += dyᵀ·x
void linear_backward_weight(float* dW, const bf16* dy, const bf16* x, int M, int64_t out, int64_t in) {
  FRUGAL_CHECK(M >= 0 && out > 0 && in > 0 && out <= INT32_MAX && in <= INT32_MAX,
               "linear_backward_weight: bad sizes M=", M, " out=", out, " in=", in);
  if (M == 0) return;
  gemm_bf16(true, false, (int)out, (int)in, M, 1.f, dy, (int)out, x, (int)in, 1.f, dW, (int)in);
}

}  // namespace frugal
