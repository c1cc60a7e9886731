// export.h: a training checkpoint -> a PEFT adapter dir, or the base model with LoRA merged
// (W' = bf16(W + s·B·A), the sum in fp32) as HF sharded bf16 safetensors.
//
// The merged model is written one tensor at a time: the output headers are computed from the base
// headers up front (SafetensorsWriter::sorted()/header(), the layout write_sharded produces), then
// each base tensor is read from the mmapped base files in chunks of whole rows, merged when it is a
// LoRA target, rounded to bf16 and appended; its pages are dropped afterwards. Memory: one chunk
// (ExportOptions::chunk_elems, fp32 + bf16) plus the LoRA tensors, whatever the model size.
//
// QLoRA note: training ran on the NF4-quantized base, but the merge goes into the ORIGINAL bf16
// base weights (standard practice; PEFT's merge_and_unload on a dequantized NF4 base would give
// weights carrying the NF4 error instead).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/io/dataset.h"
#include "src/model/model.h"
#include "src/model/peft.h"

namespace frugal {

// The LoRA tensors of a checkpoint (or of a model) with their adapter config.
struct AdapterData {
  PeftAdapterConfig cfg;
  std::vector<std::string> names;              // PEFT names
  std::vector<std::vector<int64_t>> shapes;
  std::vector<avector<float>> data;            // fp32 values
  std::vector<AdapterTensor> views() const;
};
// From a checkpoint (read_checkpoint_params; lora settings from the stored recipe).
AdapterData adapter_from_checkpoint(const std::string& checkpoint);

struct ExportOptions {
  size_t max_shard_bytes = 5'000'000'000ull;  // HF default shard limit
  bool adapter_bf16 = false;                   // adapter_model.safetensors in BF16 instead of F32
  size_t chunk_elems = size_t(1) << 22;         // merged export: elements converted per step (whole rows)
  bool verbose = false;
};

void export_adapter(const std::string& checkpoint, const std::string& out_dir, const ExportOptions& opt = {});
// base_model_dir "" = the checkpoint's base_model attribute.
void export_merged(const std::string& checkpoint, const std::string& out_dir, const std::string& base_model_dir = "",
                   const ExportOptions& opt = {});

// The work of export_merged on given adapter tensors (tests use it without a checkpoint).
// Writes out_dir/{model.safetensors | model-0000k-of-0000n.safetensors + index}, config.json and
// the tokenizer files the base has. Every adapter tensor must hit a base tensor of its shape.
void merge_adapter_into_base(const std::string& base_model_dir, const AdapterData& ad,
                             const std::string& out_dir, const ExportOptions& opt = {});

}  // namespace frugal
