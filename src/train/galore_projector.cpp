// galore_projector.cpp: GaLore's projector on a row-split matrix (src/train/galore_projector.h).
// Host memory (the CPU backend): the local rows are laid out as a zero-padded block Gl
// [row1 - row0, n] so that every GEMM runs on whole rows; the padding makes each element count
// once in the sums over ranks.
#include "src/train/galore_projector.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "kernels/shared_math.h"

namespace frugal {

namespace {

int64_t nrows(const MatrixSplit& s) { return s.row1() - s.row0(); }

// Gl: [row1 - row0, n] fp32, this rank's elements at their place, zeros elsewhere.
std::vector<float> local_block(const MatrixSplit& s, const float* g) {
  std::vector<float> gl((size_t)nrows(s) * s.n, 0.f);
  if (!s.empty()) std::copy(g, g + (s.end() - s.begin()), gl.begin() + (s.begin() - (size_t)s.row0() * s.n));
  return gl;
}

// Rows shared by two or more ranks (a cut strictly inside the row), sorted; same on every rank.
std::vector<int64_t> split_rows(const MatrixSplit& s) {
  std::vector<int64_t> rows;
  const size_t total = (size_t)(s.m * s.n);
  for (size_t k = 1; k + 1 < s.cuts.size(); k++)
    if (s.cuts[k] % s.n != 0 && s.cuts[k] < total) rows.push_back((int64_t)(s.cuts[k] / s.n));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

// y: [row1 - row0, w] partial rows -> complete: the split rows' partial values summed over ranks
// (one all-reduce of [split rows, w]).
void sum_split_rows(const MatrixSplit& s, float* y, int w, Communicator& comm) {
  if (comm.world() == 1) return;
  const std::vector<int64_t> rows = split_rows(s);
  if (rows.empty()) return;
  std::vector<float> buf(rows.size() * w, 0.f);  // [split rows, w]
  const int64_t r0 = s.row0(), r1 = s.row1();
  for (size_t i = 0; i < rows.size(); i++)
    if (!s.empty() && rows[i] >= r0 && rows[i] < r1) std::copy_n(y + (rows[i] - r0) * w, w, buf.begin() + i * w);
  comm.all_reduce(std::span<float>(buf));
  for (size_t i = 0; i < rows.size(); i++)
    if (!s.empty() && rows[i] >= r0 && rows[i] < r1) std::copy_n(buf.begin() + i * w, w, y + (rows[i] - r0) * w);
}

// First row whose first element this rank holds, and one past the last such row.
int64_t own_row0(const MatrixSplit& s) { return (int64_t)((s.begin() + s.n - 1) / s.n); }
int64_t own_row1(const MatrixSplit& s) { return (int64_t)((s.end() + s.n - 1) / s.n); }

void gemm(Backend& be, bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum
    if (beta == 0.f)
      for (int i = 0; i < M; i++) std::fill_n(C + (size_t)i * ldc, N, 0.f);
    return;
  }
  be.gemm_f32(ta, tb, M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc);
}

// Cholesky of the SPD a [l, l] fp64 in place (lower). False on a non-positive pivot.
bool cholesky(std::vector<double>& a, int l) {
  for (int j = 0; j < l; j++) {
    double d = a[(size_t)j * l + j];
    for (int k = 0; k < j; k++) d -= a[(size_t)j * l + k] * a[(size_t)j * l + k];
    if (!(d > 0)) return false;
    d = std::sqrt(d);
    a[(size_t)j * l + j] = d;
    for (int i = j + 1; i < l; i++) {
      double v = a[(size_t)i * l + j];
      for (int k = 0; k < j; k++) v -= a[(size_t)i * l + k] * a[(size_t)j * l + k];
      a[(size_t)i * l + j] = v / d;
    }
  }
  return true;
}

// One CholeskyQR pass on y [rows, l]: Gram = Σ_owned rows yᵢᵀyᵢ (fp64, all-reduced when
// distributed), Gram = LLᵀ, y = y·L⁻ᵀ. `owned(i)`: row i counts in the Gram (split rows once).
template <class Owned>
bool cholqr_pass(float* y, int64_t rows, int l, Owned owned, Communicator* comm, double shift) {
  std::vector<double> gram((size_t)l * l, 0.0);
  for (int64_t i = 0; i < rows; i++) {
    if (!owned(i)) continue;
    const float* yi = y + i * l;
    for (int a = 0; a < l; a++)
      for (int b = 0; b <= a; b++) gram[(size_t)a * l + b] += (double)yi[a] * yi[b];
  }
  if (comm) comm->all_reduce(std::span<double>(gram));
  double tr = 0;
  for (int a = 0; a < l; a++) tr += gram[(size_t)a * l + a];
  if (tr == 0) return false;
  for (int a = 0; a < l; a++) gram[(size_t)a * l + a] += shift * tr;
  if (!cholesky(gram, l)) return false;
  std::vector<double> row(l);
  for (int64_t i = 0; i < rows; i++) {  // solve q·Lᵀ = y row by row (forward substitution)
    float* yi = y + i * l;
    for (int a = 0; a < l; a++) {
      double v = yi[a];
      for (int b = 0; b < a; b++) v -= row[b] * gram[(size_t)a * l + b];
      row[a] = v / gram[(size_t)a * l + a];
    }
    for (int a = 0; a < l; a++) yi[a] = (float)row[a];
  }
  return true;
}

// Orthonormal columns of y [rows, l]: CholeskyQR2; shifted CholeskyQR first when the Gram is
// numerically singular (Fukaya et al. 2020, shift ~ 11·(rows·l + l²)·u·‖Y‖²).
template <class Owned>
void orth(float* y, int64_t rows, int64_t total_rows, int l, Owned owned, Communicator* comm) {
  if (!cholqr_pass(y, rows, l, owned, comm, 0.0)) {
    const double shift = 11.0 * ((double)total_rows * l + (double)l * (l + 1)) * 1.2e-7;
    cholqr_pass(y, rows, l, owned, comm, shift);  // every rank sees the same Gram: same branch
    cholqr_pass(y, rows, l, owned, comm, 0.0);
  } else {
    cholqr_pass(y, rows, l, owned, comm, 0.0);
  }
  cholqr_pass(y, rows, l, owned, comm, 0.0);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Ω [n, l] standard Gaussian (Box-Muller on the counter hash): identical on every rank.
std::vector<float> gaussian(uint64_t seed, const std::string& tensor, int64_t step, int64_t n, int l) {
  const uint64_t key = fm::lora_mix64(fm::lora_mix64(seed ^ 0x47614C6F7265ull) ^ fnv1a(tensor)) ^ (uint64_t)step;
  std::vector<float> om((size_t)n * l);
  for (size_t e = 0; e < om.size(); e++) {
    const double u1 = 1.0 - fm::counter_uniform(key, 2 * e), u2 = fm::counter_uniform(key, 2 * e + 1);
    om[e] = (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  return om;
}

// Flips pair k so that the largest-|.| entry of vt row k (lowest index on a tie) is positive.
// vt: [k, n], u: [rows, ldu] (column k flipped too).
void fix_signs(float* vt, int k, int64_t n, float* u, int64_t rows, int ldu) {
  for (int q = 0; q < k; q++) {
    float* v = vt + (size_t)q * n;
    int64_t best = 0;
    for (int64_t j = 1; j < n; j++)
      if (std::fabs(v[j]) > std::fabs(v[best])) best = j;
    if (v[best] >= 0) continue;
    for (int64_t j = 0; j < n; j++) v[j] = -v[j];
    for (int64_t i = 0; i < rows; i++) u[(size_t)i * ldu + q] = -u[(size_t)i * ldu + q];
  }
}

}  // namespace

ProjSide galore_side(const std::string& t, int64_t m, int64_t n) {
  if (t == "std") return m >= n ? ProjSide::Right : ProjSide::Left;
  if (t == "reverse_std") return m >= n ? ProjSide::Left : ProjSide::Right;
  if (t == "left") return ProjSide::Left;
  if (t == "right") return ProjSide::Right;
  if (t == "full") return ProjSide::Full;
  fail("galore proj_type '", t, "': expected std, reverse_std, left, right or full");
}

LowRankPart galore_low_rank_part(ProjSide side, int r, const MatrixSplit& s, int world) {
  LowRankPart p;
  if (side == ProjSide::Right) {
    p.shape = {s.m, r};
    p.begin = (size_t)s.row0() * r, p.end = (size_t)s.row1() * r;
    p.write_begin = (size_t)own_row0(s) * r, p.write_end = std::max(p.write_begin, (size_t)own_row1(s) * r);
    if (s.empty()) p.begin = p.end = p.write_begin = p.write_end = (size_t)s.row0() * r;
  } else if (side == ProjSide::Left) {
    p.shape = {r, s.n};
    const size_t total = (size_t)r * s.n, c = (total + world - 1) / world;
    p.begin = std::min((size_t)s.rank * c, total), p.end = std::min((size_t)(s.rank + 1) * c, total);
    p.write_begin = p.begin, p.write_end = p.end;
  } else {
    p.shape = {r, r};
    p.begin = 0, p.end = (size_t)r * r;
    p.write_begin = 0, p.write_end = s.rank == 0 ? p.end : 0;
  }
  return p;
}

std::vector<ProjectorPart> galore_projector_parts(ProjSide side, int r, const MatrixSplit& s) {
  std::vector<ProjectorPart> parts;
  if (side != ProjSide::Left)  // replicated: rank 0 writes it
    parts.push_back({"proj_right", {r, s.n}, 0, (size_t)r * s.n, 0, s.rank == 0 ? (size_t)r * s.n : 0});
  if (side != ProjSide::Right) {
    const LowRankPart l = galore_low_rank_part(ProjSide::Right, r, s, (int)s.cuts.size() - 1);  // rows of [m, r]
    parts.push_back({"proj_left", {s.m, r}, l.begin, l.end, l.write_begin, l.write_end});
  }
  return parts;
}

void galore_projector_alloc(GaloreProjector& p, ProjSide side, int r, const MatrixSplit& s) {
  p.side = side, p.r = r;
  p.right.assign(side != ProjSide::Left ? (size_t)r * s.n : 0, 0.f);
  p.left.assign(side != ProjSide::Right ? (size_t)nrows(s) * r : 0, 0.f);
}

bool galore_refresh(GaloreProjector& p, ProjSide side, const MatrixSplit& s, const float* g,
                    const ProjectorOptions& o, const std::string& tensor, int64_t step, Communicator& comm,
                    Backend& be) {
  const int r = (int)std::min<int64_t>({(int64_t)o.rank, s.m, s.n});
  const int64_t m = s.m, n = s.n, rows = nrows(s), row0 = s.row0();
  float amax = 0;
  for (size_t e = 0; e < s.end() - s.begin(); e++) amax = std::max(amax, std::fabs(g[e]));
  amax = comm.all_reduce_value(amax, CommOp::Max);
  if (!(amax > 0) || r <= 0) return false;
  std::vector<float> vt, u;  // vt: [r, n]; u: [rows, r] (this rank's rows of U[:, :r])
  if (o.svd == "exact") {
    if (comm.world() > 1)
      fail("galore: svd = \"exact\" needs the whole gradient on one process; use galore.svd = \"randomized\" "
           "under sharding");
    const int k = (int)std::min(m, n);
    std::vector<float> U((size_t)m * k), S(k), Vt((size_t)k * n);  // U: [m, k], Vt: [k, n]
    be.svd_f32(g, (int)m, (int)n, U.data(), S.data(), Vt.data());
    vt.assign(Vt.begin(), Vt.begin() + (size_t)r * n);
    u.resize((size_t)m * r);
    for (int64_t i = 0; i < m; i++) std::copy_n(U.begin() + i * k, r, u.begin() + i * r);
  } else if (o.svd == "randomized") {
    const int l = (int)std::min<int64_t>({(int64_t)r + o.oversample, m, n});
    const std::vector<float> gl = local_block(s, g);  // [rows, n]
    const std::vector<float> om = gaussian(o.seed, tensor, step, n, l);  // Ω: [n, l]
    const int64_t orow0 = own_row0(s), orow1 = own_row1(s);
    auto owned = [&](int64_t i) { return !s.empty() && row0 + i >= orow0 && row0 + i < orow1; };
    auto all = [](int64_t) { return true; };
    std::vector<float> q((size_t)rows * l), z((size_t)n * l);  // Q: [rows, l], Z: [n, l]
    gemm(be, false, false, (int)rows, l, (int)n, gl.data(), (int)n, om.data(), l, 0.f, q.data(), l);  // Y = G·Ω
    sum_split_rows(s, q.data(), l, comm);
    orth(q.data(), rows, m, l, owned, &comm);
    for (int it = 0; it < o.power_iters; it++) {
      gemm(be, true, false, (int)n, l, (int)rows, gl.data(), (int)n, q.data(), l, 0.f, z.data(), l);  // Z = Gᵀ·Q
      comm.all_reduce(std::span<float>(z));
      orth(z.data(), n, n, l, all, nullptr);  // replicated: no reduction
      gemm(be, false, false, (int)rows, l, (int)n, gl.data(), (int)n, z.data(), l, 0.f, q.data(), l);  // Y = G·Z
      sum_split_rows(s, q.data(), l, comm);
      orth(q.data(), rows, m, l, owned, &comm);
    }
    // B = Qᵀ·G [l, n]: split rows' Q is complete on each sharer, Gl's padding counts each element once.
    std::vector<float> b((size_t)l * n);
    gemm(be, true, false, l, (int)n, (int)rows, q.data(), l, gl.data(), (int)n, 0.f, b.data(), (int)n);
    comm.all_reduce(std::span<float>(b));
    std::vector<float> ub((size_t)l * l), sb(l), vb((size_t)l * n);  // B = Ub·S·Vbt
    be.svd_f32(b.data(), l, (int)n, ub.data(), sb.data(), vb.data());
    vt.assign(vb.begin(), vb.begin() + (size_t)r * n);
    u.resize((size_t)rows * r);
    gemm(be, false, false, (int)rows, r, l, q.data(), l, ub.data(), l, 0.f, u.data(), r);  // u = Q·Ub[:, :r]
  } else {
    fail("galore svd '", o.svd, "': expected exact or randomized");
  }
  fix_signs(vt.data(), r, n, u.data(), (int64_t)u.size() / r, r);
  galore_projector_alloc(p, side, r, s);
  if (side != ProjSide::Left) p.right = avector<float>(vt.begin(), vt.end());
  if (side != ProjSide::Right) {
    // exact: u holds every row (one process: rows == m)
    p.left = avector<float>(u.begin(), u.begin() + (size_t)rows * r);
  }
  return true;
}

void galore_project(const GaloreProjector& p, const MatrixSplit& s, const float* g, float* lo,
                    Communicator& comm, Backend& be) {
  const int r = p.r, n = (int)s.n, rows = (int)nrows(s), W = comm.world();
  const std::vector<float> gl = local_block(s, g);  // [rows, n]
  if (p.side == ProjSide::Right) {  // lo = G·Pᵀ [rows, r]
    gemm(be, false, true, rows, r, n, gl.data(), n, p.right.data(), n, 0.f, lo, r);
    sum_split_rows(s, lo, r, comm);
  } else if (p.side == ProjSide::Left) {  // Pᵀ·G partial [r, n], reduce-scattered into padded parts
    const size_t total = (size_t)r * n, c = (total + W - 1) / W;
    std::vector<float> part(c * W, 0.f), mine(c);
    gemm(be, true, false, r, n, rows, p.left.data(), r, gl.data(), n, 0.f, part.data(), n);
    comm.reduce_scatter(std::span<const float>(part), std::span<float>(mine));
    const LowRankPart lp = galore_low_rank_part(ProjSide::Left, r, s, W);
    std::copy_n(mine.begin(), lp.size(), lo);
  } else {  // Uᵀ·(G·Vᵀ) [r, r]: linear in the partial rows, so one all-reduce
    std::vector<float> t((size_t)rows * r);  // [rows, r]
    gemm(be, false, true, rows, r, n, gl.data(), n, p.right.data(), n, 0.f, t.data(), r);
    gemm(be, true, false, r, r, rows, p.left.data(), r, t.data(), r, 0.f, lo, r);
    comm.all_reduce(std::span<float>(lo, (size_t)r * r));
  }
}

void galore_project_back_add(const GaloreProjector& p, const MatrixSplit& s, const float* n_lo, float alpha,
                             float* w, Communicator& comm, Backend& be) {
  const int r = p.r, n = (int)s.n, rows = (int)nrows(s), W = comm.world();
  std::vector<float> full((size_t)rows * n);  // [rows, n]
  if (p.side == ProjSide::Right) {  // N [rows, r] · P [r, n]
    gemm(be, false, false, rows, n, r, n_lo, r, p.right.data(), n, 0.f, full.data(), n);
  } else if (p.side == ProjSide::Left) {  // P [rows, r] · N [r, n], N all-gathered
    const size_t total = (size_t)r * n, c = (total + W - 1) / W;
    const LowRankPart lp = galore_low_rank_part(ProjSide::Left, r, s, W);
    std::vector<float> mine(c, 0.f), all(c * W);
    std::copy_n(n_lo, lp.size(), mine.begin());
    comm.all_gather(std::span<const float>(mine), std::span<float>(all));
    gemm(be, false, false, rows, n, r, p.left.data(), r, all.data(), n, 0.f, full.data(), n);
  } else {  // U [rows, r] · (N [r, r] · Vh [r, n])
    std::vector<float> t((size_t)r * n);
    gemm(be, false, false, r, n, r, n_lo, r, p.right.data(), n, 0.f, t.data(), n);
    gemm(be, false, false, rows, n, r, p.left.data(), r, t.data(), n, 0.f, full.data(), n);
  }
  if (s.empty()) return;
  const size_t off = s.begin() - (size_t)s.row0() * n;
  for (size_t e = 0; e < s.end() - s.begin(); e++) w[e] += alpha * full[off + e];
}

double subspace_angle(const float* a, const float* b, int r, int64_t n) {
  // E = A - (A·Bᵀ)·B [r, n] (fp64); sin θ_max = σ_max(E) = sqrt(λ_max(E·Eᵀ)) by cyclic Jacobi.
  std::vector<double> c((size_t)r * r, 0.0), e((size_t)r * n);
  for (int i = 0; i < r; i++)
    for (int j = 0; j < r; j++)
      for (int64_t k = 0; k < n; k++) c[(size_t)i * r + j] += (double)a[i * n + k] * b[j * n + k];
  for (int i = 0; i < r; i++)
    for (int64_t k = 0; k < n; k++) {
      double v = a[i * n + k];
      for (int j = 0; j < r; j++) v -= c[(size_t)i * r + j] * b[j * n + k];
      e[(size_t)i * n + k] = v;
    }
  std::vector<double> s((size_t)r * r, 0.0);  // E·Eᵀ [r, r]
  for (int i = 0; i < r; i++)
    for (int j = 0; j < r; j++)
      for (int64_t k = 0; k < n; k++) s[(size_t)i * r + j] += e[(size_t)i * n + k] * e[(size_t)j * n + k];
  for (int sweep = 0; sweep < 60; sweep++) {
    double off = 0;
    for (int i = 0; i < r; i++)
      for (int j = i + 1; j < r; j++) off += s[(size_t)i * r + j] * s[(size_t)i * r + j];
    if (off < 1e-30) break;
    for (int pp = 0; pp < r; pp++)
      for (int q = pp + 1; q < r; q++) {
        const double apq = s[(size_t)pp * r + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double th = (s[(size_t)q * r + q] - s[(size_t)pp * r + pp]) / (2 * apq);
        const double t = (th >= 0 ? 1 : -1) / (std::fabs(th) + std::sqrt(th * th + 1));
        const double cs = 1 / std::sqrt(t * t + 1), sn = t * cs;
        for (int k = 0; k < r; k++) {  // columns pp, q
          const double x = s[(size_t)k * r + pp], y = s[(size_t)k * r + q];
          s[(size_t)k * r + pp] = cs * x - sn * y, s[(size_t)k * r + q] = sn * x + cs * y;
        }
        for (int k = 0; k < r; k++) {  // rows pp, q
          const double x = s[(size_t)pp * r + k], y = s[(size_t)q * r + k];
          s[(size_t)pp * r + k] = cs * x - sn * y, s[(size_t)q * r + k] = sn * x + cs * y;
        }
      }
  }
  double lmax = 0;
  for (int i = 0; i < r; i++) lmax = std::max(lmax, s[(size_t)i * r + i]);
  return std::asin(std::min(1.0, std::sqrt(std::max(0.0, lmax))));
}

}  // namespace frugal
