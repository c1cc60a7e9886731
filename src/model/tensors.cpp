// tensors.cpp: the model's tensor table and the trainable selection (see tensors.h).
#include "src/model/tensors.h"

#include "src/common.h"

namespace frugal {

const char* tensor_kind_name(TensorKind k) {
  switch (k) {
    case TensorKind::Embedding: return "embedding";
    case TensorKind::Norm: return "norm";
    case TensorKind::Linear: return "linear";
    case TensorKind::LmHead: return "lm_head";
    case TensorKind::LoraA: return "lora_A";
    case TensorKind::LoraB: return "lora_B";
  }
  return "?";
}

std::string ModelTensor::module() const {
  const std::string suffix = ".weight";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    return name.substr(0, name.size() - suffix.size());
  return name;
}

std::vector<ModelTensor> llama_tensors(const LlamaConfig& cfg) {
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size;
  const int L = cfg.num_hidden_layers;
  std::vector<ModelTensor> t;
  t.push_back({"model.embed_tokens.weight", TensorKind::Embedding, {V, C}, 0});
  for (int l = 0; l < L; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", TensorKind::Norm, {C}, 1 + l});
    t.push_back({p + "post_attention_layernorm.weight", TensorKind::Norm, {C}, 1 + l});
    for (const LinearShape& ls : llama_block_linears(cfg, l))
      t.push_back({ls.name, TensorKind::Linear, {ls.out, ls.in}, 1 + l});
  }
  t.push_back({"model.norm.weight", TensorKind::Norm, {C}, L + 1});
  if (!cfg.tie_word_embeddings) t.push_back({"lm_head.weight", TensorKind::LmHead, {V, C}, L + 1});
  return t;
}

static bool module_matches(const std::string& module, const std::string& entry) {
  if (module == entry) return true;
  return module.size() > entry.size() && module.compare(module.size() - entry.size(), entry.size(), entry) == 0 &&
         module[module.size() - entry.size() - 1] == '.';
}

std::vector<ModelTensor> select_trainable(const LlamaConfig& cfg, const std::string& mode,
                                         const std::vector<std::string>& modules) {
  if (mode != "lora" && mode != "full") fail("train.mode = \"", mode, "\": expected \"lora\" or \"full\"");
  const std::vector<ModelTensor> all = llama_tensors(cfg);
  std::vector<bool> on(all.size(), false);
  for (size_t i = 0; i < all.size(); i++) on[i] = mode == "full" && all[i].kind == TensorKind::Linear;
  for (const std::string& e : modules) {
    if (e == "lm_head" && cfg.tie_word_embeddings)
      fail("train.trainable: \"lm_head\" is tied to embed_tokens in this model (tie_word_embeddings); train \"embed_tokens\"");
    bool any = false;
    for (size_t i = 0; i < all.size(); i++)
      if (module_matches(all[i].module(), e)) on[i] = true, any = true;
    if (!any)
      fail("train.trainable: \"", e, "\" matches no tensor of the model (e.g. embed_tokens, norm, input_layernorm, "
           "post_attention_layernorm, lm_head, q_proj)");
  }
  std::vector<ModelTensor> out;
  for (size_t i = 0; i < all.size(); i++)
    if (on[i]) out.push_back(all[i]);
  return out;
}

}  // namespace frugal
