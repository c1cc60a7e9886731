// mpi_galore_projector.cpp: GaLore's projector on a row-split gradient (galore_projector.h) under
// mpirun (np 1, 2, 3, 4): for Left, Right and Full and cuts that split rows (uneven, one rank
// inside a single row, empty ranks), the randomized refresh, project and project_back_add at
// world W equal the same computed by one process (self communicator) on the whole matrix.
//
// Truth: every rank runs the single-process projector on the whole G itself. The two differ only
// in the order of fp32 sums (GEMMs over fewer rows, partial sums over ranks added by all-reduce /
// reduce-scatter), i.e. each is the exact algorithm on G plus a backward error of at most
// ε = √(mn)·u·σ_0 (u = 2^-24), amplified (Wedin, per singular pair) by 1/δ with δ = the smallest
// gap σ_j - σ_{j+1}, j < r, and by the subspace iteration's (σ_0/σ_{r-1})^(2q+1) (a relative
// rounding of Y = (GGᵀ)^q·G·Ω moves its r-th direction by that much). So per singular vector
//   ‖ΔP_j‖ ≤ tolP = 2·ε·(1/δ + (σ_0/σ_{r-1})^(2q+1)/σ_0)   (2: both sides deviate)
// project: |Δlo| ≤ σ_0·tolP per P factor (Full: two); project_back: |Δ| ≤ Σ_j|N_ij|·tolP per factor.
// GaloreAdamW on FSDP-style pieces (a flat param split over ranks) against whole tensors: Adam's
// m/√v amplifies those differences element by element, so that one is bounded, as in mpi_train, by
// 3x the noise floor its reference measures (the reference again with every GEMM output moved one
// ulp, set_gemm_output_jitter).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cpu/dnnl_matmul.h"
#include "src/train/galore.h"
#include "src/train/galore_projector.h"
#include "tests/galore_matrix.h"
#include "tests/mpi_util.h"

using namespace frugal;

namespace {

constexpr double kU = 5.960464477539063e-8;  // 2^-24
const char* kTensor = "layers.1.self_attn.o_proj.weight";

struct ProjRun {
  bool ok = false;
  GaloreProjector p;
  LowRankPart part;
  std::vector<float> lo, w;  // this rank's part of the projected G; this rank's elements of w
};

// refresh, project, project_back_add of one (side, split) on comm
ProjRun run_projector(const std::vector<float>& g, ProjSide side, const MatrixSplit& s, const ProjectorOptions& o,
        const std::vector<float>& n_full, const std::vector<float>& w0, float alpha, Communicator& comm) {
  ProjRun out;
  const float* gl = g.data() + s.begin();
  out.ok = galore_refresh(out.p, side, s, gl, o, kTensor, 6, comm, cpu_backend());
  if (!out.ok) return out;
  out.part = galore_low_rank_part(side, out.p.r, s, comm.world());
  out.lo.assign(out.part.size(), 0.f);
  galore_project(out.p, s, gl, out.lo.data(), comm, cpu_backend());
  out.w.assign(w0.begin() + s.begin(), w0.begin() + s.end());
  galore_project_back_add(out.p, s, n_full.data() + out.part.begin, alpha, out.w.data(), comm, cpu_backend());
  return out;
}

// Cut patterns over W ranks of an [m, n] matrix (every one splits rows for some W).
std::vector<std::pair<std::string, std::vector<size_t>>> cut_patterns(int W, int64_t m, int64_t n) {
  const size_t total = (size_t)(m * n);
  std::vector<std::pair<std::string, std::vector<size_t>>> out;
  auto even = [&](size_t from, int first, std::vector<size_t>& c) {  // ranks first..W-1 share [from, total)
    for (int k = first; k <= W; k++) c[k] = from + (total - from) * (size_t)(k - first) / (size_t)(W - first);
  };
  std::vector<size_t> c(W + 1, 0);
  even(0, 0, c), out.push_back({"even", c});
  if (W == 1) return out;
  c.assign(W + 1, 0), even(0, 1, c), out.push_back({"rank 0 empty", c});
  c.assign(W + 1, 0);
  c[1] = (size_t)(5 * n + 3);
  if (W >= 3) c[2] = (size_t)(5 * n + 10);  // rank 1 inside row 5
  even(c[W >= 3 ? 2 : 1], W >= 3 ? 2 : 1, c);
  out.push_back({"inside one row", c});
  std::vector<double> wt(W);  // uneven weights (k+1)^2, the middle rank empty
  double sum = 0;
  for (int k = 0; k < W; k++) sum += wt[k] = k == W / 2 ? 0.0 : (double)((k + 1) * (k + 1));
  c.assign(W + 1, 0);
  for (int k = 0; k < W; k++) c[k + 1] = c[k] + (size_t)std::llround(total * wt[k] / sum);
  c[W] = total;
  for (int k = 1; k < W; k++) c[k] = std::min(c[k], total);
  out.push_back({"uneven, middle rank empty", c});
  c.assign(W + 1, 0), c[W] = total, out.push_back({"all on the last rank", c});
  return out;
}

double max_abs_diff(const float* a, const float* b, size_t count) {
  double d = 0;
  for (size_t e = 0; e < count; e++) d = std::max(d, std::fabs((double)a[e] - b[e]));
  return d;  // a NaN is lost by std::max: finite() is checked beside
}

bool finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

const char* side_name(ProjSide s) { return s == ProjSide::Left ? "left" : s == ProjSide::Right ? "right" : "full"; }

}  // namespace

