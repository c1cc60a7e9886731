// galore_projector.cpp: SINGLE-PROCESS PLACEHOLDER, replaced by the sharded implementation on merge.
// Exact SVD only (LAPACKE_sgesdd), world() == 1 only (anything else throws); the part / layout
// functions follow galore_projector.h. Products accumulate in fp64 and round once to fp32.
#include "src/train/galore_projector.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>

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
  const size_t R = (size_t)r, n = (size_t)s.n;
  if (side == ProjSide::Right) {
    p.shape = {s.m, r};
    p.begin = s.empty() ? 0 : (size_t)s.row0() * R;
    p.end = s.empty() ? 0 : (size_t)s.row1() * R;
    // a row is written by the rank holding its first element: rows [ceil(begin/n), ceil(end/n))
    p.write_begin = s.empty() ? 0 : ((s.begin() + n - 1) / n) * R;
    p.write_end = s.empty() ? 0 : ((s.end() + n - 1) / n) * R;
  } else if (side == ProjSide::Left) {
    p.shape = {r, s.n};
    const size_t total = R * n, c = (total + world - 1) / world;
    p.begin = p.write_begin = std::min((size_t)s.rank * c, total);
    p.end = p.write_end = std::min((size_t)(s.rank + 1) * c, total);
  } else {
    p.shape = {r, r};
    p.begin = 0, p.end = R * R;
    p.write_begin = 0, p.write_end = s.rank == 0 ? R * R : 0;
  }
  return p;
}

std::vector<ProjectorPart> galore_projector_parts(ProjSide side, int r, const MatrixSplit& s) {
  std::vector<ProjectorPart> out;
  const size_t R = (size_t)r, n = (size_t)s.n;
  if (side != ProjSide::Left) {  // [r, n] replicated; written by the rank holding G's element 0
    const size_t all = R * n;
    const bool writer = !s.empty() && s.begin() == 0;
    out.push_back({"proj_right", {r, s.n}, 0, all, 0, writer ? all : 0});
  }
  if (side != ProjSide::Right) {  // [m, r], rows row0..row1; a row written by its first element's rank
    ProjectorPart p{"proj_left", {s.m, r}, 0, 0, 0, 0};
    if (!s.empty()) {
      p.begin = (size_t)s.row0() * R, p.end = (size_t)s.row1() * R;
      p.write_begin = ((s.begin() + n - 1) / n) * R, p.write_end = ((s.end() + n - 1) / n) * R;
    }
    out.push_back(p);
  }
  return out;
}

void galore_projector_alloc(GaloreProjector& p, ProjSide side, int r, const MatrixSplit& s) {
  p.side = side;
  p.r = r;
  p.right.clear();
  p.left.clear();
  for (const ProjectorPart& q : galore_projector_parts(side, r, s))
    (q.state[5] == 'r' ? p.right : p.left).assign(q.end - q.begin, 0.f);
}

namespace {
void check_single(const Communicator& comm, const char* what) {
  FRUGAL_CHECK(comm.world() == 1, what, ": the placeholder GaLore projector supports one process only (world ",
               comm.world(), ")");
}
}  // namespace

bool galore_refresh(GaloreProjector& p, ProjSide side, const MatrixSplit& s, const float* g,
                    const ProjectorOptions& o, const std::string& tensor, int64_t step, Communicator& comm,
                    Backend& be) {
  check_single(comm, "galore_refresh");
  const int64_t m = s.m, n = s.n, k = std::min(m, n);
  const size_t mn = (size_t)(m * n);
  if (std::all_of(g, g + mn, [](float x) { return x == 0.f; })) return false;
  // G = U·diag(S)·Vh; A is overwritten, U [m, k], Vh [k, n] (row-major).
  std::vector<float> a(g, g + mn), S(k), U((size_t)(m * k)), Vh((size_t)(k * n));
  const int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (int)m, (int)n, a.data(), (int)n, S.data(), U.data(),
                                  (int)k, Vh.data(), (int)n);
  FRUGAL_CHECK(info == 0, "galore_refresh: sgesdd failed on ", tensor, " (info ", info, ")");
  // sign convention: the largest-|.| component of v_k (lowest index on a tie) is positive
  for (int64_t q = 0; q < k; ++q) {
    float* v = Vh.data() + q * n;
    int64_t j = 0;
    for (int64_t i = 1; i < n; ++i)
      if (std::fabs(v[i]) > std::fabs(v[j])) j = i;
    if (v[j] < 0) {
      for (int64_t i = 0; i < n; ++i) v[i] = -v[i];
      for (int64_t i = 0; i < m; ++i) U[i * k + q] = -U[i * k + q];
    }
  }
  const int r = galore_effective_rank(o.rank, m, n);
  galore_projector_alloc(p, side, r, s);
  if (side != ProjSide::Left) std::copy(Vh.begin(), Vh.begin() + (size_t)r * n, p.right.begin());
  if (side != ProjSide::Right)
    for (int64_t i = 0; i < m; ++i)
      for (int q = 0; q < r; ++q) p.left[i * r + q] = U[i * k + q];
  return true;
}

