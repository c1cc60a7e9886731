// lora.cpp: the LoRA adapter GEMMs (see lora.h for the math). Sections: chunking, fast path
// (fp32 oneDNN GEMMs over row chunks), naive reference.
//
// The site input x and output gradient dy arrive in bf16; the fp32 GEMMs read them converted (and
// masked) chunk by chunk, kRowsBudget/max(in,out) rows at a time, so the scratch stays a few MB
// (never [N, in] fp32).
#include "kernels/cpu/lora.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/gemm_f32.h"

namespace frugal {

// ---- chunking ----------------------------------------------------------------------------------

namespace {

constexpr int64_t kRowsBudget = 1 << 20;  // fp32 elements per chunk buffer (4 MB)

float* scratch(int which, size_t n) {  // per-thread reusable buffers (bounded by one chunk)
  thread_local avector<float> buf[3];
  grow_to(buf[which], n);
  return buf[which].data();
}

// xd[rows,in] = dropout(x[n0:n0+rows]) in fp32 (the mask of element e = (row0 + n)·in + i).
void load_input(const LoraDims& d, const bf16* x, int n0, int rows, float* xd) {
  const int64_t in = d.in;
  bf16_to_float(x + (size_t)n0 * in, xd, (size_t)rows * in);
  if (!d.dropout_active) return;
  const float inv_keep = 1.0f / (1.0f - d.dropout);
  const uint64_t e0 = (d.mask_row0 + (uint64_t)n0) * in;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (int64_t)rows * in; i++)
    xd[i] = fm::lora_keep(d.mask_key, e0 + i, d.dropout) ? xd[i] * inv_keep : 0.f;
}

}  // namespace

int64_t lora_chunk_budget() { return kRowsBudget; }

int lora_chunk_rows(int64_t in, int64_t out, int N) {
  int64_t rows = kRowsBudget / std::max(in, out);
  return (int)std::clamp<int64_t>(rows, 1, std::max(N, 1));
}

// ---- fast path -----------------------------------------------------------------------------------

void lora_forward(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u,
                  float* y, int N) {
  const int r = d.r, in = (int)d.in, out = (int)d.out;
  const int rows = lora_chunk_rows(d.in, d.out, N);
  float* xd = scratch(0, (size_t)rows * in);
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    load_input(d, x, n0, nc, xd);
    // u[n0:n0+nc, r] = xd[nc,in] · Aᵀ
    gemm_f32(false, true, nc, r, in, 1.f, xd, in, A, in, 0.f, u + (size_t)n0 * r, r);
  }
  // y[N,out] += s · u[N,r] · Bᵀ
  gemm_f32(false, true, N, out, r, d.scale, u, r, B, r, 1.f, y, out);
}

void lora_backward(const LoraDims& d, const float* A, const float* B, const float* u_all,
                   const bf16* dy, const bf16* x, float* dA, float* dB, float* dx, int N) {
  const int r = d.r, in = (int)d.in, out = (int)d.out;
  const int rows = lora_chunk_rows(d.in, d.out, N);
  float* xd = scratch(0, (size_t)rows * in);                      // [rows,in] dropout(x), later du·A
  float* dyf = scratch(1, (size_t)rows * out);                    // [rows,out] dy in fp32
  float* du = scratch(2, (size_t)rows * r);                       // [rows,r]
  const float inv_keep = d.dropout_active ? 1.0f / (1.0f - d.dropout) : 1.f;
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    const float* u = u_all + (size_t)n0 * r;
    bf16_to_float(dy + (size_t)n0 * out, dyf, (size_t)nc * out);
    // dB[out,r] += s · dyᵀ[out,nc] · u[nc,r]
    gemm_f32(true, false, out, r, nc, d.scale, dyf, out, u, r, 1.f, dB, r);
    // du[nc,r] = s · dy[nc,out] · B[out,r]
    gemm_f32(false, false, nc, r, out, d.scale, dyf, out, B, r, 0.f, du, r);
    // dA[r,in] += duᵀ[r,nc] · dropout(x)[nc,in]
    load_input(d, x, n0, nc, xd);
    gemm_f32(true, false, r, in, nc, 1.f, du, r, xd, in, 1.f, dA, in);
    float* dxc = dx + (size_t)n0 * in;
    if (!d.dropout_active) {
      // dx[nc,in] += du · A[r,in]
      gemm_f32(false, false, nc, in, r, 1.f, du, r, A, in, 1.f, dxc, in);
    } else {
      // dx += mask ⊙ (du · A) / (1-p)   (xd is free again: reuse it for du·A)
      gemm_f32(false, false, nc, in, r, 1.f, du, r, A, in, 0.f, xd, in);
      const uint64_t e0 = (d.mask_row0 + (uint64_t)n0) * in;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < (int64_t)nc * in; i++)
        if (fm::lora_keep(d.mask_key, e0 + i, d.dropout)) dxc[i] += xd[i] * inv_keep;
    }
  }
}

