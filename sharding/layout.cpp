// layout.cpp: FSDP unit layout (see layout.h).
#include "sharding/layout.h"

#include <algorithm>

#include "src/model/tensors.h"

namespace frugal {

const char* frozen_part_name(FrozenPart p) {
  switch (p) {
    case FrozenPart::BF16: return "bf16";
    case FrozenPart::F32: return "f32";
    case FrozenPart::NF4Codes: return "nf4_codes";
    case FrozenPart::NF4Absmax: return "nf4_absmax";
    case FrozenPart::NF4AbsmaxQ: return "nf4_absmax_q";
    case FrozenPart::NF4Nested: return "nf4_nested_absmax";
    case FrozenPart::NF4Offset: return "nf4_offset";
  }
  return "?";
}

const FrozenEntry* UnitLayout::find(const std::string& tensor, FrozenPart part) const {
  for (const auto& e : frozen)
    if (e.tensor == tensor && e.part == part) return &e;
  return nullptr;
}

size_t ModelLayout::max_frozen_padded() const {
  size_t m = 0;
  for (const auto& u : units) m = std::max(m, u.frozen_padded);
  return m;
}
size_t ModelLayout::max_train_padded() const {
  size_t m = 0;
  for (const auto& u : units) m = std::max(m, u.train_padded);
  return m;
}
size_t ModelLayout::total_frozen_shard() const {
  size_t s = 0;
  for (const auto& u : units) s += u.frozen_shard;
  return s;
}
size_t ModelLayout::total_train_shard() const {
  size_t s = 0;
  for (const auto& u : units) s += u.train_shard;
  return s;
}
size_t ModelLayout::total_train_numel() const {
  size_t s = 0;
  for (const auto& u : units) s += u.train_numel;
  return s;
}

namespace {
size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

struct UnitBuilder {
  UnitLayout u;
  size_t align;
  void add(const std::string& tensor, FrozenPart part, std::vector<int64_t> shape, size_t bytes) {
    FrozenEntry e{tensor, part, std::move(shape), round_up(u.frozen_bytes, align), bytes};
    u.frozen_bytes = e.offset + e.bytes;
    u.frozen.push_back(std::move(e));
  }
  // which: 'A' / 'B' (LoRA of the linear `site`, PEFT name) or 'W' (the dense tensor `site` itself)
  void add_train(const std::string& site, char which, std::vector<int64_t> shape) {
    TrainEntry e;
    e.name = which == 'W' ? site : peft_lora_name(site, which);
    e.site = site;
    e.which = which;
    e.numel = (size_t)shape_numel(shape);
    e.shape = std::move(shape);
    e.offset = round_up(u.train_numel, 16);
    u.train_numel = e.offset + e.numel;
    u.train.push_back(std::move(e));
  }
  void finish(int world) {
    u.frozen_padded = round_up(std::max<size_t>(u.frozen_bytes, 1), (size_t)world * align);
    u.frozen_shard = u.frozen_padded / (size_t)world;
    u.train_padded = u.train_numel ? round_up(u.train_numel, (size_t)16 * world) : 0;
    u.train_shard = u.train_padded / (size_t)world;
  }
};
}  // namespace

ModelLayout make_model_layout(const LlamaConfig& cfg, const ModelOptions& opt, const LoraConfig* lora, int world,
                              const std::vector<std::string>& dense) {
  FRUGAL_CHECK(world >= 1, "make_model_layout: world size ", world);
  FRUGAL_CHECK(opt.nf4_blocksize > 0 && (opt.nf4_blocksize & (opt.nf4_blocksize - 1)) == 0,
               "nf4 blocksize ", opt.nf4_blocksize, " is not a power of two");
  ModelLayout m;
  m.cfg = cfg;
  m.opt = opt;
  m.world = world;
  m.align = std::max<size_t>(64, (size_t)opt.nf4_blocksize / 2);
  if (lora) {
    m.has_lora = true;
    m.lora = *lora;
    m.lora.target_modules = LoraConfig::expand_targets(lora->target_modules);
  }
  // Frozen entries from the model's tensor table (src/model/tensors.h), in its (unit) order;
  // dense trainables go to the unit's trainable buffer instead: after the unit's LoRA tensors,
  // in table order (= LlamaModel::trainable_params order).
  const std::vector<ModelTensor> tensors = llama_tensors(cfg);
  for (const std::string& n : dense) {
    bool known = false;
    for (const ModelTensor& t : tensors) known = known || t.name == n;
    FRUGAL_CHECK(known, "make_model_layout: no tensor named '", n, "' to train");
  }
  auto is_dense = [&](const std::string& n) { return std::find(dense.begin(), dense.end(), n) != dense.end(); };
  m.dense = dense;
  const auto& sites = lora_site_names();
  const int L = cfg.num_hidden_layers;
  for (int u = 0; u <= L + 1; u++) {
    UnitBuilder b{{}, m.align};
    b.u.index = u;
    b.u.name = u == 0 ? "embed" : u == L + 1 ? "head" : "layers." + std::to_string(u - 1);
    for (const ModelTensor& t : tensors) {
      if (t.unit != u || is_dense(t.name)) continue;
      const int64_t n = shape_numel(t.shape);
      if (t.kind == TensorKind::Norm) {
        b.add(t.name, FrozenPart::F32, t.shape, (size_t)n * 4);
      } else if (t.kind == TensorKind::Linear && opt.quant == QuantMode::NF4) {
        const int64_t nb = (n + opt.nf4_blocksize - 1) / opt.nf4_blocksize;
        b.add(t.name, FrozenPart::NF4Codes, t.shape, (size_t)(n + 1) / 2);
        if (opt.nf4_double_quant) {
          b.add(t.name, FrozenPart::NF4AbsmaxQ, t.shape, (size_t)nb);
          b.add(t.name, FrozenPart::NF4Nested, t.shape, (size_t)((nb + 255) / 256) * 4);
          b.add(t.name, FrozenPart::NF4Offset, t.shape, 4);
        } else {
          b.add(t.name, FrozenPart::NF4Absmax, t.shape, (size_t)nb * 4);
        }
      } else {
        b.add(t.name, FrozenPart::BF16, t.shape, (size_t)n * 2);
      }
    }
    if (m.has_lora && u >= 1 && u <= L) {
      const auto lin = llama_block_linears(cfg, u - 1);
      const int64_t r = m.lora.rank;
      for (size_t si = 0; si < sites.size(); si++) {
        if (std::find(m.lora.target_modules.begin(), m.lora.target_modules.end(), sites[si]) ==
            m.lora.target_modules.end())
          continue;
        b.add_train(lin[si].name, 'A', {r, lin[si].in});
        b.add_train(lin[si].name, 'B', {lin[si].out, r});
      }
    }
    for (const ModelTensor& t : tensors)
      if (t.unit == u && is_dense(t.name)) b.add_train(t.name, 'W', t.shape);
    b.finish(world);
    m.units.push_back(std::move(b.u));
  }
  return m;
}

std::vector<ParamPiece> unit_pieces(const UnitLayout& u, int world, int rank) {
  const auto [lo, hi] = shard_range(u.train_padded, world, rank);
  std::vector<ParamPiece> out;
  for (const TrainEntry& e : u.train) {
    ParamPiece pc;
    pc.name = e.name;
    pc.shape = e.shape;
    pc.cuts.resize(size_t(world) + 1);
    // cuts[k]: where rank k's shard starts inside the tensor, clamped to [0, numel]
    for (int k = 0; k <= world; k++) {
      const size_t start = u.train_shard * size_t(k);
      pc.cuts[size_t(k)] = start <= e.offset ? 0 : std::min(start - e.offset, e.numel);
    }
    pc.begin = pc.cuts[size_t(rank)];
    pc.end = pc.cuts[size_t(rank) + 1];
    pc.offset = std::min(std::max(e.offset + pc.begin, lo), hi) - lo;
    out.push_back(std::move(pc));
  }
  return out;
}

}  // namespace frugal
