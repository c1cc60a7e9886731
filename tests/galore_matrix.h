// galore_matrix.h: test matrices with a known SVD for GaLore's projector (tests/test_galore.cpp,
// tests/mpi_galore_projector.cpp): G = U·diag(σ)·Vᵀ from random orthonormal U [m, k], V [n, k]
// (Gaussian, modified Gram-Schmidt twice, fp64), rounded once to fp32, deterministic from a seed.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace frugal::test_util {

struct KnownSvd {
  int64_t m = 0, n = 0, k = 0;
  std::vector<double> sigma;  // [k], descending
  std::vector<float> u;       // [m, k] columns u_j (fp32, sign convention applied with v)
  std::vector<float> vt;      // [k, n] rows v_j
  std::vector<float> g;       // [m, n] = U·diag(σ)·Vᵀ rounded to fp32
};

// Orthonormal columns of a [rows, k] fp64 Gaussian (seeded).
inline std::vector<double> random_orthonormal(int64_t rows, int64_t k, std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  std::vector<double> a((size_t)(rows * k));
  for (double& x : a) x = nd(rng);
  for (int pass = 0; pass < 2; pass++)
    for (int64_t j = 0; j < k; j++) {
      for (int64_t i = 0; i < j; i++) {
        double d = 0;
        for (int64_t e = 0; e < rows; e++) d += a[e * k + i] * a[e * k + j];
        for (int64_t e = 0; e < rows; e++) a[e * k + j] -= d * a[e * k + i];
      }
      double nrm = 0;
      for (int64_t e = 0; e < rows; e++) nrm += a[e * k + j] * a[e * k + j];
      nrm = std::sqrt(nrm);
      for (int64_t e = 0; e < rows; e++) a[e * k + j] /= nrm;
    }
  return a;
}

// The galore_projector.h sign convention on (u_j, v_j): the largest-|.| entry of v_j (lowest
// index on a tie) is positive.
inline bool sign_ok(const float* v, int64_t n) {
  int64_t j = 0;
  for (int64_t i = 1; i < n; i++)
    if (std::fabs(v[i]) > std::fabs(v[j])) j = i;
  return v[j] > 0;
}

inline KnownSvd make_known_svd(int64_t m, int64_t n, const std::function<double(int64_t)>& sigma, uint64_t seed) {
  KnownSvd s;
  s.m = m, s.n = n, s.k = std::min(m, n);
  std::mt19937_64 rng(seed);
  std::vector<double> U = random_orthonormal(m, s.k, rng), V = random_orthonormal(n, s.k, rng);
  s.sigma.resize(s.k);
  for (int64_t j = 0; j < s.k; j++) s.sigma[j] = sigma(j);
  for (int64_t j = 0; j < s.k; j++) {  // sign convention on v_j, u_j flipped with it
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
      if (std::fabs(V[i * s.k + j]) > std::fabs(V[b * s.k + j])) b = i;
    if (V[b * s.k + j] < 0) {
      for (int64_t i = 0; i < n; i++) V[i * s.k + j] = -V[i * s.k + j];
      for (int64_t i = 0; i < m; i++) U[i * s.k + j] = -U[i * s.k + j];
    }
  }
  s.u.resize((size_t)(m * s.k)), s.vt.resize((size_t)(s.k * n)), s.g.resize((size_t)(m * n));
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < s.k; j++) s.u[i * s.k + j] = (float)U[i * s.k + j];
  for (int64_t j = 0; j < s.k; j++)
    for (int64_t i = 0; i < n; i++) s.vt[j * n + i] = (float)V[i * s.k + j];
  for (int64_t i = 0; i < m; i++)
    for (int64_t c = 0; c < n; c++) {
      double acc = 0;
      for (int64_t j = 0; j < s.k; j++) acc += U[i * s.k + j] * s.sigma[j] * V[c * s.k + j];
      s.g[i * n + c] = (float)acc;
    }
  return s;
}

// Rows of U[:, :r]ᵀ as [r, m] (to compare a Left projector's columns with subspace_angle).
inline std::vector<float> columns_as_rows(const float* u, int64_t rows, int64_t ld, int r) {
  std::vector<float> t((size_t)(r * rows));
  for (int64_t i = 0; i < rows; i++)
    for (int j = 0; j < r; j++) t[j * rows + i] = u[i * ld + j];
  return t;
}

}  // namespace frugal::test_util