// ---- naive reference ---------------------------------------------------------------------------

namespace {
// xd[n,i] = dropout(x)[n,i] in fp64
std::vector<double> masked_input_ref(const LoraDims& d, const bf16* x, int N) {
  const double inv_keep = d.dropout_active ? 1.0 / (1.0 - (double)d.dropout) : 1.0;
  std::vector<double> xd((size_t)N * d.in);
  for (int n = 0; n < N; n++)
    for (int64_t i = 0; i < d.in; i++) {
      const uint64_t e = (d.mask_row0 + (uint64_t)n) * d.in + i;
      const bool keep = !d.dropout_active || fm::lora_keep(d.mask_key, e, d.dropout);
      xd[(size_t)n * d.in + i] = keep ? (double)x[(size_t)n * d.in + i].to_float() * inv_keep : 0.0;
    }
  return xd;
}
}  // namespace

void lora_forward_ref(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u,
                      float* y, int N) {
  const int r = d.r;
  const int64_t in = d.in, out = d.out;
  const std::vector<double> xd = masked_input_ref(d, x, N);
  for (int n = 0; n < N; n++) {
    for (int k = 0; k < r; k++) {  // u[n,k] = Σ_i xd[n,i]·A[k,i]
      double s = 0;
      for (int64_t i = 0; i < in; i++) s += xd[(size_t)n * in + i] * (double)A[(size_t)k * in + i];
      u[(size_t)n * r + k] = (float)s;
    }
    for (int64_t o = 0; o < out; o++) {  // y[n,o] += s·Σ_k u[n,k]·B[o,k]
      double s = 0;
      for (int k = 0; k < r; k++) s += (double)u[(size_t)n * r + k] * (double)B[(size_t)o * r + k];
      y[(size_t)n * out + o] += (float)((double)d.scale * s);
    }
  }
}

void lora_backward_ref(const LoraDims& d, const float* A, const float* B, const float* u,
                       const bf16* dy, const bf16* x, float* dA, float* dB, float* dx, int N) {
  const int r = d.r;
  const int64_t in = d.in, out = d.out;
  const double inv_keep = d.dropout_active ? 1.0 / (1.0 - (double)d.dropout) : 1.0;
  const std::vector<double> xd = masked_input_ref(d, x, N);
  std::vector<double> du((size_t)N * r, 0.0);
  for (int n = 0; n < N; n++)  // du[n,k] = s·Σ_o dy[n,o]·B[o,k]
    for (int k = 0; k < r; k++) {
      double s = 0;
      for (int64_t o = 0; o < out; o++) s += (double)dy[(size_t)n * out + o].to_float() * (double)B[(size_t)o * r + k];
      du[(size_t)n * r + k] = (double)d.scale * s;
    }
  for (int64_t o = 0; o < out; o++)  // dB[o,k] += s·Σ_n dy[n,o]·u[n,k]
    for (int k = 0; k < r; k++) {
      double s = 0;
      for (int n = 0; n < N; n++) s += (double)dy[(size_t)n * out + o].to_float() * (double)u[(size_t)n * r + k];
      dB[(size_t)o * r + k] += (float)((double)d.scale * s);
    }
  for (int k = 0; k < r; k++)  // dA[k,i] += Σ_n du[n,k]·xd[n,i]
    for (int64_t i = 0; i < in; i++) {
      double s = 0;
      for (int n = 0; n < N; n++) s += du[(size_t)n * r + k] * xd[(size_t)n * in + i];
      dA[(size_t)k * in + i] += (float)s;
    }
  for (int n = 0; n < N; n++)  // dx[n,i] += mask·Σ_k du[n,k]·A[k,i] / (1-p)
    for (int64_t i = 0; i < in; i++) {
      const uint64_t e = (d.mask_row0 + (uint64_t)n) * in + i;
      if (d.dropout_active && !fm::lora_keep(d.mask_key, e, d.dropout)) continue;
      double s = 0;
      for (int k = 0; k < r; k++) s += du[(size_t)n * r + k] * (double)A[(size_t)k * in + i];
      dx[(size_t)n * in + i] += (float)(s * inv_keep);
    }
}

}  // namespace frugal
