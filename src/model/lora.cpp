// lora.cpp: LoRA adapters (see lora.h for the math, the precision choice and the dropout stream).
// Sections: config, init and mask keys, forward/backward (fp32 GEMMs over row chunks), reference.
//
// The site input x and output gradient dy arrive in bf16; the fp32 GEMMs read them converted (and
// masked) chunk by chunk, kRowsBudget/max(in,out) rows at a time, so the scratch stays a few MB
// (never [N, in] fp32). Chunking depends only on the shapes, never on the thread count.
#include "src/model/lora.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/gemm_f32.h"

namespace frugal {

// ---- config --------------------------------------------------------------------------------

float LoraConfig::scale() const {
  return rslora ? alpha / std::sqrt((float)rank) : alpha / (float)rank;
}

std::vector<std::string> LoraConfig::expand_targets(const std::vector<std::string>& names) {
  const auto& all = lora_site_names();
  std::vector<bool> on(all.size(), false);
  std::string unknown;
  for (const auto& n : names) {
    if (n == "all-linear") {
      std::fill(on.begin(), on.end(), true);
      continue;
    }
    auto it = std::find(all.begin(), all.end(), n);
    if (it == all.end()) {
      unknown += (unknown.empty() ? "'" : ", '") + n + "'";
      continue;
    }
    on[it - all.begin()] = true;
  }
  if (!unknown.empty())
    fail("lora target_modules: unknown module ", unknown,
         " (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)");
  std::vector<std::string> r;
  for (size_t i = 0; i < all.size(); i++)
    if (on[i]) r.push_back(all[i]);
  return r;
}

void LoraConfig::validate() const {
  if (rank <= 0) fail("lora.rank must be > 0, got ", rank);
  if (!(std::isfinite(alpha) && alpha > 0.f)) fail("lora.alpha must be finite and > 0, got ", alpha);
  if (!(dropout >= 0.f && dropout < 1.f)) fail("lora.dropout must be in [0, 1), got ", dropout);
  if (expand_targets(target_modules).empty()) fail("lora.target_modules is empty");
}

std::string peft_lora_name(const std::string& hf, char which) {
  const std::string suf = ".weight";
  FRUGAL_CHECK(hf.size() > suf.size() && hf.compare(hf.size() - suf.size(), suf.size(), suf) == 0,
               "not a weight name: ", hf);
  FRUGAL_CHECK(which == 'A' || which == 'B', "lora tensor must be A or B, got ", which);
  return "base_model.model." + hf.substr(0, hf.size() - suf.size()) + ".lora_" + which + ".weight";
}

LoraAdapter::LoraAdapter(int r_, int64_t in_, int64_t out_, float scale_, float dropout_)
    : r(r_), in(in_), out(out_), scale(scale_), dropout(dropout_) {
  FRUGAL_CHECK(r > 0 && in > 0 && out > 0, "LoRA adapter shape r=", r, " in=", in, " out=", out);
  A.assign((size_t)r * in, 0.f);
  B.assign((size_t)out * r, 0.f);
  dA.assign(A.size(), 0.f);
  dB.assign(B.size(), 0.f);
}

void LoraAdapter::sync_compute_copies() {
  // The CPU path computes in fp32 from A and B themselves (lora.h): nothing to refresh, but a
  // size mismatch would mean someone resized the masters.
  FRUGAL_CHECK(A.size() == (size_t)r * in && B.size() == (size_t)out * r, "LoRA adapter (layer ",
               layer, ", site ", site, ") master weights have the wrong size");
  if (!A_bf.empty()) float_to_bf16(A.data(), A_bf.data(), A.size());
  if (!B_bf.empty()) float_to_bf16(B.data(), B_bf.data(), B.size());
}

// ---- init and mask keys ----------------------------------------------------------------------

uint64_t lora_mask_key(uint64_t seed, uint64_t step, uint64_t micro, int layer, int site) {
  uint64_t k = lora_mix64(seed ^ 0x4C6F5241446F7574ull);  // "LoRADout"
  k = lora_mix64(k ^ step);
  k = lora_mix64(k ^ micro);
  return lora_mix64(k ^ ((uint64_t)(uint32_t)layer << 8 | (uint64_t)(uint32_t)site));
}

void lora_init(LoraAdapter& a, uint64_t seed) {
  uint64_t k = lora_mix64(seed ^ 0x4C6F5241496E6974ull);  // "LoRAInit"
  k = lora_mix64(k ^ ((uint64_t)(uint32_t)a.layer << 8 | (uint64_t)(uint32_t)a.site));
  const float bound = 1.0f / std::sqrt((float)a.in);  // kaiming_uniform(a=√5): gain·√(3/in) = 1/√in
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (int64_t)a.A.size(); i++) a.A[i] = (2.f * counter_uniform(k, (uint64_t)i) - 1.f) * bound;
  std::fill(a.B.begin(), a.B.end(), 0.f);
}

// ---- forward / backward ------------------------------------------------------------------------

namespace {

constexpr int64_t kRowsBudget = 1 << 20;  // fp32 elements per chunk buffer (4 MB)

int chunk_rows(const LoraAdapter& a, int N) {
  int64_t rows = kRowsBudget / std::max(a.in, a.out);
  return (int)std::clamp<int64_t>(rows, 1, std::max(N, 1));
}

float* scratch(int which, size_t n) {  // per-thread reusable buffers (bounded by one chunk)
  thread_local avector<float> buf[3];
  if (buf[which].size() < n) {
    avector<float>().swap(buf[which]);
    buf[which].resize(n);
  }
  return buf[which].data();
}

// xd[rows,in] = dropout(x[n0:n0+rows]) in fp32 (the mask of element e = n·in + i).
void load_input(const LoraAdapter& a, const bf16* x, int n0, int rows, float* xd) {
  const int64_t in = a.in;
  bf16_to_float(x + (size_t)n0 * in, xd, (size_t)rows * in);
  if (!a.dropout_active()) return;
  const float inv_keep = 1.0f / (1.0f - a.dropout);
  const uint64_t e0 = (a.mask_row0 + (uint64_t)n0) * in;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (int64_t)rows * in; i++)
    xd[i] = lora_keep(a.mask_key, e0 + i, a.dropout) ? xd[i] * inv_keep : 0.f;
}

}  // namespace

