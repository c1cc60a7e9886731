// optim.cpp: AdamW, gradient norm / clipping, LR schedules (see optim.h for the math).
#include "src/model/optim.h"

#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cmath>

namespace frugal {

namespace {

// Elements are processed in chunks of kChunk so that many small LoRA tensors and a few large
// ones both spread over the threads; chunk boundaries are fixed, never thread-dependent.
constexpr size_t kChunk = 8192;

struct Chunk {
  int p;         // index into params
  size_t begin;  // element range [begin, end)
  size_t end;
};

std::vector<Chunk> make_chunks(const std::vector<ParamRef>& params) {
  std::vector<Chunk> out;
  for (int p = 0; p < (int)params.size(); ++p)
    for (size_t b = 0; b < params[p].numel; b += kChunk)
      out.push_back({p, b, std::min(params[p].numel, b + kChunk)});
  return out;
}

struct AdamWScalars {
  float decay, w1, beta2, one_m_b2, neg_step, bc2_sqrt, eps;
};

// One contiguous range of one param, torch's order of fp32 operations (see optim.h).
// kSmall: torch's lerp takes fma(weight, end-start, start) when weight < 0.5, else
// fma(weight-1, end-start, end) (its vectorized CPU kernel).
template <bool kSmall>
inline float adamw_elem(float& w, float g, float& m, float& v, const AdamWScalars& k) {
  const float wi = w * k.decay;  // decoupled weight decay first
  const float mi = kSmall ? std::fma(k.w1, g - m, m) : std::fma(k.w1 - 1.f, g - m, g);
  float vi = v * k.beta2;         // exp_avg_sq.mul_(beta2)
  vi = vi + k.one_m_b2 * g * g;   // .addcmul_(g, g, value=1-beta2)
  const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
  w = wi + k.neg_step * mi / denom;  // .addcdiv_(m, denom, value=-step_size)
  m = mi;
  v = vi;
  return w;
}

template <bool kSmall>
void adamw_chunk(float* __restrict w, const float* __restrict g, float* __restrict m, float* __restrict v,
                 size_t n, const AdamWScalars k) {
  size_t i = 0;
#if defined(__AVX512F__)
  // The same operations 16 lanes at a time (the scalar loop does not vectorize: sqrtf may set
  // errno). Tail elements take the scalar path; which path an element takes depends only on its
  // position in the param, never on the thread count.
  const __m512 decay = _mm512_set1_ps(k.decay), w1 = _mm512_set1_ps(kSmall ? k.w1 : k.w1 - 1.f);
  const __m512 beta2 = _mm512_set1_ps(k.beta2), omb2 = _mm512_set1_ps(k.one_m_b2);
  const __m512 nstep = _mm512_set1_ps(k.neg_step), bc2s = _mm512_set1_ps(k.bc2_sqrt), eps = _mm512_set1_ps(k.eps);
  for (; i + 16 <= n; i += 16) {
    const __m512 gi = _mm512_loadu_ps(g + i), mo = _mm512_loadu_ps(m + i);
    const __m512 wi = _mm512_mul_ps(_mm512_loadu_ps(w + i), decay);
    const __m512 mi = _mm512_fmadd_ps(w1, _mm512_sub_ps(gi, mo), kSmall ? mo : gi);
    __m512 vi = _mm512_mul_ps(_mm512_loadu_ps(v + i), beta2);
    vi = _mm512_add_ps(vi, _mm512_mul_ps(_mm512_mul_ps(omb2, gi), gi));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2s), eps);
    _mm512_storeu_ps(w + i, _mm512_add_ps(wi, _mm512_div_ps(_mm512_mul_ps(nstep, mi), denom)));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
  }
#endif
  for (; i < n; ++i) adamw_elem<kSmall>(w[i], g[i], m[i], v[i], k);
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const AdamWConfig& adamw) {
  if (name == "adamw") return std::make_unique<AdamW>(adamw);
  fail("optim.name: unknown optimizer '", name, "' (expected adamw)");
}

AdamW::AdamW(const AdamWConfig& c) : cfg_(c) {
  FRUGAL_CHECK(c.beta1 >= 0.f && c.beta1 < 1.f, "AdamW beta1 must be in [0, 1), got ", c.beta1);
  FRUGAL_CHECK(c.beta2 >= 0.f && c.beta2 < 1.f, "AdamW beta2 must be in [0, 1), got ", c.beta2);
  FRUGAL_CHECK(c.eps >= 0.f, "AdamW eps must be >= 0, got ", c.eps);
  FRUGAL_CHECK(c.weight_decay >= 0.f, "AdamW weight_decay must be >= 0, got ", c.weight_decay);
}

