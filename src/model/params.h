// Trainable parameters: an fp32 master weight and its fp32 gradient, by name.
// The optimizer, checkpoints and export all work on lists of these. LoRA tensors carry PEFT names
// ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace frugal {

// One tensor inside a param that is a flat buffer of several tensors (FSDP's "fsdp/<unit>" shard:
// sharding/layout.h). Optimizers that need a tensor's 2-D structure (GaLore) read these; elementwise
// ones ignore them. A sharded param lists EVERY tensor of its unit, also those this rank holds none
// of (begin == end), in layout order, so every rank sees the same tensors in the same order.
struct ParamPiece {
  std::string name;              // the tensor's HF / PEFT name
  std::vector<int64_t> shape;    // the whole tensor's shape
  size_t begin = 0, end = 0;     // the flat range [begin, end) of the tensor this rank holds
  size_t offset = 0;             // where element `begin` is in the param's w / g
  // cuts[r] .. cuts[r+1]: the flat range rank r holds ([W+1] entries, cuts[0] = 0, cuts[W] = numel)
  std::vector<size_t> cuts;
};

struct ParamRef {
  std::string name;
  std::vector<int64_t> shape;
  float* w = nullptr;   // [numel] fp32 master weight
  float* g = nullptr;   // [numel] fp32 gradient (accumulated by backward)
  size_t numel = 0;
  // empty: the param is one whole tensor (name, shape) held by this process alone
  std::vector<ParamPiece> pieces;
};

// The tensors of a param as pieces: its pieces, or the whole param as one piece (cuts {0, numel}:
// a split over one holder, which is this process).
inline std::vector<ParamPiece> param_pieces(const ParamRef& p) {
  if (!p.pieces.empty()) return p.pieces;
  return {ParamPiece{p.name, p.shape, 0, p.numel, 0, {0, p.numel}}};
}

}  // namespace frugal