TEST(GaloreProjectorSharded, RandomizedEqualsSingleProcess) {
  Communicator& comm = test::world();
  const int W = comm.world(), rank = comm.rank();
  auto self = make_self_communicator();
  const int64_t m = 37, n = 23;
  const int r = 5, q = 2;
  const test_util::KnownSvd K = test_util::make_known_svd(m, n, [](int64_t j) { return std::pow(0.8, (double)j); }, 21);
  const ProjectorOptions o{r, "randomized", 6, q, 99};
  double delta = 1e300;
  for (int j = 0; j < r; j++) delta = std::min(delta, K.sigma[j] - K.sigma[j + 1]);
  const double eps = std::sqrt((double)(m * n)) * kU * K.sigma[0];
  const double tolP = 2 * eps * (1 / delta + std::pow(K.sigma[0] / K.sigma[r - 1], 2 * q + 1) / K.sigma[0]);
  std::vector<float> w0((size_t)(m * n));
  for (size_t e = 0; e < w0.size(); e++) w0[e] = 0.01f * std::cos(0.37f * (float)e);
  const float alpha = -0.25f;
  for (const ProjSide side : {ProjSide::Left, ProjSide::Right, ProjSide::Full}) {
    const size_t lo_numel = side == ProjSide::Right ? (size_t)(m * r) : side == ProjSide::Left ? (size_t)(r * n) : (size_t)(r * r);
    std::vector<float> n_full(lo_numel);  // a low-rank update in the projected shape
    for (size_t e = 0; e < lo_numel; e++) n_full[e] = std::sin(0.7f * (float)e + 0.3f);
    const ProjRun ref = run_projector(K.g, side, MatrixSplit::whole(m, n), o, n_full, w0, alpha, *self);
    ASSERT_TRUE(ref.ok);
    // scales: σ_0 for lo; max_i Σ_j |N_ij| (times σ_0-free factors of P) for the update
    const int factors = side == ProjSide::Full ? 2 : 1;
    double nscale = 0;
    if (side == ProjSide::Full) {
      for (int i = 0; i < r; i++) {
        double s = 0;
        for (int j = 0; j < r; j++) s += std::fabs(n_full[i * r + j]);
        nscale = std::max(nscale, s);
      }
      nscale *= r;  // ·Vh then U·: each entry of U or Vh ≤ 1
    } else {
      const int64_t rows = side == ProjSide::Right ? m : n;  // N [m, r] (Right) or [r, n] (Left): Σ over r
      for (int64_t i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < r; j++) s += std::fabs(side == ProjSide::Right ? n_full[i * r + j] : n_full[j * n + i]);
        nscale = std::max(nscale, s);
      }
    }
    for (const auto& [pattern, cuts] : cut_patterns(W, m, n)) {
      const MatrixSplit s{m, n, cuts, rank};
      const ProjRun got = run_projector(K.g, side, s, o, n_full, w0, alpha, comm);
      EXPECT_ALL_RANKS(got.ok, side_name(side) << " " << pattern << ": refresh returned false");
      if (!got.ok) continue;  // the same on every rank (the zero test is an all-reduce)
      double dp = 0, dlo = 0, dw = 0;
      if (side != ProjSide::Left) dp = std::max(dp, max_abs_diff(got.p.right_all.data(), ref.p.right_all.data(), (size_t)r * n));
      if (side != ProjSide::Right) dp = std::max(dp, max_abs_diff(got.p.left_all.data(), ref.p.left_all.data(), (size_t)m * r));
      dlo = max_abs_diff(got.lo.data(), ref.lo.data() + got.part.begin, got.part.size()) / K.sigma[0];
      for (size_t e = 0; e < got.w.size(); e++)
        dw = std::max(dw, std::fabs((double)got.w[e] - ref.w[s.begin() + e]) / (std::fabs(alpha) * nscale));
      const bool fin = finite(got.lo) && finite(got.w) && finite(std::vector<float>(got.p.right_all.begin(), got.p.right_all.end())) &&
                       finite(std::vector<float>(got.p.left_all.begin(), got.p.left_all.end()));
      // each projector is kept as this rank's flat slice (1/W of [r, n] / [m, r]) of the whole one
      auto slice_ok = [&](const avector<float>& slice, const avector<float>& whole, size_t all) {
        const size_t c = (all + W - 1) / W, b = std::min((size_t)rank * c, all);
        return slice.size() == std::min(b + c, all) - b && std::equal(slice.begin(), slice.end(), whole.begin() + b);
      };
      if (side != ProjSide::Left) {
        EXPECT_ALL_RANKS(slice_ok(got.p.right, got.p.right_all, (size_t)r * n),
                         side_name(side) << " " << pattern << ": right projector slice of " << got.p.right.size());
      }
      if (side != ProjSide::Right) {
        EXPECT_ALL_RANKS(slice_ok(got.p.left, got.p.left_all, (size_t)m * r),
                         side_name(side) << " " << pattern << ": left projector slice of " << got.p.left.size());
      }
      EXPECT_ALL_RANKS(got.p.r == r, side_name(side) << " " << pattern << ": rank " << got.p.r);
      EXPECT_ALL_RANKS(fin && dp <= tolP, side_name(side) << " " << pattern << ": projector max diff " << dp << " > " << tolP);
      EXPECT_ALL_RANKS(fin && dlo <= factors * tolP + eps,
                       side_name(side) << " " << pattern << ": projected max diff/σ0 " << dlo << " > " << factors * tolP + eps);
      EXPECT_ALL_RANKS(fin && dw <= factors * tolP + eps,
                       side_name(side) << " " << pattern << ": project_back max diff (scaled) " << dw << " > " << factors * tolP + eps);
      const double wp = comm.all_reduce_value(dp, CommOp::Max), wl = comm.all_reduce_value(dlo, CommOp::Max),
                   ww = comm.all_reduce_value(dw, CommOp::Max);
      if (rank == 0)
        std::printf("  W=%d %-5s %-26s projector %.3g, projected %.3g, project_back %.3g (bound %.3g / %.3g)\n", W,
                    side_name(side), pattern.c_str(), wp, wl, ww, tolP, factors * tolP + eps);
    }
  }
}

