// Trainable parameters: an fp32 master weight and its fp32 gradient, by name.
// The optimizer, checkpoints and export all work on lists of these. LoRA tensors carry PEFT names
// ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace frugal {

struct ParamRef {
  std::string name;
  std::vector<int64_t> shape;
  float* w = nullptr;   // [numel] fp32 master weight
  float* g = nullptr;   // [numel] fp32 gradient (accumulated by backward)
  size_t numel = 0;
};

}  // namespace frugal
