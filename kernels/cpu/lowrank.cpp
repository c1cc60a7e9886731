// lowrank.cpp: svd_f32 (kernels/cpu/lowrank.h) on LAPACKE + OpenBLAS.
#include "kernels/cpu/lowrank.h"

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

}  // namespace frugal
