// init.h: random initialization of a Llama model in Hugging Face format (what
// LlamaForCausalLM._init_weights does: linear and embedding weights ~ N(0, initializer_range²),
// RMSNorm weights = 1), stored bf16 as model.safetensors (or shards + index) plus config.json.
// Values come from a counter-based generator keyed by (seed, tensor name, element index), so the
// output is the same for any number of threads and any chunking.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/model/config.h"

namespace frugal {

// One tensor of the HF checkpoint (SPEC §2 names and shapes), in the order HF lists them.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm = false;  // RMSNorm weight: initialized to 1 instead of N(0, std²)
  int64_t numel() const;
};
std::vector<TensorSpec> llama_tensor_specs(const LlamaConfig& cfg);

// x[i] = std · N(0,1) sample number (start + i) of the stream `key`, i < n, as bf16.
// Sample k of a stream depends only on (key, k): Box-Muller (fp32) on splitmix64 output ⌊k/2⌋.
// normal_bf16 is the OpenMP + AVX-512 path, normal_bf16_ref the scalar definition (same bits).
void normal_bf16(bf16* x, int64_t start, int64_t n, float std, uint64_t key);
void normal_bf16_ref(bf16* x, int64_t start, int64_t n, float std, uint64_t key);
// Stream key of a tensor: a hash of (seed, name).
uint64_t init_stream_key(uint64_t seed, const std::string& tensor_name);

// Vocabulary size (max id + 1 over model.vocab and added_tokens) and recognizable BOS/EOS ids of a
// Hugging Face tokenizer.json (-1 / empty when not recognizable).
struct TokenizerInfo {
  int vocab_size = 0;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string bos_token, eos_token;  // their contents ("" when not recognizable)
};
TokenizerInfo read_tokenizer_info(const std::string& tokenizer_json);

struct InitOptions {
  std::string tokenizer;                     // tokenizer.json to copy into the model dir (sets vocab/bos/eos)
  bool force = false;                        // allow a non-empty out_dir (stale weight files are removed)
  size_t max_shard_bytes = 5'000'000'000ull; // shard the weights above this (HF default 5 GB)
  size_t chunk_elems = size_t(1) << 25;      // elements generated per write (bounds memory: 64 MB bf16)
  bool verbose = false;                      // one line per tensor on stderr
};

// Writes out_dir/{model.safetensors | model-0000k-of-0000n.safetensors + model.safetensors.index.json,
// config.json[, tokenizer.json, tokenizer_config.json]}. tokenizer_config.json is copied from beside
// the tokenizer.json when there is one (chat template, token classes), else a minimal one naming the
// bos/eos tokens is written so AutoTokenizer knows them. Each file is written under a temporary name and renamed. Refuses a
// non-empty out_dir unless opt.force. Returns the config written (vocab/bos/eos from the tokenizer).
LlamaConfig init_model(const LlamaConfig& cfg, const std::string& out_dir, uint64_t seed,
                       const InitOptions& opt = {});

}  // namespace frugal
