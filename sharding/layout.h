// layout.h: how a Llama model is cut into FSDP units and each unit into per-rank shards.
//
// Units (one flat frozen buffer and one flat trainable buffer each):
//   unit 0        "embed"      model.embed_tokens.weight bf16 [V,C]
//   unit 1 + l    "layers.l"   input_layernorm, post_attention_layernorm (f32 [C]) and the 7
//                              decoder linears: NF4 parts (codes, absmax or absmax_q + nested
//                              absmax + offset) or bf16 [out,in]; LoRA A, B (fp32) as trainables
//   unit L + 1    "head"       model.norm.weight f32 [C] (+ lm_head.weight bf16 [V,C] when untied;
//                              a tied head uses unit 0's embedding)
//
// Frozen buffer: entries in that order, each starting at a multiple of `align` bytes
// (align = max(64, nf4_blocksize/2)), total padded up to a multiple of W·align and split into W
// equal byte ranges: rank r owns [r·shard, (r+1)·shard). Every NF4 codes entry starts on an align
// boundary and a block's codes are blocksize/2 bytes, so shard boundaries never split an NF4
// block. All-gathering the frozen buffer moves NF4 bytes (~0.52 B/param at blocksize 64), not bf16.
//
// Trainable buffer (fp32): per LoRA site in order q,k,v,o,gate,up,down: A [r,in] then B [out,r]
// (PEFT names), then the unit's dense trainables (train.trainable / train.mode = "full", HF names,
// fp32 masters, in the order of src/model/tensors.h; such a tensor has no frozen entry), each
// starting at a multiple of 16 floats; padded to a multiple of 16·W floats and split into W equal
// ranges. The padding stays zero (zero grads, zero optimizer updates).
//
// The layout depends only on (config, quantization options, LoRA config, W), so every rank, the
// planner, the loader and the checkpoint compute the same one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "src/model/config.h"
#include "src/model/lora.h"
#include "src/model/model.h"
#include "src/model/params.h"

namespace frugal {

enum class FrozenPart {
  BF16,          // bf16 tensor [shape]                 (embeddings, lm_head, bf16 linears)
  F32,           // fp32 tensor [shape]                 (norm weights)
  NF4Codes,      // (numel+1)/2 packed codes            (quant::NF4Tensor::packed)
  NF4Absmax,     // fp32 [nblocks]                      (no double quant)
  NF4AbsmaxQ,    // u8 [nblocks]                        (double quant)
  NF4Nested,     // fp32 [ceil(nblocks/256)]            (double quant)
  NF4Offset,     // fp32 [1]                            (double quant)
};
const char* frozen_part_name(FrozenPart p);

struct FrozenEntry {
  std::string tensor;          // HF name, e.g. model.layers.3.self_attn.q_proj.weight
  FrozenPart part;
  std::vector<int64_t> shape;  // the HF tensor's shape (for every part of it)
  size_t offset = 0;           // bytes from the start of the unit's frozen buffer
  size_t bytes = 0;            // unpadded
};

struct TrainEntry {
  std::string name;            // PEFT name (…q_proj.lora_A.weight), or the HF name of a dense tensor
  std::string site;            // HF weight name of the linear (…q_proj.weight) / of the dense tensor
  char which = 'A';            // 'A' [r,in], 'B' [out,r], or 'W' (dense: the tensor itself, its shape)
  bool dense() const { return which == 'W'; }
  std::vector<int64_t> shape;
  size_t offset = 0;           // floats from the start of the unit's trainable buffer
  size_t numel = 0;
};

struct UnitLayout {
  int index = 0;
  std::string name;            // "embed", "layers.3", "head"
  std::vector<FrozenEntry> frozen;
  size_t frozen_bytes = 0;     // end of the last entry
  size_t frozen_padded = 0;    // multiple of W·align
  size_t frozen_shard = 0;     // frozen_padded / W
  std::vector<TrainEntry> train;
  size_t train_numel = 0;      // end of the last entry (floats)
  size_t train_padded = 0;     // multiple of 16·W
  size_t train_shard = 0;      // train_padded / W
  const FrozenEntry* find(const std::string& tensor, FrozenPart part) const;  // null if absent
};

struct ModelLayout {
  LlamaConfig cfg;
  ModelOptions opt;
  bool has_lora = false;
  LoraConfig lora;             // target_modules expanded
  std::vector<std::string> dense;  // HF names of the dense trainables (select_trainable)
  int world = 1;
  size_t align = 64;
  std::vector<UnitLayout> units;  // embed, layers.0 .. layers.L-1, head
  int embed_unit() const { return 0; }
  int block_unit(int l) const { return 1 + l; }
  int head_unit() const { return cfg.num_hidden_layers + 1; }
  size_t max_frozen_padded() const;  // the largest gathered unit, bytes
  size_t max_train_padded() const;   // floats
  size_t total_frozen_shard() const; // bytes this rank keeps (same for every rank)
  size_t total_train_shard() const;  // floats this rank keeps
  size_t total_train_numel() const;  // trainable parameters (unpadded)
};

// lora: null = no adapters; dense: HF names of base tensors trained densely (fp32 masters in the
// trainable buffer). Throws on a world < 1 or an unknown dense name.
ModelLayout make_model_layout(const LlamaConfig& cfg, const ModelOptions& opt, const LoraConfig* lora, int world,
                              const std::vector<std::string>& dense = {});

// [begin, end) of rank r's shard of a buffer of `padded` units split W ways.
inline std::pair<size_t, size_t> shard_range(size_t padded, int world, int rank) {
  const size_t s = padded / (size_t)world;
  return {s * (size_t)rank, s * (size_t)(rank + 1)};
}
// Overlap of an entry [off, off+len) with a shard [lo, hi): {begin, end} in buffer coordinates,
// begin == end when they do not overlap.
inline std::pair<size_t, size_t> overlap(size_t off, size_t len, size_t lo, size_t hi) {
  const size_t b = off > lo ? off : lo, e = (off + len) < hi ? (off + len) : hi;
  return b < e ? std::pair{b, e} : std::pair{b, b};
}

// The trainable tensors of a unit as pieces of rank `rank`'s flat shard (src/model/params.h), one
// per entry in unit order, also those the rank holds none of (so that every rank lists the same
// tensors in the same order): every rank's flat range of the tensor (cuts) and where this rank's
// part starts in its shard (an empty piece points at the nearest shard edge, in [0, train_shard]).
std::vector<ParamPiece> unit_pieces(const UnitLayout& u, int world, int rank);

}  // namespace frugal
