// model.cpp: LlamaForCausalLM forward / backward (see model.h for the math, the shifted-target
// convention and what is saved per block): embedding, the blocks (src/model/block.h), the head.
// Every op runs on the model's Backend. Loading lives in model_load.cpp.
#include "src/model/model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>


namespace frugal {

// ---- small helpers ---------------------------------------------------------------------------

QuantMode parse_quant_mode(const std::string& s) {
  if (s == "none") return QuantMode::None;
  if (s == "nf4") return QuantMode::NF4;
  fail("unknown quantization '", s, "' (expected none or nf4)");
}

std::vector<int32_t> shift_labels(const int32_t* labels, int B, int T) {
  std::vector<int32_t> t((size_t)B * T, kIgnoreIndex);
  for (int b = 0; b < B; b++)
    for (int i = 0; i + 1 < T; i++) t[(size_t)b * T + i] = labels[(size_t)b * T + i + 1];
  return t;
}

int64_t count_targets(const int32_t* targets, size_t n) {
  int64_t c = 0;
  for (size_t i = 0; i < n; i++) c += targets[i] != kIgnoreIndex;
  return c;
}

// ---- buffers ------------------------------------------------------------------------------------

void LlamaModel::prepare(int B, int T, bool for_backward) {
  FRUGAL_CHECK(B > 0 && T > 0, "batch shape B=", B, " T=", T);
  FRUGAL_CHECK(!blocks.empty() || cfg_.num_hidden_layers == 0, "model has no weights loaded");
  const int L = cfg_.num_hidden_layers, C = cfg_.hidden_size;
  const size_t N = (size_t)B * T;
  if (T != T_ || rope_.max_pos != T) rope_ = be_->rope_table(cfg_.rope, T, T);
  B_ = B;
  T_ = T;
  pos_.resize(N);
  for (size_t i = 0; i < N; i++) pos_[i] = (int32_t)(i % T);

  // block inputs: all L+1 for backward (they are the checkpoints too), a ping-pong pair for eval
  xs_.resize(for_backward ? L + 1 : 2);
  for (auto& x : xs_) resize_exact(x, N * C);
  // per-block activations: one set per block, or one scratch set (eval / checkpointing)
  acts_.resize(for_backward && !opt_.checkpoint ? L : 1);
  for (auto& a : acts_) a.resize(cfg_, N);
  scratch_.resize(cfg_, N, for_backward);
  resize_exact(rstdf_, N);
  resize_exact(xf_bf_, N * C);
  resize_exact(tmpC_, N * C);
  if (for_backward) resize_exact(d_x0_, N * C), resize_exact(dres_, N * C);
}

void LlamaModel::embed_input(const Batch& b, float* x0) {
  const int C = cfg_.hidden_size;
  const size_t N = (size_t)b.B * b.T;
  FRUGAL_CHECK((b.ids != nullptr) != (b.embeds != nullptr), "batch needs exactly one of ids or embeds");
  if (b.ids)
    be_->embedding_forward(x0, b.ids, embed.data(), (int)N, C, cfg_.vocab_size);  // x0: [N,C]
  else
    be_->copy(x0, b.embeds, N * C * sizeof(float));
}

BlockPass LlamaModel::pass(CausalAttention& attn) {
  BlockPass p;
  p.B = B_, p.T = T_, p.pos = pos_.data(), p.rope = &rope_, p.attention = &attn;
  return p;
}

// ---- head: final norm + fused lm_head/CE ------------------------------------------------------

// xf: [N,C] final hidden state. With grad: dres_ = grad_scale·d(sum CE)/d(xf), lm_head grad +=.
ForwardStats LlamaModel::head_loss(const Batch& b, const float* xf, float grad_scale, bool with_grad,
                                   float* losses) {
  const int N = B_ * T_, C = cfg_.hidden_size, V = cfg_.vocab_size;
  FRUGAL_CHECK(b.targets != nullptr, "batch has no targets");
  for (int i = 0; i < N; i++) {
    int32_t t = b.targets[i];
    if (t != kIgnoreIndex && (t < 0 || t >= V))
      fail("target ", t, " at batch ", i / T_, " position ", i % T_, " is outside [0, ", V, ")");
  }
  be_->rmsnorm_forward(tmpC_.data(), rstdf_.data(), xf, norm.w.data(), N, C, cfg_.rms_norm_eps);
  be_->to_bf16(tmpC_.data(), xf_bf_.data(), (size_t)N * C);  // xf_bf: [N,C] bf16
  ForwardStats st;
  st.n_targets = count_targets(b.targets, (size_t)N);
  if (grad_scale <= 0.f) grad_scale = st.n_targets ? 1.0f / (float)st.n_targets : 0.f;
  float* dW = nullptr;
  if (with_grad) {
    if (cfg_.tie_word_embeddings && embed_trainable) dW = embed_grad.data();
    if (!cfg_.tie_word_embeddings && lm_head_trainable) dW = lm_head_grad.data();
  }
  float* dxf = scratch_.dn.data();  // [N,C] d(loss)/d(normed xf)
  st.loss_sum = be_->lm_head_ce(xf_bf_.data(), lm_head_weight(), b.targets, N, C, V, grad_scale,
                                with_grad ? dxf : nullptr, dW, losses);
  if (with_grad)
    be_->rmsnorm_backward(dres_.data(), norm.trainable ? norm.grad.data() : nullptr, dxf, xf,
                          norm.w.data(), rstdf_.data(), N, C);
  return st;
}

// ---- public passes --------------------------------------------------------------------------------

const float* LlamaModel::run_eval(const Batch& b) {
  set_lora_mode(false);  // no dropout outside training
  prepare(b.B, b.T, false);
  const int L = cfg_.num_hidden_layers;
  acquire(0);
  embed_input(b, xs_[0].data());
  release(0);
  CausalAttention attn(cfg_, B_, T_);
  const BlockPass p = pass(attn);
  for (int l = 0; l < L; l++) {
    acquire(1 + l);
    block_forward(*be_, cfg_, blocks[l], l, p, xs_[l % 2].data(), acts_[0], scratch_, xs_[(l + 1) % 2].data());
    release(1 + l);
  }
  return xs_[L % 2].data();
}

ForwardStats LlamaModel::forward(const Batch& b, float* losses) {
  if (hooks_) hooks_->begin_pass(false);
  const float* xf = run_eval(b);
  const int H = cfg_.num_hidden_layers + 1;
  acquire(H);
  ForwardStats st = head_loss(b, xf, 1.f, false, losses);
  release(H);
  if (hooks_) hooks_->end_pass();
  return st;
}

ForwardStats LlamaModel::forward_backward(const Batch& b, float grad_scale) {
  set_lora_mode(true);  // this micro-batch's dropout masks (recomputation reuses the same keys)
  drop_micro_++;
  prepare(b.B, b.T, true);
  const int L = cfg_.num_hidden_layers;
  const size_t NC = (size_t)b.B * b.T * cfg_.hidden_size;
  if (hooks_) hooks_->begin_pass(true);
  acquire(0);
  embed_input(b, xs_[0].data());
  release(0);
  CausalAttention attn(cfg_, B_, T_);
  const BlockPass p = pass(attn);
  for (int l = 0; l < L; l++) {
    acquire(1 + l);
    block_forward(*be_, cfg_, blocks[l], l, p, xs_[l].data(), acts_[opt_.checkpoint ? 0 : l], scratch_,
                  xs_[l + 1].data());
    release(1 + l);
  }
  acquire(L + 1);
  ForwardStats st = head_loss(b, xs_[L].data(), grad_scale, true, nullptr);  // dres_ = dL/dxs_[L]
  release(L + 1);
  for (int l = L - 1; l >= 0; l--) {
    acquire(1 + l);
    if (opt_.checkpoint)  // recompute this block's activations from its saved input
      block_forward(*be_, cfg_, blocks[l], l, p, xs_[l].data(), acts_[0], scratch_, tmpC_.data());
    alloc_block_grads(l);
    block_backward(*be_, cfg_, blocks[l], l, p, xs_[l].data(), acts_[opt_.checkpoint ? 0 : l], scratch_,
                   dres_.data());
    if (grad_hooks_) grad_hooks_->block_grads_done(l);
    release(1 + l);
  }
  if (hooks_) hooks_->end_pass();
  be_->copy(d_x0_.data(), dres_.data(), NC * sizeof(float));  // d(loss)/d(input embeds)
  if (b.ids && embed_trainable)
    be_->embedding_backward(embed_grad.data(), d_x0_.data(), b.ids, b.B * b.T, cfg_.hidden_size,
                       cfg_.vocab_size);
  return st;
}

void LlamaModel::logits(const Batch& b, float* out) {
  if (hooks_) hooks_->begin_pass(false);
  const float* xf = run_eval(b);
  const int N = B_ * T_, C = cfg_.hidden_size, V = cfg_.vocab_size;
  acquire(cfg_.num_hidden_layers + 1);
  be_->rmsnorm_forward(tmpC_.data(), rstdf_.data(), xf, norm.w.data(), N, C, cfg_.rms_norm_eps);
  be_->to_bf16(tmpC_.data(), xf_bf_.data(), (size_t)N * C);
  be_->lm_head_logits(out, xf_bf_.data(), lm_head_weight(), N, C, V);  // out[N,V] = xf_bf·lm_headᵀ
  release(cfg_.num_hidden_layers + 1);
  if (hooks_) hooks_->end_pass();
}

// ---- trainable tensors -------------------------------------------------------------------------

LinearSite* LlamaModel::find_linear(const std::string& n) {
  for (auto& blk : blocks)
    for (LinearSite* s : blk.sites())
      if (s->name == n) return s;
  return nullptr;
}

NormParam* LlamaModel::find_norm(const std::string& n) {
  if (norm.name == n) return &norm;
  for (auto& blk : blocks) {
    if (blk.ln1.name == n) return &blk.ln1;
    if (blk.ln2.name == n) return &blk.ln2;
  }
  return nullptr;
}

void LlamaModel::set_trainable(const std::string& n, bool on) {
  const size_t VC = (size_t)cfg_.vocab_size * cfg_.hidden_size;
  if (LinearSite* s = find_linear(n)) {
    s->trainable = on;
    if (on) resize_exact(s->grad, (size_t)s->W.out * s->W.in); else avector<float>().swap(s->grad), avector<float>().swap(s->master);
  } else if (NormParam* p = find_norm(n)) {
    p->trainable = on;
    if (on) resize_exact(p->grad, (size_t)cfg_.hidden_size); else avector<float>().swap(p->grad);  // [C] (also on a skeleton)
  } else if (n == "model.embed_tokens.weight") {
    embed_trainable = on;
    if (on) resize_exact(embed_grad, VC); else avector<float>().swap(embed_grad), avector<float>().swap(embed_master);
  } else if (n == "lm_head.weight") {
    if (cfg_.tie_word_embeddings)
      fail("lm_head.weight is tied to model.embed_tokens.weight; mark that one trainable");
    lm_head_trainable = on;
    if (on) resize_exact(lm_head_grad, VC); else avector<float>().swap(lm_head_grad), avector<float>().swap(lm_head_master);
  } else {
    fail("set_trainable: no tensor named '", n, "' in the model");
  }
}

const avector<float>& LlamaModel::grad(const std::string& n) const {
  auto* self = const_cast<LlamaModel*>(this);
  if (LinearSite* s = self->find_linear(n); s && s->trainable) return s->grad;
  if (NormParam* p = self->find_norm(n); p && p->trainable) return p->grad;
  if (n == "model.embed_tokens.weight" && embed_trainable) return embed_grad;
  if (n == "lm_head.weight" && lm_head_trainable) return lm_head_grad;
  fail("grad: tensor '", n, "' is not trainable (or does not exist)");
}

void LlamaModel::add_master(const std::string& n) {
  auto fill = [&](avector<float>& master, const Buf<bf16>& w, size_t numel) {
    FRUGAL_CHECK(w.size() == numel, "add_master: ", n, " has no weights loaded");
    master.resize(numel);
    be_->to_f32(w.data(), master.data(), numel);  // master: [numel] fp32 = the bf16 weight (exact)
  };
  if (LinearSite* s = find_linear(n)) {
    if (!s->trainable) fail("add_master: ", n, " is not trainable (set_trainable first)");
    if (s->W.kind != FrozenWeight::Kind::BF16)
      fail("add_master: ", n, " is stored in NF4; full fine-tuning needs a bf16 base (quant.type = \"none\")");
    fill(s->master, s->W.w, (size_t)s->W.out * s->W.in);
  } else if (NormParam* p = find_norm(n)) {
    if (!p->trainable) fail("add_master: ", n, " is not trainable (set_trainable first)");
    // fp32 already: the weight is its own master
  } else if (n == "model.embed_tokens.weight") {
    if (!embed_trainable) fail("add_master: ", n, " is not trainable (set_trainable first)");
    fill(embed_master, embed, (size_t)cfg_.vocab_size * cfg_.hidden_size);
  } else if (n == "lm_head.weight" && !cfg_.tie_word_embeddings) {
    if (!lm_head_trainable) fail("add_master: ", n, " is not trainable (set_trainable first)");
    fill(lm_head_master, lm_head_w, (size_t)cfg_.vocab_size * cfg_.hidden_size);
  } else {
    fail("add_master: no trainable bf16 tensor named '", n, "' in the model");
  }
}

void LlamaModel::zero_grad() {
  auto z = [&](auto& g) { be_->zero(g.data(), g.size()); };
  for (auto& blk : blocks) {
    for (LinearSite* s : blk.sites()) z(s->grad);
    z(blk.ln1.grad), z(blk.ln2.grad);
    for (LinearSite* s : blk.sites())
      if (s->lora) z(s->lora->dA), z(s->lora->dB);
  }
  z(norm.grad), z(embed_grad), z(lm_head_grad);
}

// ---- memory ----------------------------------------------------------------------------------------

MemoryReport LlamaModel::memory_report() const {
  MemoryReport r;
  auto fb = [](const auto& v) { return vec_bytes(v); };
  for (const auto& blk : blocks) {
    for (const LinearSite* s : blk.sites()) {
      r.frozen_linear_bytes += s->W.bytes();
      r.frozen_linear_params += (size_t)s->W.out * s->W.in;
      r.grad_bytes += fb(s->grad);
      r.master_bytes += fb(s->master);
      if (s->lora) {
        r.lora_bytes += s->lora->weight_bytes();
        r.lora_params += s->lora->A.size() + s->lora->B.size();
        r.grad_bytes += s->lora->grad_bytes();
        r.activation_bytes += fb(s->lora->u);
      }
    }
    r.norm_bytes += fb(blk.ln1.w) + fb(blk.ln2.w);
    r.grad_bytes += fb(blk.ln1.grad) + fb(blk.ln2.grad);
  }
  r.norm_bytes += fb(norm.w);
  r.grad_bytes += fb(norm.grad) + fb(embed_grad) + fb(lm_head_grad);
  r.master_bytes += fb(embed_master) + fb(lm_head_master);
  r.embedding_bytes = fb(embed) + fb(lm_head_w);
  for (const auto& x : xs_) r.activation_bytes += fb(x);
  for (const auto& a : acts_) r.activation_bytes += a.bytes();
  for (const auto* v : {&rstdf_, &tmpC_, &d_x0_, &dres_}) r.activation_bytes += fb(*v);
  r.activation_bytes += fb(xf_bf_) + scratch_.bytes();
  return r;
}

std::string MemoryReport::str() const {
  auto mb = [](size_t b) { return frugal::str((double)b / (1 << 20), " MiB"); };
  return frugal::str("frozen linears ", mb(frozen_linear_bytes), " (", frozen_linear_params, " params, ",
             frozen_linear_params ? 8.0 * frozen_linear_bytes / frozen_linear_params : 0.0,
             " bits/param), embeddings ", mb(embedding_bytes), ", norms ", mb(norm_bytes), ", lora ",
             mb(lora_bytes), " (", lora_params, " params), grads ",
             mb(grad_bytes), ", activations ", mb(activation_bytes), ", total ", mb(total()));
}

// ---- LoRA ------------------------------------------------------------------------------------------


void LlamaModel::add_lora_skeleton(const LoraConfig& cfg) {
  add_lora(cfg, 0, /*allocate=*/false);
}

void LlamaModel::add_lora(const LoraConfig& cfg, uint64_t seed) { add_lora(cfg, seed, true); }

void LlamaModel::add_lora(const LoraConfig& cfg, uint64_t seed, bool allocate) {
  if (lora_cfg_) fail("add_lora: the model already has LoRA adapters");
  FRUGAL_CHECK(!blocks.empty(), "add_lora: model has no weights loaded");
  cfg.validate();
  LoraConfig c = cfg;
  c.target_modules = LoraConfig::expand_targets(cfg.target_modules);
  const auto& names = lora_site_names();
  for (size_t l = 0; l < blocks.size(); l++) {
    auto sites = blocks[l].sites();
    for (size_t si = 0; si < sites.size(); si++) {
      if (std::find(c.target_modules.begin(), c.target_modules.end(), names[si]) == c.target_modules.end())
        continue;
      LinearSite& s = *sites[si];
      s.lora = std::make_unique<LoraAdapter>(c.rank, s.W.in, s.W.out, c.scale(), c.dropout);
      s.lora->layer = (int)l;
      s.lora->site = (int)si;
      if (allocate)
        lora_init(*s.lora, seed);
      else
        s.lora->A.reset(), s.lora->B.reset(), s.lora->dA.reset(), s.lora->dB.reset();
    }
  }
  lora_cfg_ = std::make_unique<LoraConfig>(c);
}

// One param per tensor; a trainable bf16/NF4 tensor without an fp32 master goes to *no_master.
template <class Weights, class Grads>  // avector<float> or Buf<float>
static void add_param(std::vector<ParamRef>& ps, const std::string& name, std::vector<int64_t> shape, Weights& w,
                      Grads& g) {
  // g empty: a gradient freed by per-layer updates (free_linear_grad), handed out as nullptr
  FRUGAL_CHECK(g.empty() || w.size() == g.size(), "parameter ", name, " has no gradient buffer");
  ps.push_back(ParamRef{name, std::move(shape), w.data(), g.empty() ? nullptr : g.data(), w.size(), {}});
}
static void add_dense(std::vector<ParamRef>& ps, std::string& no_master, const std::string& name,
                      std::vector<int64_t> shape, avector<float>& master, avector<float>& g) {
  if (master.empty()) no_master += " " + name;
  else add_param(ps, name, std::move(shape), master, g);
}

static void add_block_params(std::vector<ParamRef>& ps, std::string& no_master, LlamaBlock& blk) {
  for (LinearSite* s : blk.sites()) {
    if (!s->lora) continue;
    LoraAdapter& a = *s->lora;
    add_param(ps, peft_lora_name(s->name, 'A'), {a.r, a.in}, a.A, a.dA);
    add_param(ps, peft_lora_name(s->name, 'B'), {a.out, a.r}, a.B, a.dB);
  }
  for (LinearSite* s : blk.sites())
    if (s->trainable) add_dense(ps, no_master, s->name, {s->W.out, s->W.in}, s->master, s->grad);
  for (NormParam* p : {&blk.ln1, &blk.ln2})
    if (p->trainable) add_param(ps, p->name, {(int64_t)p->w.size()}, p->w, p->grad);
}

static void fail_no_master(const std::string& no_master) {
  if (!no_master.empty())
    fail("trainable_params: these trainable tensors are stored in bf16/NF4 without an fp32 master weight "
         "and cannot be optimized (add_master):", no_master);
}

std::vector<ParamRef> LlamaModel::trainable_params() {
  std::vector<ParamRef> ps;
  std::string no_master;  // trainable bf16/NF4 tensors without an fp32 master
  const int64_t V = cfg_.vocab_size, C = cfg_.hidden_size;
  if (embed_trainable) add_dense(ps, no_master, "model.embed_tokens.weight", {V, C}, embed_master, embed_grad);
  for (auto& blk : blocks) add_block_params(ps, no_master, blk);
  if (norm.trainable) add_param(ps, norm.name, {(int64_t)norm.w.size()}, norm.w, norm.grad);
  if (lm_head_trainable) add_dense(ps, no_master, "lm_head.weight", {V, C}, lm_head_master, lm_head_grad);
  fail_no_master(no_master);
  return ps;
}

std::vector<ParamRef> LlamaModel::block_params(int layer) {
  FRUGAL_CHECK(layer >= 0 && layer < (int)blocks.size(), "block_params: layer ", layer, " of ", blocks.size());
  std::vector<ParamRef> ps;
  std::string no_master;
  add_block_params(ps, no_master, blocks[layer]);
  fail_no_master(no_master);
  return ps;
}

void LlamaModel::free_linear_grad(const std::string& n) {
  LinearSite* s = find_linear(n);
  if (!s || !s->trainable) fail("free_linear_grad: '", n, "' is not a trainable decoder linear");
  avector<float>().swap(s->grad);
}

void LlamaModel::alloc_block_grads(int layer) {
  for (LinearSite* s : blocks[layer].sites())
    if (s->trainable && s->grad.empty()) s->grad.resize((size_t)s->W.out * s->W.in);  // zeros
}

void LlamaModel::sync_lora() {
  for (auto& blk : blocks)
    for (LinearSite* s : blk.sites())
      if (s->lora) s->lora->sync_compute_copies();
}

// bf16 compute copy = round-to-nearest(master) for every tensor with an fp32 master.
void LlamaModel::sync_trainables() {
  sync_lora();
  auto round = [&](const avector<float>& master, Buf<bf16>& w) {
    if (master.empty()) return;
    FRUGAL_CHECK(w.size() == master.size(), "sync_trainables: compute copy and master differ in size");
    be_->to_bf16(master.data(), w.data(), master.size());  // w: [n] bf16 = round-to-nearest-even(master)
  };
  round(embed_master, embed);
  round(lm_head_master, lm_head_w);
  for (auto& blk : blocks)
    for (LinearSite* s : blk.sites()) round(s->master, s->W.w);
}

void LlamaModel::set_dropout_rng(uint64_t seed, uint64_t step, uint64_t row0) {
  drop_seed_ = seed;
  drop_step_ = step;
  drop_micro_ = 0;
  drop_row0_ = row0;
}

void LlamaModel::set_lora_mode(bool training) {
  if (!lora_cfg_) return;
  for (auto& blk : blocks)
    for (LinearSite* s : blk.sites())
      if (s->lora) {
        s->lora->training = training;
        s->lora->mask_key = lora_mask_key(drop_seed_, drop_step_, drop_micro_, s->lora->layer, s->lora->site);
        s->lora->mask_row0 = training ? drop_row0_ : 0;
      }
}

LoraAdapter* LlamaModel::lora_adapter(const std::string& n) {
  LinearSite* s = find_linear(n);
  return s ? s->lora.get() : nullptr;
}

}  // namespace frugal
