// galore_randomized.cpp: GaLore's randomized refresh on a row-split G (galore_projector.h): a range
// finder with subspace iteration (Halko, Martinsson, Tropp 2011, alg. 4.4), shifted CholeskyQR3 on the
// distributed rows, and the replicated small SVD of B = Qᵀ·G. Also subspace_angle and the Jacobi
// eigensolver it uses (the rank-deficiency fill of CholeskyQR uses the backend's eigh_f64).
//
// Every collective is over the whole communicator and their number does not depend on the data
// seen by one rank (decisions are taken on all-reduced values and agreed with a Min), so ranks
// that hold nothing take part with zero contributions and no rank can leave a collective early.
#include <algorithm>
#include <cmath>
#include <span>

#include "kernels/shared_math.h"
#include "src/train/galore_rows.h"

namespace frugal {
namespace galore_detail {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Stream key of (seed, tensor, step, purpose): Ω (purpose 0) and the rank-deficiency fill Ψ (1).
uint64_t stream_key(uint64_t seed, const std::string& tensor, int64_t step, uint64_t purpose) {
  uint64_t k = fm::lora_mix64(seed ^ 0x47614C6F72654F6Dull);  // "GaLoreOm"
  k = fm::lora_mix64(k ^ fnv1a(tensor));
  k = fm::lora_mix64(k ^ (uint64_t)step);
  return fm::lora_mix64(k ^ purpose);
}

// Element e of a standard Gaussian stream (Box-Muller on two counter uniforms): a function of
// (key, e) only, so every rank and every world size draws the same values.
float gauss(uint64_t key, uint64_t e) {
  const double u1 = 1.0 - (double)fm::counter_uniform(key, 2 * e);  // (0, 1]
  const double u2 = fm::counter_uniform(key, 2 * e + 1);
  return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// Lower Cholesky of the SPD a [l, l] fp64 in place. False when a pivot is not above
// tol · trace(a): Y is then too ill-conditioned for CholeskyQR (κ(Y)² ≳ 1 / tol).
bool cholesky(std::vector<double>& a, int l, double tol) {
  double tr = 0;
  for (int j = 0; j < l; j++) tr += a[(size_t)j * l + j];
  if (!(tr > 0)) return false;
  for (int j = 0; j < l; j++) {
    double d = a[(size_t)j * l + j];
    for (int k = 0; k < j; k++) d -= a[(size_t)j * l + k] * a[(size_t)j * l + k];
    if (!(d > tol * tr)) return false;
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

// The columns of a tall matrix Y [rows, l] fp32, either distributed (this rank's rows of G's row
// space, split rows complete on every sharer, a row counted in the Gram by its owner) or replicated
// (Z [n, l], every rank holds all of it: comm = nullptr).
struct TallRows {
  float* y;
  int64_t rows;        // local rows
  int l;
  int64_t total_rows;  // global rows (m or n)
  int64_t grow0;       // global index of local row 0
  int64_t own0, own1;  // global rows whose Gram contribution this rank adds
  Communicator* comm;  // nullptr: replicated
  Backend* be;         // gram_f64, tri_solve_lt_f64
};

// Gram = YᵀY [l, l] fp64 (full), summed over the ranks when distributed.
std::vector<double> gram(const TallRows& t) {
  const int l = t.l;
  std::vector<double> g((size_t)l * l, 0.0);
  // the owned rows are contiguous: local rows [own0 - grow0, own1 - grow0) clamped to [0, rows)
  const int64_t i0 = std::clamp<int64_t>(t.own0 - t.grow0, 0, t.rows), i1 = std::clamp<int64_t>(t.own1 - t.grow0, 0, t.rows);
  if (i1 > i0) t.be->gram_f64(t.y + i0 * l, (int)(i1 - i0), l, g.data());
  if (t.comm) t.comm->all_reduce(std::span<double>(g));
  return g;
}

// Same decision on every rank (the Gram is all-reduced, so it already is; the Min makes sure).
bool agree(const TallRows& t, bool ok) {
  if (!t.comm || t.comm->world() == 1) return ok;
  return t.comm->all_reduce_value<int32_t>(ok ? 1 : 0, CommOp::Min) == 1;
}

constexpr double kPivotTol = 1e-12;  // κ(Y) up to ~1e6: one fp64 CholeskyQR pass then loses ≲ 1e-4

// One CholeskyQR pass: Y = Y·L⁻ᵀ with YᵀY = L·Lᵀ. When Y is numerically rank-deficient (a rank
// deficient G, or l > rank(G)), its Gram's eigenvectors v_k with λ_k ≤ kPivotTol·λ_max get a
// Gaussian component first: Y += Ψ[:, k]·sqrt(λ_ref / total_rows)·v_kᵀ. That leaves Y·v_j of the
// other directions as they were (the range that G has is kept) and fills the missing ones with
// random directions, so Q stays orthonormal. Ψ is indexed by global row: split rows get the same
// values on every sharer, and every world size the same Ψ.
//
// shifted: the first pass of shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa
// 2020): Cholesky of YᵀY + s·I with s = 11·(rows·l + l·(l+1))·u·trace(YᵀY), u = 2^-24 (Y is fp32),
// which succeeds for any κ(Y) < ~1/u and leaves Y·L⁻ᵀ with κ ≲ √(1/(11·rows·l·u)), so the two
// plain passes after it always meet their pivot tolerance (a sketch as wide as G, l = min(m, n),
// has G's full condition number: the small preset's k_proj [192, 576] at rank 256 failed there).
void cholqr_pass(const TallRows& t, uint64_t psi_key, bool shifted) {
  const int l = t.l;
  std::vector<double> g = gram(t), chol = g;
  auto shift = [&] {
    if (!shifted) return;
    double tr = 0;
    for (int k = 0; k < l; k++) tr += g[(size_t)k * l + k];
    const double sh = 11.0 * ((double)t.total_rows * l + (double)l * (l + 1)) * std::ldexp(1.0, -24) * tr;
    for (int k = 0; k < l; k++) chol[(size_t)k * l + k] += sh;
  };
  shift();
  for (int attempt = 0; !agree(t, cholesky(chol, l, kPivotTol)); attempt++) {
    if (attempt == 3)
      fail("galore randomized SVD: CholeskyQR failed 3 times after filling rank-deficient directions (l = ", l,
           ", rows = ", t.total_rows, ")");
    // eigenpairs of the Gram (LAPACK dsyevd through the backend: Jacobi sweeps in scalar code took
    // minutes at l = 264, and a gradient of B·T tokens has rank <= B·T, so l > B·T lands here)
    std::vector<double> vecs = g, lam(l);
    t.be->eigh_f64(vecs.data(), l, lam.data());
    for (int k = 0; k < l; k++) g[(size_t)k * l + k] = lam[k];  // g's diagonal: the eigenvalues from here on
    double lmax = 0;
    for (int k = 0; k < l; k++) lmax = std::max(lmax, g[(size_t)k * l + k]);
    const double lref = lmax > 0 ? lmax : 1.0;
    const double scale = std::sqrt(lref / (double)t.total_rows);
    for (int k = 0; k < l; k++) {
      if (g[(size_t)k * l + k] > 2 * kPivotTol * l * lref) continue;  // a direction Y has (pivots > tol·trace)
      const uint64_t key = fm::lora_mix64(psi_key ^ (uint64_t)(attempt * l + k));
      for (int64_t i = 0; i < t.rows; i++) {
        const double psi = scale * gauss(key, (uint64_t)(t.grow0 + i));
        float* yi = t.y + i * l;
        for (int a = 0; a < l; a++) yi[a] = (float)(yi[a] + psi * vecs[(size_t)a * l + k]);
      }
    }
    g = gram(t), chol = g;
    shift();
  }
  // Q = Y·L⁻ᵀ (q_i·Lᵀ = y_i for every row), in fp64
  if (t.rows > 0) t.be->tri_solve_lt_f64(t.y, (int)t.rows, l, chol.data());
}

// Q = orth(Y): shifted CholeskyQR3 (a shifted pass that brings κ down to ~1e2..1e3, then two plain
// passes; the last restores orthogonality to fp32 level).
void orth(const TallRows& t, uint64_t psi_key) {
  cholqr_pass(t, psi_key, true);
  cholqr_pass(t, psi_key, false);
  cholqr_pass(t, psi_key, false);
}

}  // namespace

void randomized_svd(const MatrixSplit& s, const float* g, int r, const ProjectorOptions& o,
                    const std::string& tensor, int64_t step, Communicator& comm, Backend& be,
                    std::vector<float>& vt, std::vector<float>& u) {
  const int64_t m = s.m, n = s.n, rows = local_rows(s);
  const int l = (int)std::min<int64_t>({(int64_t)r + o.oversample, m, n});
  const LocalBlock blk = local_block(s, g);
  const float* gl = blk.data;  // Gl: [rows, n]
  const uint64_t om_key = stream_key(o.seed, tensor, step, 0), psi_key = stream_key(o.seed, tensor, step, 1);
  std::vector<float> om((size_t)n * l);  // Ω: [n, l], element (i, j) at i·l + j
  for (size_t e = 0; e < om.size(); e++) om[e] = gauss(om_key, e);

  std::vector<float> q((size_t)rows * l), z((size_t)n * l);  // Q: [rows, l], Z: [n, l]
  const TallRows tq{q.data(), rows, l, m, s.row0(), own_row0(s), own_row1(s), &comm, &be};
  const TallRows tz{z.data(), n, l, n, 0, 0, n, nullptr, &be};
  // A sketch at least as wide as G has rows (l = m): the range of G is all of R^m, so Q = I [m, m]
  // (this rank's rows of it) and B = Qᵀ·G = G: the exact SVD through the same all-reduce, with no
  // CholeskyQR of a square, possibly singular Y (a gradient of B·T tokens has rank <= B·T).
  const bool whole_range = l >= m;
  if (whole_range) {
    for (int64_t i = 0; i < rows; i++) q[(size_t)i * l + (size_t)(s.row0() + i)] = 1.f;
  } else {
    // Y = G·Ω [rows, l]: split rows summed; Q = orth(Y)
    gemm(be, false, false, (int)rows, l, (int)n, gl, (int)n, om.data(), l, 0.f, q.data(), l);
    sum_split_rows(s, q.data(), l, comm);
    orth(tq, psi_key);
  }
  for (int it = 0; !whole_range && it < o.power_iters; it++) {
    // Z = Gᵀ·Q [n, l]: the padding makes each element count once in the sum over ranks
    gemm(be, true, false, (int)n, l, (int)rows, gl, (int)n, q.data(), l, 0.f, z.data(), l);
    comm.all_reduce(std::span<float>(z));
    orth(tz, psi_key ^ 0x5A5A);
    // Y = G·Z [rows, l]; Q = orth(Y)
    gemm(be, false, false, (int)rows, l, (int)n, gl, (int)n, z.data(), l, 0.f, q.data(), l);
    sum_split_rows(s, q.data(), l, comm);
    orth(tq, psi_key);
  }
  // B = Qᵀ·G [l, n] (all-reduced), B = Ub·diag(S)·Vb, replicated: Ub [l, l], Vb [l, n]
  std::vector<float> b((size_t)l * n), ub((size_t)l * l), sb(l), vb((size_t)l * n);
  gemm(be, true, false, l, (int)n, (int)rows, q.data(), l, gl, (int)n, 0.f, b.data(), (int)n);
  comm.all_reduce(std::span<float>(b));
  be.svd_f32(b.data(), l, (int)n, ub.data(), sb.data(), vb.data());
  // v_k = Vb[k], u_k = Q·Ub[:, k]: vt [r, n], u [rows, r]
  vt.assign(vb.begin(), vb.begin() + (size_t)r * n);
  u.assign((size_t)rows * r, 0.f);
  gemm(be, false, false, (int)rows, r, l, q.data(), l, ub.data(), l, 0.f, u.data(), r);
}

// Symmetric eigendecomposition of a [l, l] fp64 (cyclic Jacobi; subspace_angle's r x r matrices):
// on return a's diagonal holds the eigenvalues, vecs [l, l] the eigenvectors as columns.
static void sym_eig(std::vector<double>& a, int l, std::vector<double>& vecs) {
  vecs.assign((size_t)l * l, 0.0);
  for (int i = 0; i < l; i++) vecs[(size_t)i * l + i] = 1.0;
  double frob = 0;
  for (double x : a) frob += x * x;
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0;
    for (int i = 0; i < l; i++)
      for (int j = i + 1; j < l; j++) off += a[(size_t)i * l + j] * a[(size_t)i * l + j];
    if (!(off > 1e-32 * frob)) break;
    for (int p = 0; p < l; p++)
      for (int q = p + 1; q < l; q++) {
        const double apq = a[(size_t)p * l + q];
        if (apq == 0) continue;
        // rotation J in (p, q) with (JᵀAJ)[p][q] = 0 (Numerical Recipes §11.1)
        const double th = (a[(size_t)q * l + q] - a[(size_t)p * l + p]) / (2 * apq);
        const double t = (th >= 0 ? 1.0 : -1.0) / (std::fabs(th) + std::sqrt(th * th + 1));
        const double c = 1 / std::sqrt(t * t + 1), sn = t * c;
        for (int k = 0; k < l; k++) {  // columns p, q
          const double x = a[(size_t)k * l + p], y = a[(size_t)k * l + q];
          a[(size_t)k * l + p] = c * x - sn * y, a[(size_t)k * l + q] = sn * x + c * y;
        }
        for (int k = 0; k < l; k++) {  // rows p, q
          const double x = a[(size_t)p * l + k], y = a[(size_t)q * l + k];
          a[(size_t)p * l + k] = c * x - sn * y, a[(size_t)q * l + k] = sn * x + c * y;
        }
        for (int k = 0; k < l; k++) {  // eigenvectors
          const double x = vecs[(size_t)k * l + p], y = vecs[(size_t)k * l + q];
          vecs[(size_t)k * l + p] = c * x - sn * y, vecs[(size_t)k * l + q] = sn * x + c * y;
        }
      }
  }
}

}  // namespace galore_detail

double subspace_angle(const float* a, const float* b, int r, int64_t n) {
  // E = A - (A·Bᵀ)·B [r, n] fp64 (A's rows less their part in B's row space);
  // sin θ_max = σ_max(E) = sqrt(λ_max(E·Eᵀ)) (accurate for small angles, unlike acos(σ_min(A·Bᵀ)))
  std::vector<double> c((size_t)r * r, 0.0), e((size_t)r * n), ee((size_t)r * r, 0.0), vecs;
  for (int i = 0; i < r; i++)
    for (int j = 0; j < r; j++)
      for (int64_t k = 0; k < n; k++) c[(size_t)i * r + j] += (double)a[i * n + k] * b[j * n + k];
  for (int i = 0; i < r; i++)
    for (int64_t k = 0; k < n; k++) {
      double v = a[i * n + k];
      for (int j = 0; j < r; j++) v -= c[(size_t)i * r + j] * b[j * n + k];
      e[(size_t)i * n + k] = v;
    }
  for (int i = 0; i < r; i++)
    for (int j = 0; j < r; j++)
      for (int64_t k = 0; k < n; k++) ee[(size_t)i * r + j] += e[(size_t)i * n + k] * e[(size_t)j * n + k];
  galore_detail::sym_eig(ee, r, vecs);
  double lmax = 0;
  for (int i = 0; i < r; i++) lmax = std::max(lmax, ee[(size_t)i * r + i]);
  return std::asin(std::min(1.0, std::sqrt(lmax)));
}

}  // namespace frugal
