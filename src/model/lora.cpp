// lora.cpp: LoRA adapters (see lora.h for the math, the precision choice and the dropout stream).
// Sections: config, init, forward/backward (through the backend), reference.
#include "src/model/lora.h"

#include <algorithm>
#include <cmath>


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
}

// ---- init ----------------------------------------------------------------------

void lora_init(LoraAdapter& a, uint64_t seed) {
  uint64_t k = lora_mix64(seed ^ 0x4C6F5241496E6974ull);  // "LoRAInit"
  k = lora_mix64(k ^ ((uint64_t)(uint32_t)a.layer << 8 | (uint64_t)(uint32_t)a.site));
  const float bound = 1.0f / std::sqrt((float)a.in);  // kaiming_uniform(a=√5): gain·√(3/in) = 1/√in
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (int64_t)a.A.size(); i++) a.A[i] = (2.f * counter_uniform(k, (uint64_t)i) - 1.f) * bound;
  std::fill(a.B.begin(), a.B.end(), 0.f);
}

// ---- forward / backward (the GEMMs run on the backend: kernels/cpu/lora.h on the CPU) ---------

LoraDims LoraAdapter::dims() const {
  LoraDims d;
  d.r = r, d.in = in, d.out = out, d.scale = scale, d.dropout = dropout;
  d.dropout_active = dropout_active();
  d.mask_key = mask_key, d.mask_row0 = mask_row0;
  return d;
}

void lora_forward(Backend& be, LoraAdapter& a, const bf16* x, float* y, int N) {
  const int r = a.r;
  FRUGAL_CHECK(N >= 0 && a.A.size() == (size_t)r * a.in && a.B.size() == (size_t)a.out * r,
               "lora_forward: adapter (layer ", a.layer, ", site ", a.site, ") is malformed");
  resize_exact(a.u, (size_t)N * r);  // u: [N,r] fp32
  a.saved_rows = N;
  be.lora_forward(a.dims(), a.A.data(), a.B.data(), x, a.u.data(), y, N);  // u [N,r], y [N,out] +=
}

void lora_backward(Backend& be, LoraAdapter& a, const bf16* dy, const bf16* x, float* dx, int N) {
  const int r = a.r;
  FRUGAL_CHECK(a.saved_rows == N && a.u.size() == (size_t)N * r, "lora_backward: adapter (layer ",
               a.layer, ", site ", a.site, ") has no saved forward for N=", N);
  FRUGAL_CHECK(x != nullptr, "lora_backward: the site input is needed (layer ", a.layer, ", site ", a.site, ")");
  be.lora_backward(a.dims(), a.A.data(), a.B.data(), a.u.data(), dy, x, a.dA.data(), a.dB.data(), dx, N);
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
