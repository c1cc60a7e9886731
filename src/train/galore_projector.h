// galore_projector.h: GaLore's gradient projector (galore_torch GaLoreProjector, SPEC.md §5) on a
// matrix whose rows may be split over ranks, so that FSDP's flat shards never have to assemble
// another rank's gradient rows.
//
// G: [m, n] fp32 row-major. Rank r holds the flat elements [cuts[r], cuts[r+1]) of it: full rows
// plus at most a partial first and a partial last row (a "split row" is shared by two or more
// ranks). One process: cuts = {0, m·n}, and every collective below is a no-op copy.
//
// Sides (r = min(rank, m, n)):
//   Right: P = Vh[:r]    [r, n]  a flat 1/W slice per rank, all-gathered while used; G_lo = G·Pᵀ  [m, r]
//   Left:  P = U[:, :r]  [m, r]  a flat 1/W slice per rank, all-gathered while used; G_lo = Pᵀ·G  [r, n]
//   Full:  both;                                                               G_lo = Uᵀ·G·Vhᵀ [r, r]
// Sign convention (exact and randomized, and scripts/gen_galore_fixture.py): each singular pair
// (u_k, v_k) is flipped together so that the largest-|.| component of v_k (lowest index on a tie)
// is positive. Moments are not reset at a refresh, so the sign is part of the algorithm's state.
//
// Refresh: svd = "exact": LAPACK's SVD of the whole G (one process only: a sharded G needs the
// randomized path, the recipe check says so). svd = "randomized": a range finder with subspace
// iteration (Halko, Martinsson, Tropp 2011, alg. 4.4) over the split rows:
//   Ω [n, l] Gaussian from (seed, tensor, step), l = min(r + oversample, m, n)
//   Y = G·Ω (split rows summed), Q = orth(Y) (shifted CholeskyQR3 on the distributed rows, l×l
//   all-reduces; when l = m the range is all of R^m and Q = I, B = G: exact)
//   power_iters times: Z = Gᵀ·Q ([n, l] all-reduce), orth(Z), Y = G·Z, Q = orth(Y)
//   B = Qᵀ·G ([l, n] all-reduce), B = Ub·S·Vbᵀ (small SVD, replicated), v_k = Vb[:, k], u_k = Q·Ub[:, k]
// When Y is numerically rank-deficient (rank(G) < l), the Gram's missing eigendirections get a
// Gaussian column before CholeskyQR (galore_randomized.cpp), so Q stays orthonormal and keeps
// G's range. Ω and that fill are indexed by global row / element: the same on every world size.
// Every collective is over the whole communicator (ranks that hold none of G take part with zero
// contributions), so every rank must call these for the same tensors in the same order.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "src/common.h"
#include "src/model/backend.h"

