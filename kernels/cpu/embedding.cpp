// embedding.cpp: token embedding forward (gather bf16 rows -> fp32) and backward (scatter-add).
// Sections: checks, reference, fast path.
#include "kernels/cpu/embedding.h"

#include <omp.h>

#include <algorithm>

namespace frugal {

static void check_ids(const int32_t* ids, int N, int V) {
  for (int n = 0; n < N; ++n)
    if (ids[n] < 0 || ids[n] >= V)
      fail("embedding: token id ", ids[n], " at position ", n, " is outside the vocabulary [0, ", V, ")");
}

// ---- reference ------------------------------------------------------------------------------
void embedding_forward_ref(float* out, const int32_t* ids, const bf16* table, int N, int C, int V) {
  check_ids(ids, N, V);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) out[(size_t)n * C + c] = table[(size_t)ids[n] * C + c].to_float();
}

void embedding_backward_ref(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V) {
  check_ids(ids, N, V);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) dtable[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
}

// ---- fast path ------------------------------------------------------------------------------
// out: [N, C] fp32; each row is an independent bf16 -> fp32 widening copy.
void embedding_forward(float* out, const int32_t* ids, const bf16* table, int N, int C, int V) {
  check_ids(ids, N, V);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) bf16_to_float(table + (size_t)ids[n] * C, out + (size_t)n * C, (size_t)C);
}

// dtable: [V, C] += scatter of dout rows. Threads own disjoint column ranges (multiples of 16 floats,
// one cache line), and walk all N rows in order, so a repeated id is accumulated by one thread only
// and the summation order is deterministic.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V) {
  check_ids(ids, N, V);
  const int chunk = 16;
  const int nchunks = (C + chunk - 1) / chunk;
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int per = (nchunks + nt - 1) / nt;
    int c0 = std::min(C, t * per * chunk), c1 = std::min(C, (t + 1) * per * chunk);
    if (c0 < c1) {
      for (int n = 0; n < N; ++n) {
        float* dst = dtable + (size_t)ids[n] * C;
        const float* src = dout + (size_t)n * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  }
}

}  // namespace frugal