// A zero G is zero on every rank: false everywhere; non-zero on one rank only: true everywhere.
TEST(GaloreProjectorSharded, ZeroGradientOnEveryRank) {
  Communicator& comm = test::world();
  const int W = comm.world();
  const int64_t m = 11, n = 7;
  std::vector<size_t> cuts(W + 1);
  for (int k = 0; k <= W; k++) cuts[k] = (size_t)(m * n) * k / W;
  const MatrixSplit s{m, n, cuts, comm.rank()};
  std::vector<float> g((size_t)(m * n), 0.f);
  const ProjectorOptions o{3, "randomized", 4, 1, 1};
  GaloreProjector p;
  const bool zero = galore_refresh(p, ProjSide::Full, s, g.data() + s.begin(), o, kTensor, 0, comm, cpu_backend());
  EXPECT_ALL_RANKS(!zero && !p.valid(), "a zero G gave a projector");
  g[m * n - 1] = 1.f;  // the last element only: the last rank's
  const bool one = galore_refresh(p, ProjSide::Full, s, g.data() + s.begin(), o, kTensor, 0, comm, cpu_backend());
  EXPECT_ALL_RANKS(one && p.valid(), "G non-zero on one rank gave no projector");
}

// svd = "exact" cannot run on a split G: every rank throws, naming the way out.
TEST(GaloreProjectorSharded, ExactNeedsOneProcess) {
  Communicator& comm = test::world();
  if (comm.world() < 2) GTEST_SKIP() << "W = 1: exact is the tested default";
  const int64_t m = 8, n = 6;
  std::vector<size_t> cuts(comm.world() + 1);
  for (int k = 0; k <= comm.world(); k++) cuts[k] = (size_t)(m * n) * k / comm.world();
  const MatrixSplit sp{m, n, cuts, comm.rank()};
  std::vector<float> g((size_t)(m * n), 1.f);
  GaloreProjector p;
  std::string msg;
  try {
    galore_refresh(p, ProjSide::Right, sp, g.data(), ProjectorOptions{2, "exact"}, kTensor, 0, comm, cpu_backend());
  } catch (const std::exception& e) {
    msg = e.what();
  }
  EXPECT_ALL_RANKS(msg.find("randomized") != std::string::npos, "exact at W > 1: '" << msg << "'");
}