namespace frugal {

struct MatrixSplit {
  int64_t m = 0, n = 0;
  std::vector<size_t> cuts;  // [W + 1]: cuts[0] = 0, cuts[W] = m·n, non-decreasing
  int rank = 0;
  size_t begin() const { return cuts[rank]; }
  size_t end() const { return cuts[rank + 1]; }
  bool empty() const { return begin() == end(); }
  int64_t row0() const { return (int64_t)(begin() / (size_t)n); }                    // first row touched
  int64_t row1() const { return empty() ? row0() : (int64_t)((end() + n - 1) / n); }  // one past the last
  static MatrixSplit whole(int64_t m, int64_t n) { return {m, n, {0, (size_t)(m * n)}, 0}; }
};

enum class ProjSide { Left, Right, Full };
// proj_type "std" (Right if m >= n, else Left), "reverse_std" (the opposite), "left", "right",
// "full"; anything else throws naming it.
ProjSide galore_side(const std::string& proj_type, int64_t m, int64_t n);

// r = min(rank, m, n): a projector never has more directions than G has.
inline int galore_effective_rank(int rank, int64_t m, int64_t n) {
  return (int)std::min<int64_t>(rank, std::min(m, n));
}

struct ProjectorOptions {
  int rank = 128;               // requested r (effective: min(rank, m, n))
  std::string svd = "exact";    // exact | randomized
  int oversample = 8;           // randomized: l = min(r + oversample, m, n)
  int power_iters = 2;          // randomized: subspace iterations
  uint64_t seed = 0;            // randomized: Ω depends on (seed, tensor name, step) only
};

// One tensor's projector as this rank holds it.
struct GaloreProjector {
  ProjSide side = ProjSide::Right;
  int r = 0;                    // effective rank (0 until the first refresh)
  avector<float> right;         // Right, Full: this rank's flat slice of Vh[:r] [r, n] (galore_projector_parts)
  avector<float> left;          // Left, Full:  this rank's flat slice of U[:, :r] [m, r]
  avector<float> right_all;     // transient: the whole Vh[:r] [r, n] while a step uses it (galore_acquire)
  avector<float> left_all;      // transient: the whole U[:, :r] [m, r] while a step uses it
  bool valid() const { return r > 0; }
};

// Makes p.right_all / p.left_all the whole projector (r·n / m·r floats): an all-gather of the
// ranks' slices, nothing when it is there already (a refresh leaves it). Collective.
// galore_project and galore_project_back_add need it; galore_release frees it.
void galore_acquire(GaloreProjector& p, const MatrixSplit& s, Communicator& comm);
void galore_release(GaloreProjector& p);

// The projected gradient's (and the moments') shape and this rank's part of it:
//   Right: [m, r], the flat range [rank·c, min((rank+1)·c, m·r)), c = ceil(m·r / W): the local
//          rows' Gl·Pᵀ are reduce-scattered there (and N all-gathered back), so the moments are
//          1/W per rank whichever rows of which tensors a rank's shard holds
//   Left:  [r, n], the flat range [rank·c, min((rank+1)·c, r·n)), c = ceil(r·n / W) (reduce-scattered)
//   Full:  [r, r], replicated on every rank (written by rank 0)
struct LowRankPart {
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0, write_begin = 0, write_end = 0;
  size_t size() const { return end - begin; }
};
LowRankPart galore_low_rank_part(ProjSide side, int r, const MatrixSplit& s, int world);

// The projector's state parts as stored in a checkpoint: "proj_right" [r, n] and "proj_left"
// [m, r] (those of the side, in that order), each a flat 1/W slice [rank·c, (rank+1)·c) with
// c = ceil(size / W), held and written by that rank.
struct ProjectorPart {
  const char* state;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0, write_begin = 0, write_end = 0;
};
std::vector<ProjectorPart> galore_projector_parts(ProjSide side, int r, const MatrixSplit& s);
// Sizes p.right / p.left for (side, r, s) and zero-fills them (a checkpoint load then fills them).
void galore_projector_alloc(GaloreProjector& p, ProjSide side, int r, const MatrixSplit& s);

// Computes P from this rank's part of G (g: [s.end() - s.begin()]). Collective. Returns false,
// leaving p unchanged, when G is exactly zero on every rank (no subspace to take; GaLoreAdamW
// then defers the refresh to the next step). Throws on every rank when G has a NaN / Inf anywhere,
// or for svd = "exact" when the world has more than one rank.
bool galore_refresh(GaloreProjector& p, ProjSide side, const MatrixSplit& s, const float* g,
                    const ProjectorOptions& o, const std::string& tensor, int64_t step, Communicator& comm,
                    Backend& be);

// lo = this rank's part (galore_low_rank_part) of the projected gradient. Collective.
void galore_project(const GaloreProjector& p, const MatrixSplit& s, const float* g, float* lo,
                    Communicator& comm, Backend& be);

// w[e] += alpha · project_back(n)[e] for this rank's elements e (w: [s.end() - s.begin()]);
// n: this rank's part of the low-rank update (galore_low_rank_part). Collective (Left all-gathers n).
void galore_project_back_add(const GaloreProjector& p, const MatrixSplit& s, const float* n_lo, float alpha,
                             float* w, Communicator& comm, Backend& be);

// Largest principal angle (radians) between the row spaces of two [r, n] orthonormal-row matrices
// (tests: randomized vs exact).
double subspace_angle(const float* a, const float* b, int r, int64_t n);

}  // namespace frugal
