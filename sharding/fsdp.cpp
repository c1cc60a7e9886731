// fsdp.cpp: just-in-time all-gather / reduce-scatter of FSDP units (see fsdp.h).
#include "sharding/fsdp.h"

#include "src/model/optim.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

namespace frugal {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

std::vector<FsdpStep> fsdp_schedule(const ModelLayout& L, bool backward) {
  const int nl = L.cfg.num_hidden_layers;
  std::vector<FsdpStep> s;
  s.push_back({L.embed_unit()});
  for (int l = 0; l < nl; l++) s.push_back({L.block_unit(l)});
  if (L.cfg.tie_word_embeddings)
    s.push_back({L.head_unit(), L.embed_unit()});
  else
    s.push_back({L.head_unit()});
  if (backward)
    for (int l = nl - 1; l >= 0; l--) s.push_back({L.block_unit(l)});
  return s;
}

// Units alive at step p: those of steps [p, p + prefetch] (gathered ahead, or kept because they
// come back within the window) — the rule Fsdp::acquire/release follow.
static std::set<int> window_units(const std::vector<FsdpStep>& s, size_t p, int prefetch) {
  std::set<int> u;
  for (size_t q = p; q < s.size() && q <= p + (size_t)prefetch; q++) u.insert(s[q].begin(), s[q].end());
  return u;
}

// Units of the NEXT pass that a backward pass gathers ahead while its last steps compute (the
// schedule is treated as cyclic: window step q >= s.size() is the next pass's step q - s.size(),
// and every pass starts with the same forward steps). Only a prefix of steps whose units have no
// trainables qualifies: the optimizer step between the passes changes the LoRA shards, so a unit
// with LoRA must be gathered after it. In practice: the embedding unit, whose gather would
// otherwise be exposed at the start of every pass (nothing computes before it).
static std::vector<int> next_pass_units(const ModelLayout& L, const std::vector<FsdpStep>& s, size_t p,
                                        int prefetch) {
  std::vector<int> u;
  for (size_t q = std::max(p + 1, s.size()); q <= p + (size_t)prefetch && q - s.size() < s.size(); q++) {
    const FsdpStep& next = s[q - s.size()];
    for (int v : next)
      if (L.units[v].train_padded) return u;
    u.insert(u.end(), next.begin(), next.end());
  }
  return u;
}

FsdpMemory fsdp_memory_model(const ModelLayout& L, const FsdpOptions& o, bool backward) {
  FsdpMemory m;
  m.frozen_shard = L.total_frozen_shard();
  m.train_shard = 16 * L.total_train_shard();  // w, g, m, v
  const auto s = fsdp_schedule(L, backward);
  // Units alive while step p computes: the window of p plus, just after release(p-1), units
  // kept from step p-1's window that are still in p's. window(p) covers both.
  for (size_t p = 0; p < s.size(); p++) {
    size_t b = 0;
    std::set<int> alive = window_units(s, p, o.prefetch);
    if (backward)
      for (int u : next_pass_units(L, s, p, o.prefetch)) alive.insert(u);
    for (int u : alive) b += L.units[u].frozen_padded + 4 * L.units[u].train_padded;
    m.gathered_peak = std::max(m.gathered_peak, b);
  }
  if (backward && L.has_lora) {
    // the grad of the unit in backward + the previous unit's, still reduce-scattering, and its
    // receive shard
    size_t g1 = 0, g2 = 0;
    for (const auto& u : L.units) {
      const size_t b = 4 * (u.train_padded + u.train_shard);
      if (b > g1) g2 = g1, g1 = b;
      else if (b > g2) g2 = b;
    }
    m.grad_in_flight = g1 + g2;
  }
  return m;
}

// ---- the runtime --------------------------------------------------------------------------------

// Receive storage an all-gather fills completely (W shards of shard bytes = the padded unit):
// 64-byte aligned and NOT value-initialized. avector::resize would zero it first, on the compute
// thread, page-faulting and clearing every page (1 GB for a Llama-3-8B embedding unit) each time
// the unit is gathered; left untouched, its pages are first written by the all-gather on the
// communicator's progress thread, overlapped with compute when the unit is prefetched.
template <class T>
class GatherBuffer {
 public:
  void allocate(size_t count) {
    FRUGAL_CHECK(!p_, "FSDP: gather buffer allocated twice");
    if (!count) return;
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;  // aligned_alloc: a multiple of the alignment
    p_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!p_) fail("FSDP: cannot allocate ", bytes, " bytes for a gathered unit");
    n_ = count;
  }
  T* data() { return p_.get(); }
  size_t size() const { return n_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
  size_t n_ = 0;
};

struct Fsdp::Slot {
  GatherBuffer<uint8_t> frozen;  // [frozen_padded] gathered frozen buffer
  GatherBuffer<float> train;     // [train_padded] gathered LoRA A/B and dense masters
  std::vector<avector<bf16>> bf16_copies;  // bf16 compute copies of the unit's dense bf16 masters
  CommRequest rf, rt;
  bool ready = false;        // gathers waited for
  bool bound = false;
  bool grads = false;        // bound with grad views (backward)
};

struct Fsdp::GradFlight {
  avector<float> full;  // [train_padded] grads of the unit's LoRA tensors, bound as dA/dB
  avector<float> recv;  // [train_shard] this rank's summed shard
  CommRequest req;
};

Fsdp::Fsdp(LlamaModel& m, const ModelLayout& L, Communicator& comm, const FsdpOptions& o,
           std::vector<avector<uint8_t>> frozen_shards)
    : m_(m), L_(L), comm_(comm), opt_(o), frozen_(std::move(frozen_shards)) {
  FRUGAL_CHECK(L_.world == comm_.world(), "FSDP layout is for ", L_.world, " ranks, the job has ", comm_.world());
  FRUGAL_CHECK(frozen_.size() == L_.units.size(), "FSDP: ", frozen_.size(), " frozen shards for ", L_.units.size(), " units");
  for (size_t u = 0; u < L_.units.size(); u++)
    FRUGAL_CHECK(frozen_[u].size() == L_.units[u].frozen_shard, "FSDP: unit ", L_.units[u].name, " shard has ",
                 frozen_[u].size(), " bytes, the layout says ", L_.units[u].frozen_shard);
  FRUGAL_CHECK((int)m_.blocks.size() == L_.cfg.num_hidden_layers, "FSDP: model has ", m_.blocks.size(), " blocks");
  w_.resize(L_.units.size());
  g_.resize(L_.units.size());
  slots_.resize(L_.units.size());
  for (size_t u = 0; u < L_.units.size(); u++) {
    const UnitLayout& ul = L_.units[u];
    if (!ul.train_shard) continue;
    w_[u].assign(ul.train_shard, 0.f);
    g_[u].assign(ul.train_shard, 0.f);
    params_.push_back(ParamRef{"fsdp/" + ul.name, {(int64_t)ul.train_shard}, w_[u].data(), g_[u].data(), ul.train_shard, {}});
    // one piece per trainable tensor: optimizers and checkpoints see the tensors in the shard
    params_.back().pieces = unit_pieces(ul, L_.world, comm_.rank());
  }
  m_.set_unit_hooks(this);
}

Fsdp::~Fsdp() {
  try {
    for (auto& [u, g] : gif_) g->req.wait();
    gif_.clear();
    for (size_t u = 0; u < slots_.size(); u++)
      if (slots_[u]) {
        slots_[u]->rf.wait(), slots_[u]->rt.wait();
        unbind((int)u);
      }
  } catch (...) {
  }
  if (m_.unit_hooks() == this) m_.set_unit_hooks(nullptr);
}

void Fsdp::init_lora(uint64_t seed) {
  const int r = comm_.rank();
  for (size_t u = 0; u < L_.units.size(); u++) {
    const UnitLayout& ul = L_.units[u];
    if (!ul.train_shard) continue;
    const auto [lo, hi] = shard_range(ul.train_padded, L_.world, r);
    std::fill(w_[u].begin(), w_[u].end(), 0.f);
    for (const TrainEntry& e : ul.train) {
      if (e.which != 'A') continue;  // B = 0
      const auto [b, en] = overlap(e.offset, e.numel, lo, hi);
      if (b == en) continue;
      // The same counter-based values as lora_init on the whole adapter (element-wise RNG).
      LoraAdapter* site = m_.lora_adapter(e.site);
      FRUGAL_CHECK(site != nullptr, "FSDP: no LoRA adapter on ", e.site);
      LoraAdapter tmp(site->r, site->in, site->out, site->scale, site->dropout);
      tmp.layer = site->layer, tmp.site = site->site;
      lora_init(tmp, seed);
      std::memcpy(w_[u].data() + (b - lo), tmp.A.data() + (b - e.offset), (en - b) * sizeof(float));
    }
  }
}

double Fsdp::global_grad_norm() {
  // each rank's fp64 sum of squares (optim's fixed-order chunks), summed over the ranks
  return std::sqrt(comm_.all_reduce_value(grad_sq_sum(params_, m_.backend()), CommOp::Sum));
}

void Fsdp::gather_trainable(int u, float* out) {
  const UnitLayout& ul = L_.units[u];
  if (!ul.train_padded) return;
  comm_.all_gather(std::span<const float>(w_[u].data(), ul.train_shard), std::span<float>(out, ul.train_padded));
}

// ---- gather / bind ---------------------------------------------------------------------------------

void Fsdp::start_gather(int u) {
  if (slots_[u]) return;  // in flight or gathered
  const UnitLayout& ul = L_.units[u];
  auto s = std::make_unique<Slot>();
  s->frozen.allocate(ul.frozen_padded);
  s->rf = comm_.start_all_gather(std::span<const uint8_t>(frozen_[u].data(), ul.frozen_shard),
                                 std::span<uint8_t>(s->frozen.data(), ul.frozen_padded));
  stats_.gathered_bytes += (double)ul.frozen_padded;
  stats_.gathers++;
  if (ul.train_padded) {
    s->train.allocate(ul.train_padded);
    s->rt = comm_.start_all_gather(std::span<const float>(w_[u].data(), ul.train_shard),
                                   std::span<float>(s->train.data(), ul.train_padded));
    stats_.gathered_bytes += 4.0 * (double)ul.train_padded;
    stats_.gathers++;
  }
  slots_[u] = std::move(s);
}

void Fsdp::wait_gather(int u) {
  Slot& s = *slots_[u];
  if (s.ready) return;
  const auto t0 = Clock::now();
  s.rf.wait();
  s.rt.wait();
  const double dt = seconds_since(t0);
  stats_.exposed_comm_seconds += dt;
  if (pos_ == 0) stats_.exposed_first_gather_seconds += dt;
  s.ready = true;
}

void Fsdp::bind(int u, bool with_grads) {
  Slot& s = *slots_[u];
  const UnitLayout& ul = L_.units[u];
  uint8_t* base = s.frozen.data();
  for (const FrozenEntry& e : ul.frozen) {
    uint8_t* p = base + e.offset;
    if (u == L_.embed_unit()) {
      m_.embed.view(reinterpret_cast<bf16*>(p), e.bytes / 2);
    } else if (u == L_.head_unit()) {
      if (e.part == FrozenPart::F32) m_.norm.w.view(reinterpret_cast<float*>(p), e.bytes / 4);
      else m_.lm_head_w.view(reinterpret_cast<bf16*>(p), e.bytes / 2);
    } else {
      LlamaBlock& blk = m_.blocks[u - 1];
      if (e.part == FrozenPart::F32) {
        NormParam& np = e.tensor == blk.ln1.name ? blk.ln1 : blk.ln2;
        FRUGAL_CHECK(e.tensor == np.name, "FSDP: unit ", ul.name, " has no norm ", e.tensor);
        np.w.view(reinterpret_cast<float*>(p), e.bytes / 4);
        continue;
      }
      LinearSite* site = nullptr;
      for (LinearSite* c : blk.sites())
        if (c->name == e.tensor) site = c;
      FRUGAL_CHECK(site != nullptr, "FSDP: unit ", ul.name, " names ", e.tensor, ", which the model does not have");
      quant::NF4Tensor& q = site->W.q;
      switch (e.part) {
        case FrozenPart::BF16: site->W.w.view(reinterpret_cast<bf16*>(p), e.bytes / 2); break;
        case FrozenPart::NF4Codes: q.packed.view(p, e.bytes); break;
        case FrozenPart::NF4Absmax: q.absmax.view(reinterpret_cast<float*>(p), e.bytes / 4); break;
        case FrozenPart::NF4AbsmaxQ: q.absmax_q.view(p, e.bytes); break;
        case FrozenPart::NF4Nested: q.nested_absmax.view(reinterpret_cast<float*>(p), e.bytes / 4); break;
        case FrozenPart::NF4Offset: std::memcpy(&q.offset, p, 4); break;
        default: fail("FSDP: unexpected part ", frozen_part_name(e.part), " of ", e.tensor);
      }
    }
  }
  if (ul.train_padded) {
    float* gbase = nullptr;
    if (with_grads) {
      FRUGAL_CHECK(!gif_.count(u), "FSDP: unit ", ul.name, " grads still in flight");
      auto& g = gif_[u];
      g = std::make_unique<GradFlight>();
      g->full.assign(ul.train_padded, 0.f);
      gbase = g->full.data();
    }
    for (const TrainEntry& e : ul.train) {
      if (e.dense()) {
        bind_dense(u, e, s.train.data() + e.offset, s);
        continue;
      }
      LoraAdapter* a = m_.lora_adapter(e.site);
      FRUGAL_CHECK(a != nullptr, "FSDP: no LoRA adapter on ", e.site);
      Buf<float>& w = e.which == 'A' ? a->A : a->B;
      Buf<float>& g = e.which == 'A' ? a->dA : a->dB;
      w.view(s.train.data() + e.offset, e.numel);
      if (gbase) g.view(gbase + e.offset, e.numel);
    }
  }
  s.bound = true;
  s.grads = with_grads;
}

// A dense trainable bound to its gathered fp32 master w [numel]: a norm computes with it directly;
// a bf16 tensor (embedding, lm_head, linear) with its bf16 compute copy round(w), as
// LlamaModel::sync_trainables makes it on one process. Its gradient is the model's own full-size
// buffer (set_trainable), reduce-scattered by reduce_dense_grads.
void Fsdp::bind_dense(int u, const TrainEntry& e, float* w, Slot& s) {
  if (u == L_.head_unit() && e.site == m_.norm.name) return m_.norm.w.view(w, e.numel);
  if (u != L_.embed_unit() && u != L_.head_unit()) {
    LlamaBlock& blk = m_.blocks[u - 1];
    if (e.site == blk.ln1.name) return blk.ln1.w.view(w, e.numel);
    if (e.site == blk.ln2.name) return blk.ln2.w.view(w, e.numel);
  }
  avector<bf16>& c = s.bf16_copies.emplace_back(e.numel);
  bf16* d = c.data();
  m_.backend().to_bf16(w, d, e.numel);  // d: [numel] bf16 = round-to-nearest-even(w)
  if (u == L_.embed_unit()) return m_.embed.view(d, e.numel);
  if (u == L_.head_unit()) return m_.lm_head_w.view(d, e.numel);
  for (LinearSite* site : m_.blocks[u - 1].sites())
    if (site->name == e.site) return site->W.w.view(d, e.numel);
  fail("FSDP: unit ", L_.units[u].name, " has a trainable ", e.site, ", which the model does not have");
}

bool Fsdp::lora_grads(int u) const {
  for (const TrainEntry& e : L_.units[u].train)
    if (!e.dense()) return true;
  return false;
}

void Fsdp::reduce_dense_grads() {
  for (const UnitLayout& ul : L_.units) {
    bool any = false;
    for (const TrainEntry& e : ul.train) any = any || e.dense();
    if (!any) continue;
    // full: [train_padded] the unit's dense grads at their offsets (LoRA parts 0), summed over
    // the ranks into this rank's shard
    avector<float> full(ul.train_padded, 0.f), recv(ul.train_shard, 0.f);
    for (const TrainEntry& e : ul.train) {
      if (!e.dense()) continue;
      avector<float>& g = m_.grad(e.site);
      FRUGAL_CHECK(g.size() == e.numel, "FSDP: gradient of ", e.site, " has ", g.size(), " elements, expected ", e.numel);
      std::memcpy(full.data() + e.offset, g.data(), e.numel * sizeof(float));
      m_.backend().zero(g.data(), g.size());
    }
    const auto t0 = Clock::now();
    comm_.reduce_scatter(std::span<const float>(full.data(), ul.train_padded), std::span<float>(recv.data(), ul.train_shard));
    const double dt = seconds_since(t0);
    stats_.exposed_comm_seconds += dt;
    stats_.exposed_reduce_scatter_seconds += dt;
    stats_.reduce_scattered_bytes += 4.0 * (double)ul.train_padded;
    stats_.reduce_scatters++;
    m_.backend().add(g_[ul.index].data(), recv.data(), ul.train_shard);  // shard grad [train_shard] += the sum
  }
}

void Fsdp::unbind(int u) {
  Slot& s = *slots_[u];
  if (!s.bound) return;
  if (u == L_.embed_unit()) {
    m_.embed.reset();
  } else if (u == L_.head_unit()) {
    m_.norm.w.reset();
    m_.lm_head_w.reset();
  } else {
    LlamaBlock& blk = m_.blocks[u - 1];
    blk.ln1.w.reset(), blk.ln2.w.reset();
    for (LinearSite* c : blk.sites()) {
      c->W.w.reset();
      c->W.q.packed.reset(), c->W.q.absmax.reset(), c->W.q.absmax_q.reset(), c->W.q.nested_absmax.reset();
      if (c->lora) c->lora->A.reset(), c->lora->B.reset(), c->lora->dA.reset(), c->lora->dB.reset();
    }
  }
  s.bound = false;
}

void Fsdp::finish_reduce_scatter(int u) {
  auto it = gif_.find(u);
  if (it == gif_.end() || !it->second->req.valid()) return;
  const auto t0 = Clock::now();
  it->second->req.wait();
  const double dt = seconds_since(t0);
  stats_.exposed_comm_seconds += dt;
  stats_.exposed_reduce_scatter_seconds += dt;
  float* g = g_[u].data();
  const float* r = it->second->recv.data();
  for (size_t i = 0; i < g_[u].size(); i++) g[i] += r[i];
  gif_.erase(it);
}

void Fsdp::free_unit(int u) {
  if (!slots_[u]) return;
  unbind(u);
  slots_[u].reset();
}

bool Fsdp::needed_soon(int u) const {
  for (size_t q = pos_; q < sched_.size() && q <= pos_ + (size_t)opt_.prefetch; q++)
    for (int v : sched_[q])
      if (v == u) return true;
  if (backward_pass_ && pos_ > 0)
    for (int v : next_pass_units(L_, sched_, pos_ - 1, opt_.prefetch))
      if (v == u) return true;
  return false;
}

// ---- hooks ------------------------------------------------------------------------------------------

void Fsdp::begin_pass(bool backward) {
  sched_ = fsdp_schedule(L_, backward);
  backward_pass_ = backward;
  pos_ = 0;
  // units left gathered by a previous pass that this one does not start with
  for (size_t u = 0; u < slots_.size(); u++)
    if (slots_[u] && !needed_soon((int)u)) {
      slots_[u]->rf.wait(), slots_[u]->rt.wait();
      free_unit((int)u);
    }
}

void Fsdp::acquire(int unit) {
  FRUGAL_CHECK(pos_ < sched_.size() && sched_[pos_][0] == unit, "FSDP: the model acquired unit ", unit,
               " where the schedule expects ", pos_ < sched_.size() ? std::to_string(sched_[pos_][0]) : "the end");
  const bool in_backward = this->in_backward();
  for (int u : sched_[pos_]) start_gather(u);
  // prefetch the next steps while this one computes
  for (size_t q = pos_ + 1; q < sched_.size() && q <= pos_ + (size_t)opt_.prefetch; q++)
    for (int u : sched_[q]) start_gather(u);
  // near the end of a training pass: the first (frozen-only) units of the next pass
  if (backward_pass_)
    for (int u : next_pass_units(L_, sched_, pos_, opt_.prefetch)) start_gather(u);
  for (int u : sched_[pos_]) {
    wait_gather(u);
    // a unit kept from the forward (bound without grads) is rebound with grad views in backward
    if (slots_[u]->bound && in_backward && !slots_[u]->grads && lora_grads(u)) unbind(u);
    if (!slots_[u]->bound) bind(u, in_backward && lora_grads(u));
  }
}

void Fsdp::release(int unit) {
  FRUGAL_CHECK(pos_ < sched_.size() && sched_[pos_][0] == unit, "FSDP: the model released unit ", unit, " out of order");
  const bool in_backward = this->in_backward();
  const FsdpStep step = sched_[pos_];
  pos_++;
  for (int u : step) {
    if (in_backward && lora_grads(u)) {
      // this unit's LoRA grads are complete: reduce-scatter them to their owners; the previous
      // unit's reduce-scatter has had this unit's whole backward to finish
      std::vector<int> older;
      for (auto& [v, g] : gif_)
        if (v != u) older.push_back(v);
      for (int v : older) finish_reduce_scatter(v);
      GradFlight& g = *gif_.at(u);
      const UnitLayout& ul = L_.units[u];
      g.recv.assign(ul.train_shard, 0.f);
      unbind(u);  // drops the dA/dB views; g.full stays alive until the reduce-scatter is done
      g.req = comm_.start_reduce_scatter(std::span<const float>(g.full.data(), ul.train_padded),
                                         std::span<float>(g.recv.data(), ul.train_shard));
      stats_.reduce_scattered_bytes += 4.0 * (double)ul.train_padded;
      stats_.reduce_scatters++;
    }
    if (!needed_soon(u)) free_unit(u);
  }
}

void Fsdp::end_pass() {
  std::vector<int> pending;
  for (auto& [u, g] : gif_) pending.push_back(u);
  for (int u : pending) finish_reduce_scatter(u);
  // units gathered ahead for the next pass stay (in flight); begin_pass frees them if the next
  // pass does not start with them
  std::vector<int> carried;
  if (backward_pass_ && !sched_.empty()) carried = next_pass_units(L_, sched_, sched_.size() - 1, opt_.prefetch);
  for (size_t u = 0; u < slots_.size(); u++)
    if (slots_[u] && std::find(carried.begin(), carried.end(), (int)u) == carried.end()) {
      wait_gather((int)u);
      free_unit((int)u);
    }
  sched_.clear();
  pos_ = 0;
}

}  // namespace frugal