// rank(G) = 2 < r on split rows: the shared rank-deficiency fill keeps the projector orthonormal
// and equal to one process's on the two directions G has.
TEST(GaloreProjectorSharded, RankDeficientEqualsSingleProcess) {
  Communicator& comm = test::world();
  const int W = comm.world();
  auto self = make_self_communicator();
  const int64_t m = 29, n = 13;
  const test_util::KnownSvd K =
      test_util::make_known_svd(m, n, [](int64_t j) { return j == 0 ? 2.0 : j == 1 ? 0.5 : 0.0; }, 5);
  const ProjectorOptions o{4, "randomized", 5, 2, 3};
  GaloreProjector ref;
  ASSERT_TRUE(galore_refresh(ref, ProjSide::Full, MatrixSplit::whole(m, n), K.g.data(), o, kTensor, 1, *self, cpu_backend()));
  for (const auto& [pattern, cuts] : cut_patterns(W, m, n)) {
    const MatrixSplit s{m, n, cuts, comm.rank()};
    GaloreProjector p;
    const bool ok = galore_refresh(p, ProjSide::Full, s, K.g.data() + s.begin(), o, kTensor, 1, comm, cpu_backend());
    EXPECT_ALL_RANKS(ok, pattern << ": refresh returned false");
    if (!ok) continue;
    double orth = 0;
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) {
        double d = 0;
        for (int64_t e = 0; e < n; e++) d += (double)p.right_all[i * n + e] * p.right_all[j * n + e];
        orth = std::max(orth, std::fabs(d - (i == j)));
      }
    const double ang = subspace_angle(p.right_all.data(), ref.right_all.data(), 2, n);
    EXPECT_ALL_RANKS(orth <= 1e-5 && ang <= 1e-4, pattern << ": orthonormality " << orth << ", angle " << ang);
  }
}

