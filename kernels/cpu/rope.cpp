// rope.cpp: rotary embedding tables and the in-place rotation (HF rotate_half pairing i <-> i+D/2).
// Forward  y1 = x1*c - x2*s, y2 = x2*c + x1*s;  backward (transpose) dx1 = dy1*c + dy2*s,
// dx2 = dy2*c - dy1*s, with c, s = cos/sin(pos * inv_freq[i]) * attention_factor.
// Sections: table, reference, fast path.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

namespace frugal {

// ---- table ----------------------------------------------------------------------------------
RopeTable rope_table(const fm::RopeParams& p, int max_pos, int seq_len) {
  if (p.head_dim <= 0 || p.head_dim % 2 != 0) fail("rope_table: head_dim must be even and > 0, got ", p.head_dim);
  if (max_pos <= 0) fail("rope_table: max_pos must be > 0, got ", max_pos);
  if ((int)p.type < fm::ROPE_DEFAULT || (int)p.type > fm::ROPE_LLAMA3) fail("rope_table: unknown rope type ", (int)p.type);
  if (p.type != fm::ROPE_DEFAULT && !(p.factor > 0.f)) fail("rope_table: rope_scaling factor must be > 0, got ", p.factor);
  if (p.type == fm::ROPE_DYNAMIC && p.head_dim <= 2) fail("rope_table: dynamic rope needs head_dim > 2");
  if (p.type == fm::ROPE_LLAMA3 && !(p.high_freq_factor > p.low_freq_factor))
    fail("rope_table: llama3 high_freq_factor (", p.high_freq_factor, ") must exceed low_freq_factor (",
         p.low_freq_factor, ")");
  const int half = p.head_dim / 2;
  std::vector<float> inv(half);
  fm::rope_inv_freq(p, seq_len, inv.data());
  const float af = fm::rope_attention_factor(p);
  RopeTable t;
  t.head_dim = p.head_dim;
  t.max_pos = max_pos;
  t.cos.resize((size_t)max_pos * half);
  t.sin.resize((size_t)max_pos * half);
#pragma omp parallel for schedule(static)
  for (int pos = 0; pos < max_pos; ++pos)
    for (int i = 0; i < half; ++i) {
      float f = (float)pos * inv[i];  // HF: position_ids.float() * inv_freq, fp32
      t.cos[(size_t)pos * half + i] = std::cos(f) * af;
      t.sin[(size_t)pos * half + i] = std::sin(f) * af;
    }
  return t;
}

static void check_args(const char* who, const int32_t* pos, const RopeTable& t, int N, int D) {
  if (D != t.head_dim) fail(who, ": head dim ", D, " does not match the rope table's head_dim ", t.head_dim);
  for (int n = 0; n < N; ++n)
    if (pos[n] < 0 || pos[n] >= t.max_pos)
      fail(who, ": position ", pos[n], " at row ", n, " is outside the rope table [0, ", t.max_pos, ")");
}

// ---- reference ------------------------------------------------------------------------------
// out = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1)
void rope_forward_ref(float* out, const float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  check_args("rope_forward_ref", pos, t, N, D);
  const int half = D / 2;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h) {
      const float* xr = x + ((size_t)n * H + h) * D;
      float* yr = out + ((size_t)n * H + h) * D;
      for (int d = 0; d < D; ++d) {
        int i = d % half;
        float c = t.cos[(size_t)pos[n] * half + i], s = t.sin[(size_t)pos[n] * half + i];
        float rot = d < half ? -xr[d + half] : xr[d - half];
        yr[d] = xr[d] * c + rot * s;
      }
    }
}

// The transposed rotation: dx = Rᵀ dy, i.e. dx = dy * cos_full - rotate_half(dy) * sin_full.
void rope_backward_ref(float* dx, const float* dy, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  check_args("rope_backward_ref", pos, t, N, D);
  const int half = D / 2;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h) {
      const float* yr = dy + ((size_t)n * H + h) * D;
      float* xr = dx + ((size_t)n * H + h) * D;
      for (int d = 0; d < D; ++d) {
        int i = d % half;
        float c = t.cos[(size_t)pos[n] * half + i], s = t.sin[(size_t)pos[n] * half + i];
        float rot = d < half ? -yr[d + half] : yr[d - half];
        xr[d] = yr[d] * c - rot * s;
      }
    }
}

// ---- fast path ------------------------------------------------------------------------------
// x: [N, H, D]; the loop over i is contiguous in x and in the table row, so it vectorizes.
void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  check_args("rope_forward", pos, t, N, D);
  const int half = D / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h) {
      float* x1 = x + ((size_t)n * H + h) * D;
      float* x2 = x1 + half;
      const float* c = t.cos.data() + (size_t)pos[n] * half;
      const float* s = t.sin.data() + (size_t)pos[n] * half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
}

void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D) {
  check_args("rope_backward", pos, t, N, D);
  const int half = D / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h) {
      float* g1 = dx + ((size_t)n * H + h) * D;
      float* g2 = g1 + half;
      const float* c = t.cos.data() + (size_t)pos[n] * half;
      const float* s = t.sin.data() + (size_t)pos[n] * half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        float a = g1[i], b = g2[i];
        g1[i] = a * c[i] + b * s[i];
        g2[i] = b * c[i] - a * s[i];
      }
    }
}

}  // namespace frugal
