// lowrank.cpp: svd_f32, gram_f64, tri_solve_lt_f64, eigh_f64 (kernels/cpu/lowrank.h) on LAPACKE + OpenBLAS.
#include "kernels/cpu/lowrank.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <vector>

extern "C" void openblas_set_num_threads(int);

namespace frugal {

void svd_f32(const float* A, int m, int n, float* U, float* S, float* Vt) {
  if (m <= 0 || n <= 0) return;
  const int k = std::min(m, n);
  // One BLAS thread: a threaded OpenBLAS reduces in a pool-size-dependent order (determinism).
  openblas_set_num_threads(1);
  std::vector<float> a(A, A + (size_t)m * n);  // sgesdd destroys its input
  const lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a.data(), n, S, U, k, Vt, n);
  if (info != 0) fail("svd_f32: LAPACKE_sgesdd failed (info ", (int)info, ") on [", m, ", ", n, "]");
}

// Rows per fp64 chunk: [kChunk, l] doubles stay in L2 for the l of GaLore (<= ~1k).
constexpr int kChunk = 256;

void gram_f64(const float* Y, int rows, int l, double* G) {
  if (l <= 0) return;
  std::fill(G, G + (size_t)l * l, 0.0);
  openblas_set_num_threads(1);
  std::vector<double> yd((size_t)kChunk * l);
  for (int r0 = 0; r0 < rows; r0 += kChunk) {
    const int nr = std::min(kChunk, rows - r0);
    for (size_t e = 0; e < (size_t)nr * l; e++) yd[e] = Y[(size_t)r0 * l + e];
    // lower triangle of G += ydᵀ·yd
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, l, nr, 1.0, yd.data(), l, 1.0, G, l);
  }
  for (int a = 0; a < l; a++)
    for (int b = a + 1; b < l; b++) G[(size_t)a * l + b] = G[(size_t)b * l + a];
}

void tri_solve_lt_f64(float* Y, int rows, int l, const double* L) {
  if (l <= 0) return;
  openblas_set_num_threads(1);
  std::vector<double> yd((size_t)kChunk * l);
  for (int r0 = 0; r0 < rows; r0 += kChunk) {
    const int nr = std::min(kChunk, rows - r0);
    float* y = Y + (size_t)r0 * l;
    for (size_t e = 0; e < (size_t)nr * l; e++) yd[e] = y[e];
    // yd ← yd·L⁻ᵀ  (X·Lᵀ = yd)
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, nr, l, 1.0, L, l, yd.data(), l);
    for (size_t e = 0; e < (size_t)nr * l; e++) y[e] = (float)yd[e];
  }
}

void eigh_f64(double* A, int l, double* w) {
  if (l <= 0) return;
  openblas_set_num_threads(1);
  const lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'L', l, A, l, w);
  if (info != 0) fail("eigh_f64: LAPACKE_dsyevd failed (info ", (int)info, ") on [", l, ", ", l, "]");
}

}  // namespace frugal
