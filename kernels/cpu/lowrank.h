// lowrank.h: dense kernels of GaLore's projector (src/train/galore_projector.cpp).
// svd_f32: thin SVD of a row-major A [m,n] fp32: U [m,k], S [k] descending, Vt [k,n], k = min(m,n)
// (LAPACKE_sgesdd on a copy, OpenBLAS pinned to one thread so results do not depend on the pool).
#pragma once
#include "src/common.h"

namespace frugal {

void svd_f32(const float* A, int m, int n, float* U, float* S, float* Vt);

}  // namespace frugal