// GaloreAdamW with svd = "randomized" on one flat param holding three tensors (a Right target, a
// 1-D non-target, a Left target), split over the ranks as FSDP does (sharding/layout unit_pieces:
// every tensor listed on every rank, empty ranges included), against whole tensors on one process.
TEST(GaloreAdamWSharded, RandomizedEqualsSingleProcess) {
  Communicator& comm = test::world();
  const int W = comm.world(), rank = comm.rank();
  struct T {
    const char* name;
    std::vector<int64_t> shape;
    size_t offset, numel;
  };
  const std::vector<T> ts = {{"layers.0.mlp.up_proj.weight", {37, 23}, 0, 851},
                             {"layers.0.input_layernorm.weight", {23}, 851, 23},
                             {"layers.0.mlp.down_proj.weight", {19, 31}, 874, 589}};
  const size_t N = 874 + 589;
  const test_util::KnownSvd KA = test_util::make_known_svd(37, 23, [](int64_t j) { return std::pow(0.8, (double)j); }, 31);
  const test_util::KnownSvd KC = test_util::make_known_svd(19, 31, [](int64_t j) { return std::pow(0.75, (double)j); }, 32);
  auto grad = [&](int t, std::vector<float>& g) {  // the flat gradient of step t [N]
    g.resize(N);
    const float a = 1.f + 0.3f * std::sin((float)t), c = 1.f - 0.2f * std::cos((float)t);
    for (size_t e = 0; e < 851; e++) g[e] = a * KA.g[e] + 0.01f * std::cos(0.1f * (float)e + (float)t);
    for (size_t e = 0; e < 23; e++) g[851 + e] = std::sin(0.5f * (float)e + (float)t);
    for (size_t e = 0; e < 589; e++) g[874 + e] = c * KC.g[e] + 0.01f * std::sin(0.13f * (float)e - (float)t);
  };
  std::vector<float> w0(N);
  for (size_t e = 0; e < N; e++) w0[e] = 0.05f * std::cos(0.21f * (float)e);
  AdamWConfig ac;
  ac.weight_decay = 0.01f;
  GaloreConfig gc;
  gc.rank = 5, gc.update_proj_gap = 2, gc.svd = "randomized", gc.oversample = 6, gc.power_iters = 2;
  gc.targets = {"mlp"};
  const int steps = 6;
  const float lr = 1e-2f;
  // whole tensors, one process
  auto single = [&]() {
    auto self = make_self_communicator();
    GaloreAdamW opt(ac, gc, *self, 7);
    std::vector<float> w = w0, g;
    for (int t = 0; t < steps; t++) {
      grad(t, g);
      std::vector<ParamRef> refs;
      for (const T& x : ts) refs.push_back(ParamRef{x.name, x.shape, w.data() + x.offset, g.data() + x.offset, x.numel, {}});
      opt.step(refs, lr);
    }
    return w;
  };
  const std::vector<float> ref = single();
  set_gemm_output_jitter(0x5eed);
  const std::vector<float> jit = single();
  set_gemm_output_jitter(0);
  // relative L2 of the update w - w0 over [lo, hi) of the flat param, summed over ranks
  auto rel = [&](const float* got, const std::vector<float>& want, size_t lo, size_t hi, Communicator& c) {
    double d[2] = {0, 0};
    for (size_t e = lo; e < hi; e++) {
      const double x = (double)got[e - lo] - want[e], u = (double)want[e] - w0[e];
      d[0] += x * x, d[1] += u * u;
    }
    c.all_reduce(std::span<double>(d, 2));
    return std::sqrt(d[0] / d[1]);
  };
  auto self = make_self_communicator();
  const double floor = rel(jit.data(), ref, 0, N, *self);
  std::vector<std::pair<std::string, std::vector<size_t>>> patterns;
  std::vector<size_t> f(W + 1);
  for (int k = 0; k <= W; k++) f[k] = N * k / W;
  patterns.push_back({"even", f});
  if (W > 1) {
    for (int k = 1; k <= W; k++) f[k] = N * (k - 1) / (W - 1);
    f[0] = 0, patterns.push_back({"rank 0 empty", f});
    for (int k = 1; k < W; k++) f[k] = std::min(N, (size_t)(900 + 40 * k));  // rank 0 holds the first tensor and more
    f[W] = N, patterns.push_back({"uneven", f});
  }
  for (const auto& [pattern, F] : patterns) {
    const size_t lo = F[rank], hi = F[rank + 1];
    GaloreAdamW opt(ac, gc, comm, 7);
    std::vector<float> w(w0.begin() + lo, w0.begin() + hi), g, gl;
    for (int t = 0; t < steps; t++) {
      grad(t, g);
      gl.assign(g.begin() + lo, g.begin() + hi);
      ParamRef p{"flat", {(int64_t)N}, w.data(), gl.data(), hi - lo, {}};
      for (const T& x : ts) {  // as unit_pieces: cuts clamped into the tensor, offset into the shard
        ParamPiece pc{x.name, x.shape, 0, 0, 0, std::vector<size_t>(W + 1)};
        for (int k = 0; k <= W; k++) pc.cuts[k] = F[k] <= x.offset ? 0 : std::min(F[k] - x.offset, x.numel);
        pc.begin = pc.cuts[rank], pc.end = pc.cuts[rank + 1];
        pc.offset = std::min(std::max(x.offset + pc.begin, lo), hi) - lo;
        p.pieces.push_back(pc);
      }
      opt.step({p}, lr);
    }
    const double d = rel(w.data(), ref, lo, hi, comm);
    EXPECT_ALL_RANKS(floor > 0, "the one-ulp GEMM jitter changed nothing");
    EXPECT_ALL_RANKS(d <= 3 * floor, pattern << ": update differs by " << d << " (relative L2), floor " << floor);
    if (rank == 0)
      std::printf("  W=%d GaloreAdamW %-13s update rel L2 diff %.3g (floor %.3g)\n", W, pattern.c_str(), d, floor);
  }
}
