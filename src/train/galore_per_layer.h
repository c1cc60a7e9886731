// galore_per_layer.h: per-layer GaLore-AdamW updates (galore.per_layer = true, full fine-tuning,
// one process). Each decoder block's weights step as soon as its backward is done, and its
// gradient buffers are freed, so the full-size gradients of the whole model never coexist: at most
// one block's linears hold a gradient (plus the small norms and the embedding / lm_head, which are
// complete only at the end of the backward and step then).
//
// Gradient accumulation (train.grad_accum = A > 1), which the reference's per-layer hooks drop:
// projection is linear, P(G_1 + ... + G_A) = P(G_1) + ... + P(G_A), so between projector refreshes
// each micro-batch's block gradient is projected right after its backward and summed into a
// projected accumulator ([m, r] or [r, n] per target, the moments' shape), and the full gradient is
// freed. Tensors that need the full gradient at this step (a target whose projector is refreshed
// from it, every non-target) keep accumulating it over the micro-batches; so on refresh steps
// with A > 1 every target's full gradient is held, as without per-layer updates.
//
// Equal to the whole-model GaLore step (GaloreAdamW::step after the backward): bitwise for A = 1
// and on refresh steps (the same per-tensor math on the same gradient); for A > 1 between
// refreshes up to fp32 rounding (a sum of projections instead of the projection of a sum).
// No global-norm clipping (the recipe check refuses optim.grad_clip > 0).
#pragma once
#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "src/model/model.h"
#include "src/train/galore.h"

namespace frugal {

class GaloreLayerStep : public GradHooks {
 public:
  // Installs itself as m's grad hooks and frees every trainable linear's gradient.
  GaloreLayerStep(LlamaModel& m, GaloreAdamW& opt);
  ~GaloreLayerStep() override;

  // One optimizer step over `micro_batches` forward_backward calls at learning rate lr: decides per
  // block tensor whether it keeps its full gradient, then t += 1 (GaloreAdamW::begin_step). The
  // caller zeroes the gradients that are not freed (norms, embedding, lm_head) before it.
  void begin(int micro_batches, float lr);
  void next_micro_batch();  // before each forward_backward of the step
  void block_grads_done(int layer) override;
  // After the last micro-batch: steps the params outside the blocks (embedding, final norm,
  // lm_head). Returns the squared L2 norm of the gradients the optimizer stepped with (full
  // gradients; for A > 1 between refreshes the targets' projected ones, as no full one exists).
  double finish();

  // Most gradient floats of decoder linears allocated at once (checked at every block's end).
  size_t peak_linear_grad_floats() const { return peak_grad_floats_; }
  void reset_peak() { peak_grad_floats_ = 0; }

 private:
  LlamaModel* m_;
  GaloreAdamW* opt_;
  int micro_batches_ = 1, micro_ = -1;
  float lr_ = 0.f;
  double sq_ = 0;                                  // squared norm of what this step used
  std::set<std::string> full_;                     // block tensors keeping their full gradient
  std::map<std::string, avector<float>> acc_;      // projected gradient sums (A > 1), this step
  avector<float> lo_;                              // one micro-batch's projected gradient
  size_t peak_grad_floats_ = 0;
  void note_grad_floats();
};

}  // namespace frugal
