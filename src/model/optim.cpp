// optim.cpp: AdamW, gradient norm / clipping, LR schedules (see optim.h for the math). The element
// loops run on the backend (kernels/cpu/adamw.h on the CPU) over fixed chunks made here.
#include "src/model/optim.h"

#include <cmath>
#include <cstring>

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

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const AdamWConfig& adamw, Backend& be) {
  if (name == "adamw") return std::make_unique<AdamW>(adamw, be);
  fail("optim.name: unknown optimizer '", name, "' (expected adamw)");
}

AdamW::AdamW(const AdamWConfig& c, Backend& be) : cfg_(c), be_(&be) {
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

  const AdamWScalars k{decay, w1, beta2, one_m_b2, neg_step, bc2_sqrt, eps, small_w};
  const std::vector<Chunk> chunks = make_chunks(params);
  std::vector<AdamWChunk> ac(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& ch = chunks[c];
    const size_t off = ch.begin;
    ac[c] = {params[ch.p].w + off, params[ch.p].g + off, ms[ch.p] + off, vs[ch.p] + off, ch.end - ch.begin};
  }
  be_->adamw_update(ac.data(), ac.size(), k);
}

namespace {
std::vector<GradChunk> grad_chunks(const std::vector<ParamRef>& params) {
  std::vector<GradChunk> out;
  for (const Chunk& ch : make_chunks(params)) out.push_back({params[ch.p].g + ch.begin, ch.end - ch.begin});
  return out;
}
}  // namespace

double grad_sq_sum(const std::vector<ParamRef>& params, Backend& be) {
  const std::vector<GradChunk> chunks = grad_chunks(params);
  std::vector<double> partial(chunks.size(), 0.0);
  be.grad_sq_sums(chunks.data(), chunks.size(), partial.data());
  double total = 0.0;
  for (double s : partial) total += s;  // fixed order: thread-count independent
  return total;
}

double grad_norm(const std::vector<ParamRef>& params, Backend& be) { return std::sqrt(grad_sq_sum(params, be)); }

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm, Backend& be) {
  const double norm = grad_norm(params, be);
  clip_grads(params, max_norm, norm, be);
  return norm;
}

void clip_grads(const std::vector<ParamRef>& params, double max_norm, double norm, Backend& be) {
  if (!(max_norm > 0.0)) return;
  // torch: total_norm is an fp32 tensor; clip_coef = max_norm / (total_norm + 1e-6) in fp32,
  // clamped to 1 (a NaN/Inf norm propagates into the grads, as in torch with
  // error_if_nonfinite=False; the trainer checks the returned norm).
  const float coef = (float)max_norm / ((float)norm + 1e-6f);
  if (coef < 1.f || std::isnan(coef)) {
    const std::vector<GradChunk> chunks = grad_chunks(params);
    be.grad_scale(chunks.data(), chunks.size(), coef);
  }
}

void zero_grads(const std::vector<ParamRef>& params, Backend& be) {
  for (const ParamRef& p : params)
    if (p.g && p.numel) be.zero(p.g, p.numel);
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

namespace frugal {

std::vector<OptimStatePart> Optimizer::state_parts(const std::vector<ParamRef>& params) {
  std::vector<OptimStatePart> out;
  const std::vector<std::string> names = state_names();
  for (const ParamRef& p : params) {
    std::vector<OptimStateTensor> st = state(p.name);
    FRUGAL_CHECK(st.size() == names.size(), "internal: ", name(), " lists ", names.size(), " states but gives ",
                 st.size(), " for ", p.name);
    for (OptimStateTensor& t : st)
      if (t.buf->size() != p.numel) t.buf->assign(p.numel, 0.f);  // empty = zeros: make them real
    // per tensor of the param (of the flat shard), state by state (the order the checkpoint lists them)
    for (const ParamPiece& pc : param_pieces(p))
      for (size_t k = 0; k < st.size(); k++)
        out.push_back({names[k], pc.name, pc.shape, pc.begin, pc.end, pc.begin, pc.end,
                       st[k].buf->data() + pc.offset});
  }
  return out;
}

}  // namespace frugal
