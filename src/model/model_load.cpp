// model_load.cpp: LlamaModel::load: config.json + safetensors (single file or sharded index) into
// bf16 embeddings / lm_head, fp32 norm weights and frozen decoder linears (bf16 or NF4 quantized
// at load from the bf16 values). Every tensor's presence and shape is checked; errors name the
// tensor and the file it came from.
#include <filesystem>

#include "src/model/model.h"
#include "src/io/safetensors.h"

namespace frugal {

namespace {
struct Loader {
  const SafetensorsModel& st;
  std::string where;  // the model dir, for tensors that are missing altogether

  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const {
    if (!st.has(name)) fail("missing tensor ", name, " in model ", where);
    const TensorView& t = st.get(name);
    if (t.shape != shape)
      fail("tensor ", name, " in ", t.file, " has shape ", shape_str(t.shape), ", expected ",
           shape_str(shape));
    check_finite(t);  // a NaN/Inf weight would only surface as a NaN loss at step 1
    return t;
  }
  avector<bf16> bf16s(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView& t = get(name, shape);
    avector<bf16> v((size_t)t.numel());
    to_bf16(t, v.data());
    release_mapped_pages(t.data, t.nbytes);  // peak = converted model + one tensor, not + the file
    return v;
  }
  avector<float> floats(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView& t = get(name, shape);
    avector<float> v((size_t)t.numel());
    to_float(t, v.data());
    release_mapped_pages(t.data, t.nbytes);
    return v;
  }
};
}  // namespace

LlamaModel LlamaModel::load(const std::string& dir, const ModelOptions& opt) {
  LlamaConfig cfg = LlamaConfig::load(dir);
  if (cfg.architecture != "LlamaForCausalLM")
    fail("model ", dir, ": architecture ", cfg.architecture, " is not supported (LlamaForCausalLM)");
  // Names and shapes come from skeleton(): the one list of the model's tensors.
  LlamaModel m = skeleton(cfg, opt);
  SafetensorsModel st(dir);
  Loader ld{st, dir};
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size;

  m.embed = ld.bf16s("model.embed_tokens.weight", {V, C});
  if (!cfg.tie_word_embeddings) m.lm_head_w = ld.bf16s("lm_head.weight", {V, C});
  m.norm.w = ld.floats(m.norm.name, {C});
  for (LlamaBlock& b : m.blocks) {
    b.ln1.w = ld.floats(b.ln1.name, {C});
    b.ln2.w = ld.floats(b.ln2.name, {C});
    for (LinearSite* s : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
      const int64_t out = s->W.out, in = s->W.in;  // [out, in] as skeleton() set them
      avector<bf16> w = ld.bf16s(s->name, {out, in});  // one bf16 tensor at a time, quantized right away
      if (opt.quant == QuantMode::NF4)
        s->W = FrozenWeight::quantize_nf4(w.data(), out, in, opt.nf4_blocksize, opt.nf4_double_quant);
      else
        s->W = FrozenWeight::from_bf16(std::move(w), out, in);
    }
  }
  return m;
}

LlamaModel LlamaModel::skeleton(const LlamaConfig& cfg, const ModelOptions& opt) {
  FRUGAL_CHECK(opt.nf4_blocksize > 0, "nf4 blocksize ", opt.nf4_blocksize);
  LlamaModel m(cfg, opt);
  m.norm.name = "model.norm.weight";
  auto linear = [&](LinearSite& s, const std::string& name, int64_t out, int64_t in) {
    s.name = name;
    s.W.out = out, s.W.in = in;
    if (opt.quant == QuantMode::NF4) {
      s.W.kind = FrozenWeight::Kind::NF4;
      s.W.q.shape = {out, in};
      s.W.q.numel = out * in;
      s.W.q.blocksize = opt.nf4_blocksize;
      s.W.q.double_quant = opt.nf4_double_quant;
    } else {
      s.W.kind = FrozenWeight::Kind::BF16;
    }
  };
  m.blocks.resize(cfg.num_hidden_layers);
  for (int i = 0; i < cfg.num_hidden_layers; i++) {
    LlamaBlock& b = m.blocks[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    b.ln1.name = p + "input_layernorm.weight";
    b.ln2.name = p + "post_attention_layernorm.weight";
    const auto shapes = llama_block_linears(cfg, i);
    const auto sites = b.sites();
    for (size_t si = 0; si < sites.size(); si++) linear(*sites[si], shapes[si].name, shapes[si].out, shapes[si].in);
  }
  return m;
}

}  // namespace frugal
