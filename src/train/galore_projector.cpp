// galore_projector.cpp: GaLore's projector on a row-split matrix (galore_projector.h): the parts'
// layout, the refresh (exact: LAPACK SVD of the whole G, one process; randomized:
// galore_randomized.cpp), the sign convention, and project / project_back on this rank's rows.
// Host memory (the CPU backend). Local rows are the zero-padded block Gl [row1 - row0, n]
// (galore_rows.h), so every GEMM runs on whole rows and sums over ranks count each element once.
#include "src/train/galore_projector.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "src/train/galore_rows.h"

namespace frugal {

ProjSide galore_side(const std::string& t, int64_t m, int64_t n) {
  if (t == "std") return m >= n ? ProjSide::Right : ProjSide::Left;
  if (t == "reverse_std") return m >= n ? ProjSide::Left : ProjSide::Right;
  if (t == "left") return ProjSide::Left;
  if (t == "right") return ProjSide::Right;
  if (t == "full") return ProjSide::Full;
  fail("galore: unknown proj_type '", t, "' (expected std, reverse_std, left, right or full)");
}

LowRankPart galore_low_rank_part(ProjSide side, int r, const MatrixSplit& s, int world) {
  LowRankPart p;
  const size_t R = (size_t)r;
  if (side == ProjSide::Full) {
    p.shape = {r, r};
    p.begin = 0, p.end = R * R;
    p.write_begin = 0, p.write_end = s.rank == 0 ? R * R : 0;
    return p;
  }
  // Right [m, r], Left [r, n]: the flat chunk c = ceil(size / W) of every rank (reduce-scattered),
  // so the moments are 1/W on every rank whichever tensors its gradient elements belong to
  p.shape = side == ProjSide::Right ? std::vector<int64_t>{s.m, r} : std::vector<int64_t>{r, s.n};
  const size_t total = (size_t)p.shape[0] * p.shape[1], c = (total + world - 1) / world;
  p.begin = p.write_begin = std::min((size_t)s.rank * c, total);
  p.end = p.write_end = std::min((size_t)(s.rank + 1) * c, total);
  return p;
}

std::vector<ProjectorPart> galore_projector_parts(ProjSide side, int r, const MatrixSplit& s) {
  std::vector<ProjectorPart> out;
  const size_t W = s.cuts.size() - 1;
  auto slice = [&](const char* state, int64_t rows, int64_t cols) {  // a flat 1/W slice per rank
    const size_t all = (size_t)(rows * cols), c = (all + W - 1) / W;
    const size_t b = std::min((size_t)s.rank * c, all), e = std::min(b + c, all);
    out.push_back({state, {rows, cols}, b, e, b, e});
  };
  if (side != ProjSide::Left) slice("proj_right", r, s.n);
  if (side != ProjSide::Right) slice("proj_left", s.m, r);
  return out;
}

void galore_projector_alloc(GaloreProjector& p, ProjSide side, int r, const MatrixSplit& s) {
  p.side = side;
  p.r = r;
  p.right.clear();
  p.left.clear();
  galore_release(p);
  for (const ProjectorPart& q : galore_projector_parts(side, r, s))
    (q.state[5] == 'r' ? p.right : p.left).assign(q.end - q.begin, 0.f);
}

// all: the whole [size] projector of which `slice` is this rank's part (galore_projector_parts)
static void gather_slices(const avector<float>& slice, size_t size, Communicator& comm, avector<float>& all) {
  const size_t W = (size_t)comm.world(), c = (size + W - 1) / W;
  if (all.size() == c * W) return;  // there already (this step's refresh)
  std::vector<float> mine(c, 0.f);   // the slice, zero-padded to c
  std::copy(slice.begin(), slice.end(), mine.begin());
  all.resize(c * W);
  comm.all_gather(std::span<const float>(mine), std::span<float>(all.data(), c * W));
}

void galore_acquire(GaloreProjector& p, const MatrixSplit& s, Communicator& comm) {
  if (p.side != ProjSide::Left) gather_slices(p.right, (size_t)p.r * s.n, comm, p.right_all);
  if (p.side != ProjSide::Right) gather_slices(p.left, (size_t)s.m * p.r, comm, p.left_all);
}

void galore_release(GaloreProjector& p) {
  avector<float>().swap(p.right_all);
  avector<float>().swap(p.left_all);
}

namespace galore_detail {

// The whole right projector of a step: galore_acquire must have run.
static const float* right_all(const GaloreProjector& p, const MatrixSplit& s) {
  FRUGAL_CHECK(p.right_all.size() >= (size_t)p.r * s.n, "galore: the right projector [", p.r, ", ", s.n,
               "] is not gathered (galore_acquire before project)");
  return p.right_all.data();
}

// This rank's rows U[row0:row1, :r] of the whole left projector: galore_acquire must have run.
static const float* left_rows(const GaloreProjector& p, const MatrixSplit& s) {
  FRUGAL_CHECK(p.left_all.size() >= (size_t)s.m * p.r, "galore: the left projector [", s.m, ", ", p.r,
               "] is not gathered (galore_acquire before project)");
  return p.left_all.data() + (size_t)s.row0() * p.r;
}

LocalBlock local_block(const MatrixSplit& s, const float* g) {
  LocalBlock b;
  const size_t n = (size_t)s.n;
  if (s.begin() % n == 0 && s.end() % n == 0) {  // whole rows (or nothing)
    b.data = g;
    return b;
  }
  b.padded.assign((size_t)local_rows(s) * n, 0.f);
  std::copy(g, g + (s.end() - s.begin()), b.padded.begin() + (s.begin() - (size_t)s.row0() * n));
  b.data = b.padded.data();
  return b;
}

void sum_split_rows(const MatrixSplit& s, float* y, int w, Communicator& comm) {
  if (comm.world() == 1) return;
  // rows that a cut strictly inside splits, sorted, the same list on every rank
  std::vector<int64_t> split;
  for (size_t k = 1; k + 1 < s.cuts.size(); k++)
    if (s.cuts[k] % (size_t)s.n != 0) split.push_back((int64_t)(s.cuts[k] / s.n));
  split.erase(std::unique(split.begin(), split.end()), split.end());  // cuts are non-decreasing
  if (split.empty()) return;
  std::vector<float> buf(split.size() * w, 0.f);  // [split rows, w]
  const int64_t r0 = s.row0(), r1 = s.row1();
  auto mine = [&](int64_t row) { return !s.empty() && row >= r0 && row < r1; };
  for (size_t i = 0; i < split.size(); i++)
    if (mine(split[i])) std::copy_n(y + (split[i] - r0) * w, w, buf.begin() + i * w);
  comm.all_reduce(std::span<float>(buf));
  for (size_t i = 0; i < split.size(); i++)
    if (mine(split[i])) std::copy_n(buf.begin() + i * w, w, y + (split[i] - r0) * w);
}

void gemm(Backend& be, bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // the empty sum
    if (beta == 0.f)
      for (int i = 0; i < M; i++) std::fill_n(C + (size_t)i * ldc, N, 0.f);
    return;
  }
  be.gemm_f32(ta, tb, M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace galore_detail

using namespace galore_detail;

namespace {

// Exact: G = U·diag(S)·Vh by LAPACK (the backend's svd_f32) on the whole G; vt [r, n], u [m, r].
void exact_svd(const MatrixSplit& s, const float* g, int r, const std::string& tensor, Communicator& comm,
               Backend& be, std::vector<float>& vt, std::vector<float>& u) {
  if (comm.world() > 1)
    fail("galore: svd = \"exact\" needs the whole gradient of '", tensor, "' on one process (world ", comm.world(),
         "); use galore.svd = \"randomized\" with sharding");
  const int64_t m = s.m, n = s.n, k = std::min(m, n);
  std::vector<float> U((size_t)(m * k)), S(k), Vh((size_t)(k * n));  // U [m, k], Vh [k, n]
  be.svd_f32(g, (int)m, (int)n, U.data(), S.data(), Vh.data());
  vt.assign(Vh.begin(), Vh.begin() + (size_t)r * n);
  u.resize((size_t)(m * r));
  for (int64_t i = 0; i < m; i++) std::copy_n(U.begin() + i * k, r, u.begin() + i * r);
}

// Sign convention: pair q is flipped so that the largest-|.| entry of vt row q (lowest index on a
// tie) is positive. vt [r, n] replicated; u [rows, r] (column q flipped with it). Every rank takes
// the same decisions: they depend on vt only.
void fix_signs(std::vector<float>& vt, std::vector<float>& u, int r, int64_t n) {
  const int64_t rows = (int64_t)u.size() / r;
  for (int q = 0; q < r; q++) {
    float* v = vt.data() + (size_t)q * n;
    int64_t j = 0;
    for (int64_t i = 1; i < n; i++)
      if (std::fabs(v[i]) > std::fabs(v[j])) j = i;
    if (!(v[j] < 0)) continue;
    for (int64_t i = 0; i < n; i++) v[i] = -v[i];
    for (int64_t i = 0; i < rows; i++) u[(size_t)i * r + q] = -u[(size_t)i * r + q];
  }
}

}  // namespace

bool galore_refresh(GaloreProjector& p, ProjSide side, const MatrixSplit& s, const float* g,
                    const ProjectorOptions& o, const std::string& tensor, int64_t step, Communicator& comm,
                    Backend& be) {
  const int r = galore_effective_rank(o.rank, s.m, s.n);
  // {max |g|, 1 if a non-finite g}: one all-reduce, the same answer on every rank
  float flags[2] = {0.f, 0.f};
  for (size_t e = 0; e < s.end() - s.begin(); e++) {
    if (!std::isfinite(g[e])) flags[1] = 1.f;
    else flags[0] = std::max(flags[0], std::fabs(g[e]));
  }
  comm.all_reduce(std::span<float>(flags, 2), CommOp::Max);
  if (flags[1] > 0) fail("galore: the gradient of '", tensor, "' is not finite at step ", step, " (no projector refresh)");
  if (!(flags[0] > 0) || r <= 0) return false;  // a zero G has no subspace: the caller retries next step
  std::vector<float> vt, u;  // vt: [r, n] replicated; u: [row1 - row0, r], this rank's rows of U[:, :r]
  if (o.svd == "exact") {
    exact_svd(s, g, r, tensor, comm, be, vt, u);
  } else if (o.svd == "randomized") {
    randomized_svd(s, g, r, o, tensor, step, comm, be, vt, u);
  } else {
    fail("galore: svd '", o.svd, "' for '", tensor, "' (expected exact or randomized)");
  }
  fix_signs(vt, u, r, s.n);
  galore_projector_alloc(p, side, r, s);
  if (side != ProjSide::Left) {  // keep this rank's slice; the whole one stays for this step's use
    const ProjectorPart q = galore_projector_parts(side, r, s)[0];
    std::copy(vt.begin() + q.begin, vt.begin() + q.end, p.right.begin());
    const size_t W = (size_t)comm.world(), c = (vt.size() + W - 1) / W;
    vt.resize(c * W, 0.f);
    p.right_all.assign(vt.begin(), vt.end());
  }
  if (side != ProjSide::Right) {
    // the whole U [m, r]: each row from the rank holding its first element (a split row is
    // complete on every sharer), summed; keep this rank's slice, the whole one for this step
    const size_t W = (size_t)comm.world(), R = (size_t)r, n = (size_t)s.n, all = (size_t)s.m * R;
    const size_t c = (all + W - 1) / W;
    std::vector<float> whole(c * W, 0.f);
    if (!s.empty()) {
      const size_t first = (s.begin() + n - 1) / n, last = (s.end() + n - 1) / n;  // rows written here
      std::copy(u.begin() + (first - (size_t)s.row0()) * R, u.begin() + (last - (size_t)s.row0()) * R,
                whole.begin() + first * R);
    }
    comm.all_reduce(std::span<float>(whole));
    const ProjectorPart q = galore_projector_parts(side, r, s).back();
    std::copy(whole.begin() + q.begin, whole.begin() + q.end, p.left.begin());
    p.left_all.assign(whole.begin(), whole.end());
  }
  return true;
}

void galore_project(const GaloreProjector& p, const MatrixSplit& s, const float* g, float* lo,
                    Communicator& comm, Backend& be) {
  const int r = p.r, n = (int)s.n, rows = (int)local_rows(s), W = comm.world();
  const LocalBlock blk = local_block(s, g);
  const float* gl = blk.data;  // Gl: [rows, n]
  if (p.side == ProjSide::Right) {
    // G·Pᵀ [m, r] = this rank's rows Gl·Pᵀ (P = right [r, n]) at rows row0.., zeros elsewhere,
    // summed over ranks (split rows: partial sums) and reduce-scattered into the parts
    const size_t total = (size_t)s.m * r, c = (total + W - 1) / W;
    std::vector<float> partial(c * W, 0.f), mine(c);  // partial: [m, r] then zero padding
    if (!s.empty())
      gemm(be, false, true, rows, r, n, gl, n, right_all(p, s), n, 0.f, partial.data() + (size_t)s.row0() * r, r);
    comm.reduce_scatter(std::span<const float>(partial), std::span<float>(mine));
    std::copy_n(mine.begin(), galore_low_rank_part(ProjSide::Right, r, s, W).size(), lo);
  } else if (p.side == ProjSide::Left) {
    // Pᵀ·G [r, n] = Σ_ranks left_rowsᵀ·Gl, reduce-scattered into the parts of c = ceil(r·n / W)
    const size_t total = (size_t)r * n, c = (total + W - 1) / W;
    std::vector<float> partial(c * W, 0.f), mine(c);  // partial: [r, n] then zero padding
    gemm(be, true, false, r, n, rows, left_rows(p, s), r, gl, n, 0.f, partial.data(), n);
    comm.reduce_scatter(std::span<const float>(partial), std::span<float>(mine));
    std::copy_n(mine.begin(), galore_low_rank_part(ProjSide::Left, r, s, W).size(), lo);
  } else {
    // lo [r, r] = Uᵀ·(G·Vᵀ) = Σ_ranks left_rowsᵀ·(Gl·Vᵀ): linear in the partial rows, one all-reduce
    std::vector<float> t((size_t)rows * r);  // [rows, r]
    gemm(be, false, true, rows, r, n, gl, n, right_all(p, s), n, 0.f, t.data(), r);
    gemm(be, true, false, r, r, rows, left_rows(p, s), r, t.data(), r, 0.f, lo, r);
    comm.all_reduce(std::span<float>(lo, (size_t)r * r));
  }
}

void galore_project_back_add(const GaloreProjector& p, const MatrixSplit& s, const float* n_lo, float alpha,
                             float* w, Communicator& comm, Backend& be) {
  const int r = p.r, n = (int)s.n, rows = (int)local_rows(s), W = comm.world();
  std::vector<float> back((size_t)rows * n);  // this rank's rows of the projected-back update [rows, n]
  if (p.side == ProjSide::Right) {
    // N [m, r] all-gathered from the parts; this rank's rows N[row0:row1] · P [r, n]
    const size_t total = (size_t)s.m * r, c = (total + W - 1) / W;
    std::vector<float> mine(c, 0.f), all(c * W);
    std::copy_n(n_lo, galore_low_rank_part(ProjSide::Right, r, s, W).size(), mine.begin());
    comm.all_gather(std::span<const float>(mine), std::span<float>(all));
    if (!s.empty())
      gemm(be, false, false, rows, n, r, all.data() + (size_t)s.row0() * r, r, right_all(p, s), n, 0.f, back.data(), n);
  } else if (p.side == ProjSide::Left) {
    // left_rows [rows, r] · N [r, n], N all-gathered from the parts of c = ceil(r·n / W)
    const size_t total = (size_t)r * n, c = (total + W - 1) / W;
    std::vector<float> mine(c, 0.f), all(c * W);
    std::copy_n(n_lo, galore_low_rank_part(ProjSide::Left, r, s, W).size(), mine.begin());
    comm.all_gather(std::span<const float>(mine), std::span<float>(all));
    gemm(be, false, false, rows, n, r, left_rows(p, s), r, all.data(), n, 0.f, back.data(), n);
  } else {
    // left_rows [rows, r] · (N [r, r] · Vh [r, n]), N replicated
    std::vector<float> t((size_t)r * n);  // [r, n]
    gemm(be, false, false, r, n, r, n_lo, r, right_all(p, s), n, 0.f, t.data(), n);
    gemm(be, false, false, rows, n, r, left_rows(p, s), r, t.data(), n, 0.f, back.data(), n);
  }
  if (s.empty()) return;
  const float* b = back.data() + (s.begin() - (size_t)s.row0() * n);  // this rank's first element
  for (size_t e = 0; e < s.end() - s.begin(); e++) w[e] += alpha * b[e];
}

}  // namespace frugal