void lora_forward(LoraAdapter& a, const bf16* x, float* y, int N) {
  const int r = a.r, in = (int)a.in, out = (int)a.out;
  FRUGAL_CHECK(N >= 0 && a.A.size() == (size_t)r * in && a.B.size() == (size_t)out * r,
               "lora_forward: adapter (layer ", a.layer, ", site ", a.site, ") is malformed");
  if (a.u.size() != (size_t)N * r) {
    avector<float>().swap(a.u);
    a.u.resize((size_t)N * r);
  }
  a.saved_rows = N;
  const int rows = chunk_rows(a, N);
  float* xd = scratch(0, (size_t)rows * in);
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    load_input(a, x, n0, nc, xd);
    // u[n0:n0+nc, r] = xd[nc,in] · Aᵀ
    gemm_f32(false, true, nc, r, in, 1.f, xd, in, a.A.data(), in, 0.f, a.u.data() + (size_t)n0 * r, r);
  }
  // y[N,out] += s · u[N,r] · Bᵀ
  gemm_f32(false, true, N, out, r, a.scale, a.u.data(), r, a.B.data(), r, 1.f, y, out);
}

void lora_backward(LoraAdapter& a, const bf16* dy, const bf16* x, float* dx, int N) {
  const int r = a.r, in = (int)a.in, out = (int)a.out;
  FRUGAL_CHECK(a.saved_rows == N && a.u.size() == (size_t)N * r, "lora_backward: adapter (layer ",
               a.layer, ", site ", a.site, ") has no saved forward for N=", N);
  FRUGAL_CHECK(x != nullptr, "lora_backward: the site input is needed (layer ", a.layer, ", site ", a.site, ")");
  const int rows = chunk_rows(a, N);
  float* xd = scratch(0, (size_t)rows * in);                      // [rows,in] dropout(x), later du·A
  float* dyf = scratch(1, (size_t)rows * out);                    // [rows,out] dy in fp32
  float* du = scratch(2, (size_t)rows * r);                       // [rows,r]
  const float inv_keep = a.dropout_active() ? 1.0f / (1.0f - a.dropout) : 1.f;
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    const float* u = a.u.data() + (size_t)n0 * r;
    bf16_to_float(dy + (size_t)n0 * out, dyf, (size_t)nc * out);
    // dB[out,r] += s · dyᵀ[out,nc] · u[nc,r]
    gemm_f32(true, false, out, r, nc, a.scale, dyf, out, u, r, 1.f, a.dB.data(), r);
    // du[nc,r] = s · dy[nc,out] · B[out,r]
    gemm_f32(false, false, nc, r, out, a.scale, dyf, out, a.B.data(), r, 0.f, du, r);
    // dA[r,in] += duᵀ[r,nc] · dropout(x)[nc,in]
    load_input(a, x, n0, nc, xd);
    gemm_f32(true, false, r, in, nc, 1.f, du, r, xd, in, 1.f, a.dA.data(), in);
    float* dxc = dx + (size_t)n0 * in;
    if (!a.dropout_active()) {
      // dx[nc,in] += du · A[r,in]
      gemm_f32(false, false, nc, in, r, 1.f, du, r, a.A.data(), in, 1.f, dxc, in);
    } else {
      // dx += mask ⊙ (du · A) / (1-p)   (xd is free again: reuse it for du·A)
      gemm_f32(false, false, nc, in, r, 1.f, du, r, a.A.data(), in, 0.f, xd, in);
      const uint64_t e0 = (a.mask_row0 + (uint64_t)n0) * in;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < (int64_t)nc * in; i++)
        if (lora_keep(a.mask_key, e0 + i, a.dropout)) dxc[i] += xd[i] * inv_keep;
    }
  }
}

// ---- reference ---------------------------------------------------------------------------------

void lora_linear_ref(const LoraAdapter& a, const double* W, const double* x, double* y, int N) {
  const int r = a.r;
  const int64_t in = a.in, out = a.out;
  const double inv_keep = a.dropout_active() ? 1.0 / (1.0 - (double)a.dropout) : 1.0;
  std::vector<double> xd((size_t)in), u((size_t)r);
  for (int n = 0; n < N; n++) {
    for (int64_t i = 0; i < in; i++) {
      bool keep = !a.dropout_active() || lora_keep(a.mask_key, (a.mask_row0 + (uint64_t)n) * in + i, a.dropout);
      xd[i] = keep ? x[(size_t)n * in + i] * inv_keep : 0.0;
    }
    for (int k = 0; k < r; k++) {
      double s = 0;
      for (int64_t i = 0; i < in; i++) s += xd[i] * (double)a.A[(size_t)k * in + i];
      u[k] = s;
    }
    for (int64_t o = 0; o < out; o++) {
      double s = 0, l = 0;
      for (int64_t i = 0; i < in; i++) s += x[(size_t)n * in + i] * W[(size_t)o * in + i];
      for (int k = 0; k < r; k++) l += u[k] * (double)a.B[(size_t)o * r + k];
      y[(size_t)n * out + o] = s + (double)a.scale * l;
    }
  }
}

}  // namespace frugal
