// lowrank.h: dense kernels of GaLore's projector (src/train/galore_projector.cpp, galore_randomized.cpp).
// svd_f32: thin SVD of a row-major A [m,n] fp32: U [m,k], S [k] descending, Vt [k,n], k = min(m,n)
// (LAPACKE_sgesdd on a copy, OpenBLAS pinned to one thread so results do not depend on the pool).
#pragma once
#include "src/common.h"

namespace frugal {

void svd_f32(const float* A, int m, int n, float* U, float* S, float* Vt);

// G [l, l] fp64 = Yᵀ·Y for Y [rows, l] fp32 row-major (the full symmetric matrix; G = 0 for rows = 0).
// The Gram of CholeskyQR: fp64 because Cholesky squares Y's condition number. Rows are widened
// to fp64 in chunks and summed by one-thread OpenBLAS dsyrk (a fixed order: deterministic).
void gram_f64(const float* Y, int rows, int l, double* G);

// Y ← Y·L⁻ᵀ in place, Y [rows, l] fp32, L [l, l] fp64 lower triangular (CholeskyQR's Q = Y·L⁻ᵀ
// for YᵀY = L·Lᵀ), solved in fp64 (OpenBLAS dtrsm, one thread) and rounded back to fp32.
void tri_solve_lt_f64(float* Y, int rows, int l, const double* L);

// Eigen-decomposition of a symmetric A [l, l] fp64 (LAPACKE_dsyevd, one thread): w [l] ascending,
// A overwritten by the eigenvectors as columns (A[a·l + k] = component a of eigenvector k).
void eigh_f64(double* A, int l, double* w);

}  // namespace frugal
