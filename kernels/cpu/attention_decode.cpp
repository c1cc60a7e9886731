// attention_decode.cpp: single-row attention over a KV cache (see attention_decode.h).
// Sections: fast path (OpenMP over heads when the cache is long enough), reference.
#include "kernels/cpu/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace frugal {

void attention_decode(float* out, const float* q, const float* K, const float* V, int S, int H,
                      int Hkv, int D, float scale, float* scores, int ld_scores) {
  const int group = H / Hkv;
  // Threads only when there is real work: a parallel region costs a barrier, which on a busy
  // (oversubscribed) machine can cost more than a short cache scan.
  const bool par = (int64_t)S * H * D >= (1 << 18);
#pragma omp parallel for schedule(static) if (par)
  for (int h = 0; h < H; h++) {
    const float* qh = q + (size_t)h * D;
    const int kh = h / group;
    float* sc = scores + (size_t)h * ld_scores;
    float mx = -INFINITY;
    for (int j = 0; j < S; j++) {
      const float* kj = K + ((size_t)j * Hkv + kh) * D;
      float d = 0.f;
      for (int i = 0; i < D; i++) d += qh[i] * kj[i];
      sc[j] = d * scale;
      mx = std::max(mx, sc[j]);
    }
    float sum = 0.f;
    for (int j = 0; j < S; j++) {
      sc[j] = std::exp(sc[j] - mx);
      sum += sc[j];
    }
    float* oh = out + (size_t)h * D;
    std::fill(oh, oh + D, 0.f);
    for (int j = 0; j < S; j++) {
      const float* vj = V + ((size_t)j * Hkv + kh) * D;
      const float p = sc[j] / sum;
      for (int i = 0; i < D; i++) oh[i] += p * vj[i];
    }
  }
}

void attention_decode_ref(float* out, const float* q, const float* K, const float* V, int S, int H,
                          int Hkv, int D, float scale) {
  const int group = H / Hkv;
  std::vector<double> p((size_t)S);
  for (int h = 0; h < H; h++) {
    const int kh = h / group;
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < S; j++) {
      double d = 0;
      for (int i = 0; i < D; i++) d += (double)q[(size_t)h * D + i] * K[((size_t)j * Hkv + kh) * D + i];
      p[j] = d * scale;
      mx = std::max(mx, p[j]);
    }
    for (int j = 0; j < S; j++) sum += p[j] = std::exp(p[j] - mx);
    for (int i = 0; i < D; i++) {
      double o = 0;
      for (int j = 0; j < S; j++) o += p[j] / sum * V[((size_t)j * Hkv + kh) * D + i];
      out[(size_t)h * D + i] = (float)o;
    }
  }
}

}  // namespace frugal
