// layout.cpp: FSDP unit layout (see layout.h).
#include "sharding/layout.h"

#include <algorithm>

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
  void add_train(const std::string& site, char which, std::vector<int64_t> shape) {
    TrainEntry e;
    e.name = peft_lora_name(site, which);
    e.site = site;
    e.which = which;
    e.numel = (size_t)(shape[0] * shape[1]);
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

ModelLayout make_model_layout(const LlamaConfig& cfg, const ModelOptions& opt, const LoraConfig* lora, int world) {
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
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size;
  const int L = cfg.num_hidden_layers;

  auto bf16_bytes = [](int64_t n) { return (size_t)n * 2; };
  {
    UnitBuilder b{{}, m.align};
    b.u.index = 0;
    b.u.name = "embed";
    b.add("model.embed_tokens.weight", FrozenPart::BF16, {V, C}, bf16_bytes(V * C));
    b.finish(world);
    m.units.push_back(std::move(b.u));
  }
  const auto& sites = lora_site_names();
  for (int l = 0; l < L; l++) {
    UnitBuilder b{{}, m.align};
    b.u.index = 1 + l;
    b.u.name = "layers." + std::to_string(l);
    const std::string p = "model.layers." + std::to_string(l) + ".";
    b.add(p + "input_layernorm.weight", FrozenPart::F32, {C}, (size_t)C * 4);
    b.add(p + "post_attention_layernorm.weight", FrozenPart::F32, {C}, (size_t)C * 4);
    const auto lin = llama_block_linears(cfg, l);
    for (const LinearShape& ls : lin) {
      const std::string& name = ls.name;
      const int64_t n = ls.out * ls.in;
      const std::vector<int64_t> shape = {ls.out, ls.in};
      if (opt.quant == QuantMode::NF4) {
        const int64_t nb = (n + opt.nf4_blocksize - 1) / opt.nf4_blocksize;
        b.add(name, FrozenPart::NF4Codes, shape, (size_t)(n + 1) / 2);
        if (opt.nf4_double_quant) {
          b.add(name, FrozenPart::NF4AbsmaxQ, shape, (size_t)nb);
          b.add(name, FrozenPart::NF4Nested, shape, (size_t)((nb + 255) / 256) * 4);
          b.add(name, FrozenPart::NF4Offset, shape, 4);
        } else {
          b.add(name, FrozenPart::NF4Absmax, shape, (size_t)nb * 4);
        }
      } else {
        b.add(name, FrozenPart::BF16, shape, bf16_bytes(n));
      }
    }
    if (m.has_lora) {
      const int64_t r = m.lora.rank;
      for (size_t si = 0; si < sites.size(); si++) {
        if (std::find(m.lora.target_modules.begin(), m.lora.target_modules.end(), sites[si]) ==
            m.lora.target_modules.end())
          continue;
        b.add_train(lin[si].name, 'A', {r, lin[si].in});
        b.add_train(lin[si].name, 'B', {lin[si].out, r});
      }
    }
    b.finish(world);
    m.units.push_back(std::move(b.u));
  }
  {
    UnitBuilder b{{}, m.align};
    b.u.index = L + 1;
    b.u.name = "head";
    b.add("model.norm.weight", FrozenPart::F32, {C}, (size_t)C * 4);
    if (!cfg.tie_word_embeddings) b.add("lm_head.weight", FrozenPart::BF16, {V, C}, bf16_bytes(V * C));
    b.finish(world);
    m.units.push_back(std::move(b.u));
  }
  return m;
}

}  // namespace frugal
