// galore.cpp: GaLore-AdamW (see galore.h for the math; galore_torch adamw.py + galore_projector.py).
// Per tensor (a ParamRef's pieces, or the whole param): targets step their moments in the projected
// shape (galore_projector.h), everything else gets the same transformers-style AdamW elementwise.
// galore.moments = "int8": each tensor's m and v live in quant::Blockwise8Vector (8-bit blocks of
// the stored moment tensor's global index, ragged ends fp32); a step dequantizes them into shared
// fp32 scratch, runs the fp32 update above unchanged and requantizes them.
#include "src/train/galore.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>

namespace frugal {

void GaloreConfig::validate(const std::string& where) const {
  if (rank < 1) fail(where, ": galore.rank must be >= 1, got ", rank);
  if (update_proj_gap < 1) fail(where, ": galore.update_proj_gap must be >= 1, got ", update_proj_gap);
  if (!(scale > 0.f) || !std::isfinite(scale)) fail(where, ": galore.scale must be > 0, got ", scale);
  if (proj_type != "std" && proj_type != "reverse_std" && proj_type != "left" && proj_type != "right" &&
      proj_type != "full")
    fail(where, ": galore.proj_type '", proj_type, "' (expected std, reverse_std, left, right or full)");
  if (targets.empty()) fail(where, ": galore.targets must list at least one module substring");
  for (const std::string& t : targets)
    if (t.empty()) fail(where, ": galore.targets has an empty entry");
  if (svd != "exact" && svd != "randomized") fail(where, ": galore.svd '", svd, "' (expected exact or randomized)");
  if (oversample < 0) fail(where, ": galore.oversample must be >= 0, got ", oversample);
  if (power_iters < 0) fail(where, ": galore.power_iters must be >= 0, got ", power_iters);
  if (moments != "fp32" && moments != "int8") fail(where, ": galore.moments '", moments, "' (expected fp32 or int8)");
}

bool galore_is_target(const GaloreConfig& c, const std::string& name, const std::vector<int64_t>& shape) {
  if (shape.size() != 2) return false;
  const bool is_lora = name.find("lora_A") != std::string::npos || name.find("lora_B") != std::string::npos;
  for (const std::string& t : c.targets) {
    if (t == "lora") {
      if (is_lora) return true;
    } else if (!is_lora && name.find(t) != std::string::npos) {
      return true;
    }
  }
  return false;
}

namespace {

// One rank's moments of a tensor: the range [begin, end) it holds of the stored moment tensor (a
// target's LowRankPart, else the piece's elements) and whether they are 8-bit (int8 and a stored
// tensor of at least kBlockwise8MinNumel elements, as bitsandbytes' min_8bit_size).
struct MomentRange {
  size_t begin = 0, end = 0;
  bool quantized = false;
};
MomentRange moment_range(const GaloreConfig& c, const ParamPiece& pc, const LowRankPart* part) {
  const size_t numel = (size_t)shape_numel(part ? part->shape : pc.shape);
  const bool q = c.moments == "int8" && numel >= quant::kBlockwise8MinNumel;
  return part ? MomentRange{part->begin, part->end, q} : MomentRange{pc.begin, pc.end, q};
}

}  // namespace

size_t galore_held_state_bytes(const GaloreConfig& c, const ParamPiece& pc, int world, int rank) {
  if (!galore_is_target(c, pc.name, pc.shape)) {
    const MomentRange mr = moment_range(c, pc, nullptr);
    return 2 * quant::Blockwise8Vector::bytes_for(mr.begin, mr.end, mr.quantized);
  }
  const MatrixSplit split{pc.shape[0], pc.shape[1], pc.cuts, rank};
  const ProjSide side = galore_side(c.proj_type, pc.shape[0], pc.shape[1]);
  const int r = galore_effective_rank(c.rank, pc.shape[0], pc.shape[1]);
  const LowRankPart part = galore_low_rank_part(side, r, split, world);
  const MomentRange mr = moment_range(c, pc, &part);
  size_t b = 2 * quant::Blockwise8Vector::bytes_for(mr.begin, mr.end, mr.quantized);
  for (const ProjectorPart& q : galore_projector_parts(side, r, split)) b += (q.end - q.begin) * sizeof(float);
  return b;
}

size_t galore_state_bytes(const GaloreConfig& c, const std::string& name, const std::vector<int64_t>& shape) {
  const size_t n = (size_t)shape_numel(shape);
  return galore_held_state_bytes(c, ParamPiece{name, shape, 0, n, 0, {0, n}}, 1, 0);  // one holder: the whole
}

struct GaloreAdamW::TensorState {
  bool target = false;
  std::vector<int64_t> shape;
  MatrixSplit split;              // targets
  ProjSide side = ProjSide::Right;
  int r = 0;                      // effective rank: min(rank, m, n)
  LowRankPart part;               // targets: the moments' shape and this rank's range
  GaloreProjector proj;
  // 1: refresh at the next step whatever its number (no projector yet, or a refresh met an
  // all-zero gradient); 0: refresh at steps 0, T, 2T... A float so that a checkpoint holds it
  // ("galore_pending" [1]): a projector loaded with it is only used when it was computed.
  float pending = 1.f;
  int64_t step = -1;              // galore_torch's state["step"]; -1: not known yet (take t())
  int64_t refreshed_for = -1;     // the step whose refresh ran (refresh_projectors), so not again
  // m (signed map), v (unsigned map): [part.size()] for targets, [this rank's elements] otherwise
  quant::Blockwise8Vector m, v;
  // fp32 staging of 8-bit moments for a checkpoint, [m.size()] each, from state_parts to
  // end_state_io (empty otherwise)
  avector<float> m_io, v_io;
};

bool GaloreAdamW::refreshes_at(const TensorState& s, int64_t step) const {
  return s.pending != 0.f || !s.proj.valid() || step % gc_.update_proj_gap == 0;
}

bool GaloreAdamW::refresh_due(const TensorState& s) const {
  return refreshes_at(s, s.step) && s.refreshed_for != s.step;
}

void GaloreAdamW::note_refresh(TensorState& s, bool ok) {
  s.pending = ok ? 0.f : 1.f;  // a zero gradient: retried at the next step
  s.refreshed_for = s.step;
  stats_.refreshes += ok;
}

GaloreAdamW::GaloreAdamW(const AdamWConfig& adamw, const GaloreConfig& g, Communicator& comm, uint64_t seed,
                         Backend& be)
    : cfg_(adamw), gc_(g), comm_(&comm), seed_(seed), be_(&be) {
  gc_.validate("galore_adamw");
  FRUGAL_CHECK(adamw.beta1 >= 0.f && adamw.beta1 < 1.f, "GaLore-AdamW beta1 must be in [0, 1), got ", adamw.beta1);
  FRUGAL_CHECK(adamw.beta2 >= 0.f && adamw.beta2 < 1.f, "GaLore-AdamW beta2 must be in [0, 1), got ", adamw.beta2);
  FRUGAL_CHECK(adamw.eps >= 0.f, "GaLore-AdamW eps must be >= 0, got ", adamw.eps);
  FRUGAL_CHECK(adamw.weight_decay >= 0.f, "GaLore-AdamW weight_decay must be >= 0, got ", adamw.weight_decay);
}

GaloreAdamW::~GaloreAdamW() = default;

// The split of a 2-D tensor as this rank holds it (param_pieces): a whole-param piece (two cuts)
// has one holder, this process (index 0); a shard piece has every rank's cut.
static MatrixSplit split_of(const ParamPiece& pc, int rank) {
  return MatrixSplit{pc.shape[0], pc.shape[1], pc.cuts, pc.cuts.size() == 2 ? 0 : rank};
}

// The state of a tensor, created at its first sight (a step or a checkpoint's state_parts): whether
// it is a target and, if so, its side, rank and this rank's part of the moments.
GaloreAdamW::TensorState& GaloreAdamW::state_of(const ParamPiece& tv) {
  std::unique_ptr<TensorState>& sp = state_[tv.name];
  if (!sp) sp = std::make_unique<TensorState>();
  TensorState& s = *sp;
  if (s.shape.empty()) {
    s.shape = tv.shape;
    s.target = galore_is_target(gc_, tv.name, tv.shape);
    if (s.target) {
      s.split = split_of(tv, comm_->rank());
      s.side = galore_side(gc_.proj_type, tv.shape[0], tv.shape[1]);
      s.r = galore_effective_rank(gc_.rank, tv.shape[0], tv.shape[1]);
      s.part = galore_low_rank_part(s.side, s.r, s.split, comm_->world());
    }
    const MomentRange mr = moment_range(gc_, tv, s.target ? &s.part : nullptr);
    s.m.reset(mr.begin, mr.end, mr.quantized, /*is_signed=*/true);
    s.v.reset(mr.begin, mr.end, mr.quantized, /*is_signed=*/false);
  }
  return s;
}

std::vector<OptimStateTensor> GaloreAdamW::state(const std::string& param) {
  fail("GaLore-AdamW: no elementwise state tensors for '", param, "': its moments (projected shapes, 8-bit blocks "
       "under galore.moments = \"int8\") go through state_parts");
}

void GaloreAdamW::end_io(TensorState& s, bool loaded, const std::string& name) {
  if (s.m_io.empty()) return;
  if (loaded) {
    s.m.set(s.m_io.data(), name + " (m)");
    s.v.set(s.v_io.data(), name + " (v)");
  }
  avector<float>().swap(s.m_io);
  avector<float>().swap(s.v_io);
}

void GaloreAdamW::end_state_io(bool loaded) {
  for (auto& [name, s] : state_) end_io(*s, loaded, name);
}

void GaloreAdamW::step(const std::vector<ParamRef>& params, float lr) {
  begin_step();
  refresh_projectors(params);
  for (const ParamRef& p : params) step_param(p, lr);
}

void GaloreAdamW::refresh_projectors(const std::vector<ParamRef>& params) {
  if (comm_->backend() != "self") return;  // sharded: collectives, taken in order by step_param
  std::vector<ParamPiece> tvs;
  std::vector<const float*> gs;
  std::vector<TensorState*> ss;
  for (const ParamRef& p : params) {
    if (!p.g) continue;
    for (const ParamPiece& tv : param_pieces(p)) {
      TensorState& s = state_of(tv);
      if (s.step < 0) s.step = t_before_;
      if (!s.target || !refresh_due(s)) continue;
      tvs.push_back(tv), gs.push_back(p.g + tv.offset), ss.push_back(&s);
    }
  }
  if (ss.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  const ProjectorOptions po{gc_.rank, gc_.svd, gc_.oversample, gc_.power_iters, seed_};
  std::vector<char> ok(ss.size(), 0);
  std::exception_ptr err;
  // one tensor per thread; inside, oneDNN and LAPACK run single-threaded (no nested parallelism),
  // so a projector does not depend on the thread count or on which tensors share the loop
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < ss.size(); i++) {
    try {
      ok[i] = galore_refresh(ss[i]->proj, ss[i]->side, ss[i]->split, gs[i], po, tvs[i].name, ss[i]->step, *comm_, *be_);
    } catch (...) {
#pragma omp critical(galore_refresh_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  for (size_t i = 0; i < ss.size(); i++) note_refresh(*ss[i], ok[i]);
  stats_.refresh_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GaloreAdamW::begin_step() {
  t_before_ = t_;
  t_ += 1;
}

bool GaloreAdamW::needs_full_grad(const ParamRef& p) {
  for (const ParamPiece& tv : param_pieces(p)) {
    TensorState& s = state_of(tv);
    const int64_t step = s.step < 0 ? t_ : s.step;  // before begin_step: the coming step's number
    if (!s.target || refreshes_at(s, step)) return true;
  }
  return false;
}

size_t GaloreAdamW::projected_numel(const ParamRef& p) {
  FRUGAL_CHECK(p.pieces.empty(), "GaLore-AdamW: projected_numel of the sharded param ", p.name);
  TensorState& s = state_of(param_pieces(p)[0]);
  FRUGAL_CHECK(s.target, "GaLore-AdamW: ", p.name, " is not a GaLore target");
  return s.part.size();
}

void GaloreAdamW::project_grad(const ParamRef& p, float* lo) {
  FRUGAL_CHECK(p.pieces.empty() && p.g, "GaLore-AdamW: project_grad needs a whole param with a gradient (", p.name, ")");
  TensorState& s = state_of(param_pieces(p)[0]);
  FRUGAL_CHECK(s.target && s.proj.valid(), "GaLore-AdamW: project_grad of ", p.name, " without a projector");
  galore_acquire(s.proj, s.split, *comm_);
  galore_project(s.proj, s.split, p.g, lo, *comm_, *be_);
  galore_release(s.proj);  // the micro-batches of a step would otherwise hold every whole projector
}

void GaloreAdamW::step_param(const ParamRef& p, float lr, const float* lo_given) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const double b1 = cfg_.beta1, b2 = cfg_.beta2, dlr = lr;
  // fp32 scalars as torch gets them from Python floats (galore_torch adamw.py)
  const float beta1 = (float)b1, a1 = (float)(1.0 - b1), beta2 = (float)b2, a2 = (float)(1.0 - b2);
  const float eps = cfg_.eps;
  const float wd_alpha = (float)(-dlr * (double)cfg_.weight_decay);
  ProjectorOptions po{gc_.rank, gc_.svd, gc_.oversample, gc_.power_iters, seed_};

  if (p.numel > 0 && (!p.w || (!p.g && !lo_given))) fail("GaLore-AdamW: param '", p.name, "' has no weight or gradient buffer");
  FRUGAL_CHECK(!lo_given || p.pieces.empty(), "GaLore-AdamW: a projected gradient for the sharded param ", p.name);
  for (const ParamPiece& tv : param_pieces(p)) {
    TensorState& s = state_of(tv);
    if (s.step < 0) s.step = t_before_;
    const size_t count = tv.end - tv.begin;  // this rank's elements of the tensor
    const size_t nmom = s.target ? s.part.size() : count;
    FRUGAL_CHECK(s.m.size() == nmom && s.v.size() == nmom, "GaLore-AdamW: optimizer state of '", tv.name,
                 "' has ", s.m.size(), "/", s.v.size(), " elements, expected ", nmom);
    end_io(s, /*loaded=*/true, tv.name);  // staging a loader filled without end_state_io (exact either way)
    float* w = p.w + tv.offset;
    const float* g = p.g ? p.g + tv.offset : nullptr;

    // the gradient the moments see: projected (targets) or as is
    const float* gm = g;
    if (lo_given) {
      FRUGAL_CHECK(s.target && !refreshes_at(s, s.step),
                   "GaLore-AdamW: a projected gradient for ", tv.name, " at a step that refreshes its projector");
      galore_acquire(s.proj, s.split, *comm_);  // project_back needs the whole right projector
      gm = lo_given;
    } else if (s.target) {
      if (refresh_due(s)) {  // not done by refresh_projectors
        const auto r0 = clock::now();
        note_refresh(s, galore_refresh(s.proj, s.side, s.split, g, po, tv.name, s.step, *comm_, *be_));
        stats_.refresh_seconds += std::chrono::duration<double>(clock::now() - r0).count();
      }
      lo_.assign(nmom, 0.f);  // no projector yet: G was zero everywhere, so is its projection
      if (s.proj.valid()) {
        galore_acquire(s.proj, s.split, *comm_);  // the whole right projector for this step
        galore_project(s.proj, s.split, g, lo_.data(), *comm_, *be_);
      }
      gm = lo_.data();
    }
    s.step += 1;
    const double bc1 = 1.0 - std::pow(b1, (double)s.step), bc2 = 1.0 - std::pow(b2, (double)s.step);
    const float neg_step = (float)(-(dlr * std::sqrt(bc2) / bc1));
    nrm_.resize(nmom);
    // 8-bit moments: dequantized into the shared scratch for the fp32 update, requantized after it
    const bool q8 = s.m.has_blocks();
    float* m = s.m.fp32();
    float* v = s.v.fp32();
    if (q8) {
      m8_.resize(nmom), v8_.resize(nmom);
      s.m.get(m8_.data()), s.v.get(v8_.data());
      m = m8_.data(), v = v8_.data();
    }
    for (size_t e = 0; e < nmom; ++e) {
      m[e] = m[e] * beta1 + a1 * gm[e];
      v[e] = v[e] * beta2 + a2 * gm[e] * gm[e];
      nrm_[e] = m[e] / (std::sqrt(v[e]) + eps);
    }
    if (q8) s.m.set(m, tv.name + " (m)"), s.v.set(v, tv.name + " (v)");
    if (!s.target) {
      for (size_t e = 0; e < count; ++e) w[e] += neg_step * nrm_[e];
    } else if (s.proj.valid()) {
      // galore_torch: p += -step_size · (project_back(n) · scale); scale folded into alpha
      galore_project_back_add(s.proj, s.split, nrm_.data(), neg_step * gc_.scale, w, *comm_, *be_);
      galore_release(s.proj);
    }
    if (cfg_.weight_decay > 0.f)
      for (size_t e = 0; e < count; ++e) w[e] += wd_alpha * w[e];
  }
  stats_.step_seconds += std::chrono::duration<double>(clock::now() - t0).count();
}

std::vector<OptimStatePart> GaloreAdamW::state_parts(const std::vector<ParamRef>& params) {
  std::vector<OptimStatePart> out;
  for (const ParamRef& p : params) {
    for (const ParamPiece& tv : param_pieces(p)) {
      TensorState& s = state_of(tv);
      // the moments as fp32: 8-bit ones dequantized into staging (kept when already there: a second
      // call before end_state_io must not drop what a load wrote)
      float* m = s.m.fp32();
      float* v = s.v.fp32();
      if (s.m.has_blocks()) {
        if (s.m_io.empty()) {
          s.m_io.resize(s.m.size()), s.v_io.resize(s.v.size());
          s.m.get(s.m_io.data()), s.v.get(s.v_io.data());
        }
        m = s.m_io.data(), v = s.v_io.data();
      }
      if (!s.target) {
        out.push_back({"m", tv.name, tv.shape, tv.begin, tv.end, tv.begin, tv.end, m});
        out.push_back({"v", tv.name, tv.shape, tv.begin, tv.end, tv.begin, tv.end, v});
        continue;
      }
      const LowRankPart& lp = s.part;
      out.push_back({"m", tv.name, lp.shape, lp.begin, lp.end, lp.write_begin, lp.write_end, m});
      out.push_back({"v", tv.name, lp.shape, lp.begin, lp.end, lp.write_begin, lp.write_end, v});
      // the projector as stored (zeros before the first refresh: `pending` says it is not one yet)
      if (!s.proj.valid()) galore_projector_alloc(s.proj, s.side, s.r, s.split);
      for (const ProjectorPart& q : galore_projector_parts(s.side, s.r, s.split)) {
        avector<float>& buf = q.state[5] == 'r' ? s.proj.right : s.proj.left;  // proj_right / proj_left
        out.push_back({q.state, tv.name, q.shape, q.begin, q.end, q.write_begin, q.write_end, buf.data()});
      }
      const size_t w1 = comm_->rank() == 0 ? 1 : 0;  // replicated; rank 0 writes it
      out.push_back({"galore_pending", tv.name, {1}, 0, 1, 0, w1, &s.pending});
    }
  }
  return out;
}

size_t GaloreAdamW::state_bytes() const {
  size_t b = 0;
  for (const auto& [name, s] : state_) {
    b += s->m.bytes() + s->v.bytes();  // 8-bit blocks, their absmax, fp32 ends (not the checkpoint staging)
    if (s->target) {
      // the projector as it will be held (also before the first refresh allocates it)
      for (const ProjectorPart& q : galore_projector_parts(s->side, s->r, s->split))
        b += (q.end - q.begin) * sizeof(float);
    }
  }
  return b;
}

}  // namespace frugal
