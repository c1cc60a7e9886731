// tensors.h: the one enumeration of a Llama model's base tensors (llama.cpp's tensor-name table;
// PEFT's named_parameters walk) and the selection of the dense ones to train.
//
// llama_tensors(cfg), in FSDP unit order (sharding/layout.h):
//   unit 0      model.embed_tokens.weight                  Embedding  bf16 [V,C]
//   unit 1 + l  model.layers.l.input_layernorm.weight      Norm       fp32 [C]
//               model.layers.l.post_attention_layernorm.weight  Norm  fp32 [C]
//               the 7 decoder linears (llama_block_linears) Linear     NF4 or bf16 [out,in]
//   unit L + 1  model.norm.weight                          Norm       fp32 [C]
//               lm_head.weight (untied only)               LmHead     bf16 [V,C]
// LoRA A/B (kinds LoraA/LoraB, fp32) attach to the linears (src/model/lora.h, PEFT names).
// The model skeleton, the FSDP layout, the sharded loader and the trainable selection read this
// table; a new trainable tensor is one entry here.
//
// Storage of a trainable tensor: norms are fp32 and are their own master weight; embeddings,
// lm_head and bf16 linears keep a bf16 compute copy and get an fp32 master (LlamaModel::add_master,
// FSDP: the unit's trainable buffer), which the optimizer updates.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/model/config.h"

namespace frugal {

enum class TensorKind { Embedding, Norm, Linear, LmHead, LoraA, LoraB };
const char* tensor_kind_name(TensorKind k);

struct ModelTensor {
  std::string name;             // HF name, e.g. model.layers.3.input_layernorm.weight
  TensorKind kind;
  std::vector<int64_t> shape;
  int unit = 0;                 // FSDP unit: 0 embed, 1 + l layer l, L + 1 head
  bool fp32() const { return kind == TensorKind::Norm || kind == TensorKind::LoraA || kind == TensorKind::LoraB; }
  // "model.layers.3.input_layernorm" (the module PEFT's modules_to_save names end with)
  std::string module() const;
};

// Every base tensor of the model (no LoRA), in unit order as in the table above.
std::vector<ModelTensor> llama_tensors(const LlamaConfig& cfg);

// The dense tensors to train, in llama_tensors order:
//   mode "full": every decoder linear (+ the modules),
//   modules: entries of train.trainable, each matching every tensor whose module is the entry or
//   ends with "." + entry (PEFT modules_to_save style): "embed_tokens", "norm" (the final norm),
//   "input_layernorm", "post_attention_layernorm", "lm_head", "q_proj", ...
// An entry that matches nothing (or lm_head of a tied model) throws naming it; mode other than
// "lora" / "full" throws.
std::vector<ModelTensor> select_trainable(const LlamaConfig& cfg, const std::string& mode,
                                         const std::vector<std::string>& modules);

}  // namespace frugal
