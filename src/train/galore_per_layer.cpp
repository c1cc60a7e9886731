// galore_per_layer.cpp: per-layer GaLore-AdamW updates (see galore_per_layer.h).
#include "src/train/galore_per_layer.h"

namespace frugal {

static double sum_sq(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return s;
}

GaloreLayerStep::GaloreLayerStep(LlamaModel& m, GaloreAdamW& opt) : m_(&m), opt_(&opt) {
  for (auto& blk : m.blocks)
    for (LinearSite* s : blk.sites())
      if (s->trainable) m.free_linear_grad(s->name);
  m.set_grad_hooks(this);
}

GaloreLayerStep::~GaloreLayerStep() { m_->set_grad_hooks(nullptr); }

void GaloreLayerStep::begin(int micro_batches, float lr) {
  FRUGAL_CHECK(micro_batches >= 1, "GaloreLayerStep: micro_batches must be >= 1, got ", micro_batches);
  micro_batches_ = micro_batches;
  micro_ = -1;
  lr_ = lr;
  sq_ = 0;
  full_.clear();
  acc_.clear();
  for (int l = 0; l < (int)m_->blocks.size(); l++)
    for (const ParamRef& p : m_->block_params(l))
      if (opt_->needs_full_grad(p)) full_.insert(p.name);
  opt_->begin_step();
}

void GaloreLayerStep::next_micro_batch() {
  micro_++;
  FRUGAL_CHECK(micro_ < micro_batches_, "GaloreLayerStep: micro-batch ", micro_ + 1, " of a ", micro_batches_,
               "-micro-batch step");
}

void GaloreLayerStep::note_grad_floats() {
  size_t n = 0;
  for (auto& blk : m_->blocks)
    for (LinearSite* s : blk.sites()) n += s->grad.size();
  peak_grad_floats_ = std::max(peak_grad_floats_, n);
}

void GaloreLayerStep::block_grads_done(int layer) {
  FRUGAL_CHECK(micro_ >= 0, "GaloreLayerStep: a backward outside a step (next_micro_batch not called)");
  note_grad_floats();
  const bool last = micro_ == micro_batches_ - 1;
  const std::vector<ParamRef> params = m_->block_params(layer);
  if (last) opt_->refresh_projectors(params);  // the block's due refreshes, in parallel
  for (const ParamRef& p : params) {
    const bool full = full_.count(p.name) != 0;
    if (full || micro_batches_ == 1) {
      // the whole gradient is there (or will be, at the last micro-batch): the ordinary step
      if (!last) continue;
      sq_ += sum_sq(p.g, p.numel);
      opt_->step_param(p, lr_);
      continue;
    }
    // between refreshes with A > 1: sum the projections, free the full gradient
    avector<float>& acc = acc_[p.name];
    const size_t n = opt_->projected_numel(p);
    if (acc.empty()) {
      acc.assign(n, 0.f);
      opt_->project_grad(p, acc.data());
    } else {
      lo_.resize(n);
      opt_->project_grad(p, lo_.data());
      for (size_t i = 0; i < n; i++) acc[i] += lo_[i];
    }
    m_->free_linear_grad(p.name);  // the next micro-batch's backward starts from zeros
    if (last) {
      sq_ += sum_sq(acc.data(), n);
      opt_->step_param(p, lr_, acc.data());
      avector<float>().swap(acc);
    }
  }
  if (!last) return;
  for (LinearSite* s : m_->blocks[layer].sites())
    if (s->trainable && !s->grad.empty()) m_->free_linear_grad(s->name);
}

double GaloreLayerStep::finish() {
  FRUGAL_CHECK(micro_ == micro_batches_ - 1, "GaloreLayerStep: finish after ", micro_ + 1, " of ", micro_batches_,
               " micro-batches");
  // the params outside the blocks, in trainable_params() order: the embedding first, then the
  // final norm and lm_head (their gradients are complete only now)
  std::set<std::string> in_blocks;
  for (int l = 0; l < (int)m_->blocks.size(); l++)
    for (const ParamRef& p : m_->block_params(l)) in_blocks.insert(p.name);
  for (const ParamRef& p : m_->trainable_params()) {
    if (in_blocks.count(p.name)) continue;
    sq_ += sum_sq(p.g, p.numel);
    opt_->step_param(p, lr_);
  }
  micro_ = -1;
  return sq_;
}

}  // namespace frugal