void AdamW::step(const std::vector<ParamRef>& params, float lr) {
  t_ += 1;
  // Per-param state pointers (created / zero-filled on first use).
  std::vector<float*> ms(params.size()), vs(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamRef& p = params[i];
    if (p.numel > 0 && (!p.w || !p.g)) fail("AdamW: param '", p.name, "' has no weight or gradient buffer");
    State& s = state_[p.name];
    if (s.m.empty() && s.v.empty()) {
      s.m.assign(p.numel, 0.f);
      s.v.assign(p.numel, 0.f);
    }
    if (s.m.size() != p.numel || s.v.size() != p.numel)
      fail("AdamW: optimizer state of '", p.name, "' has ", s.m.size(), "/", s.v.size(),
           " elements, the param has ", p.numel);
    ms[i] = s.m.data();
    vs[i] = s.v.data();
  }

  // Scalars as torch computes them: Python floats (fp64), rounded to fp32 when they meet the
  // fp32 tensors.
  const double b1 = cfg_.beta1, b2 = cfg_.beta2, dlr = lr;
  const double bc1 = 1.0 - std::pow(b1, (double)t_);
  const double bc2 = 1.0 - std::pow(b2, (double)t_);
  // weight_decay = 0: torch skips the multiply; multiplying by exactly 1.0f is the same.
  const float decay = cfg_.weight_decay != 0.f ? (float)(1.0 - dlr * (double)cfg_.weight_decay) : 1.f;
  const float w1 = (float)(1.0 - b1);   // lerp weight
  const float beta2 = (float)b2;
  const float one_m_b2 = (float)(1.0 - b2);
  const float neg_step = (float)(-(dlr / bc1));
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float eps = cfg_.eps;
  const bool small_w = std::fabs(w1) < 0.5f;  // torch lerp: which end to interpolate from

  const AdamWScalars k{decay, w1, beta2, one_m_b2, neg_step, bc2_sqrt, eps};
  const std::vector<Chunk> chunks = make_chunks(params);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& ch = chunks[c];
    const size_t off = ch.begin, n = ch.end - ch.begin;
    if (small_w)
      adamw_chunk<true>(params[ch.p].w + off, params[ch.p].g + off, ms[ch.p] + off, vs[ch.p] + off, n, k);
    else
      adamw_chunk<false>(params[ch.p].w + off, params[ch.p].g + off, ms[ch.p] + off, vs[ch.p] + off, n, k);
  }
}

double grad_sq_sum(const std::vector<ParamRef>& params) {
  const std::vector<Chunk> chunks = make_chunks(params);
  std::vector<double> partial(chunks.size(), 0.0);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& ch = chunks[c];
    const float* g = params[ch.p].g;
    double s = 0.0;
    // simd reduction: a fixed (vector-width) summation order, independent of the threads
#pragma omp simd reduction(+ : s)
    for (size_t i = ch.begin; i < ch.end; ++i) s += (double)g[i] * (double)g[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;  // fixed order: thread-count independent
  return total;
}

double grad_norm(const std::vector<ParamRef>& params) { return std::sqrt(grad_sq_sum(params)); }

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
  const double norm = grad_norm(params);
  clip_grads(params, max_norm, norm);
  return norm;
}

void clip_grads(const std::vector<ParamRef>& params, double max_norm, double norm) {
  if (!(max_norm > 0.0)) return;
  // torch: total_norm is an fp32 tensor; clip_coef = max_norm / (total_norm + 1e-6) in fp32,
  // clamped to 1 (a NaN/Inf norm propagates into the grads, as in torch with
  // error_if_nonfinite=False; the trainer checks the returned norm).
  const float coef = (float)max_norm / ((float)norm + 1e-6f);
  if (coef < 1.f || std::isnan(coef)) {
    const std::vector<Chunk> chunks = make_chunks(params);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks.size(); ++c) {
      float* g = params[chunks[c].p].g;
#pragma omp simd
      for (size_t i = chunks[c].begin; i < chunks[c].end; ++i) g[i] *= coef;
    }
  }
}

void zero_grads(const std::vector<ParamRef>& params) {
  for (const ParamRef& p : params)
    if (p.g && p.numel) std::memset(p.g, 0, p.numel * sizeof(float));
}

void LRSchedule::validate() const {
  if (type != "constant" && type != "linear" && type != "cosine")
    fail("LR schedule: unknown type '", type, "' (expected constant, linear or cosine)");
  if (!(lr > 0.f)) fail("LR schedule: lr must be > 0, got ", lr);
  if (warmup_steps < 0) fail("LR schedule: warmup_steps must be >= 0, got ", warmup_steps);
  if (total_steps < 1) fail("LR schedule: total_steps must be >= 1, got ", total_steps);
  if (!(min_lr_ratio >= 0.f && min_lr_ratio <= 1.f))
    fail("LR schedule: min_lr_ratio must be in [0, 1], got ", min_lr_ratio);
}

float LRSchedule::at(int64_t step) const {
  const double s = (double)step, W = warmup_steps, S = total_steps;
  double lambda;
  if (step < warmup_steps) {
    lambda = s / std::max(1.0, W);
  } else if (type == "constant") {
    lambda = 1.0;
  } else if (type == "linear") {
    lambda = std::max(0.0, (S - s) / std::max(1.0, S - W));
    if (min_lr_ratio > 0.f) lambda = lambda * (1.0 - (double)min_lr_ratio) + (double)min_lr_ratio;
  } else if (type == "cosine") {
    const double progress = (s - W) / std::max(1.0, S - W);
    lambda = 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress));  // num_cycles = 0.5
    if (min_lr_ratio > 0.f) lambda = lambda * (1.0 - (double)min_lr_ratio) + (double)min_lr_ratio;
    lambda = std::max(0.0, lambda);
  } else {
    fail("LR schedule: unknown type '", type, "' (expected constant, linear or cosine)");
  }
  return (float)((double)lr * lambda);
}

}  // namespace frugal