namespace {
// C [M, N] = A·B with fp64 accumulation over k in order, rounded once to fp32. Operands by element
// strides, so one loop serves every transpose: A(i, k) = A[i·ai + k·ak], B(k, j) = B[k·bk + j·bj].
void matmul_f64acc(float* C, const float* A, int64_t ai, int64_t ak, const float* B, int64_t bk, int64_t bj,
                   int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += (double)A[i * ai + k * ak] * B[k * bk + j * bj];
      C[i * N + j] = (float)acc;
    }
}
}  // namespace

void galore_project(const GaloreProjector& p, const MatrixSplit& s, const float* g, float* lo,
                    Communicator& comm, Backend& be) {
  check_single(comm, "galore_project");
  const int64_t m = s.m, n = s.n, r = p.r;
  const float* V = p.right.data();  // [r, n]
  const float* U = p.left.data();   // [m, r]
  if (p.side == ProjSide::Right) {  // lo [m, r] = G·Vᵀ
    matmul_f64acc(lo, g, n, 1, V, 1, n, m, r, n);
  } else if (p.side == ProjSide::Left) {  // lo [r, n] = Uᵀ·G
    matmul_f64acc(lo, U, 1, r, g, n, 1, r, n, m);
  } else {  // lo [r, r] = Uᵀ·G·Vᵀ, via T = Uᵀ·G [r, n] rounded to fp32 (as galore_torch's two matmuls)
    std::vector<float> T((size_t)(r * n));
    matmul_f64acc(T.data(), U, 1, r, g, n, 1, r, n, m);
    matmul_f64acc(lo, T.data(), n, 1, V, 1, n, r, r, n);
  }
}

void galore_project_back_add(const GaloreProjector& p, const MatrixSplit& s, const float* n_lo, float alpha,
                             float* w, Communicator& comm, Backend& be) {
  check_single(comm, "galore_project_back_add");
  const int64_t m = s.m, n = s.n, r = p.r;
  const float* V = p.right.data();
  const float* U = p.left.data();
  std::vector<float> full((size_t)(m * n));
  if (p.side == ProjSide::Right) {  // [m, r]·[r, n]
    matmul_f64acc(full.data(), n_lo, r, 1, V, n, 1, m, n, r);
  } else if (p.side == ProjSide::Left) {  // [m, r]·[r, n]
    matmul_f64acc(full.data(), U, r, 1, n_lo, n, 1, m, n, r);
  } else {  // (U·N) [m, r] rounded, then ·V
    std::vector<float> T((size_t)(m * r));
    matmul_f64acc(T.data(), U, r, 1, n_lo, r, 1, m, r, r);
    matmul_f64acc(full.data(), T.data(), r, 1, V, n, 1, m, n, r);
  }
  for (size_t e = 0; e < full.size(); ++e) w[e] += alpha * full[e];
}

double subspace_angle(const float* a, const float* b, int r, int64_t n) {
  // cos of the largest principal angle = the smallest singular value of A·Bᵀ [r, r]
  std::vector<double> c((size_t)r * r), S(r), U((size_t)r * r), Vt((size_t)r * r);
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < r; ++j) {
      double acc = 0;
      for (int64_t e = 0; e < n; ++e) acc += (double)a[i * n + e] * b[j * n + e];
      c[i * r + j] = acc;
    }
  FRUGAL_CHECK(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', r, r, c.data(), r, S.data(), U.data(), r, Vt.data(), r) == 0,
               "subspace_angle: dgesdd failed");
  return std::acos(std::min(1.0, S[r - 1]));
}

}  // namespace frugal
