// import_gguf.h: llama.cpp GGUF (general.architecture "llama") -> Hugging Face Llama model dir:
// config.json, model.safetensors (bf16; shards + index above max_shard_bytes), tokenizer.json and
// tokenizer_config.json rebuilt from the tokenizer.ggml.* metadata.
//
// Weights: GGUF tensor names map to HF ones (token_embd -> model.embed_tokens, blk.N.attn_q ->
// model.layers.N.self_attn.q_proj, ...). llama.cpp's converter permutes the rows of Q and K
// (convert_hf_to_gguf.py LlamaModel.permute: per head, HF row s·hd/2 + j goes to row 2j + s, so
// ggml's rope can rotate adjacent pairs); the import undoes it, giving HF's rotate_half layout.
// Tokenizer: what transformers' GGUF converter builds (integrations/gguf/gguf_tokenizer_mapping.py):
//   model "gpt2"  -> byte-level BPE (tokens respelled in the byte alphabet when needed, merges from
//                    tokenizer.ggml.merges); pre-tokenizer from tokenizer.ggml.pre;
//   model "llama" -> SentencePiece-style BPE with byte_fallback, merges derived from the scores
//                    (transformers' generate_merges), Metaspace pre-tokenizer.
// CONTROL tokens (and bos/eos/unk/pad) become special added tokens, USER_DEFINED ones plain
// added tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/common.h"
#include "src/model/config.h"
#include "src/io/gguf.h"

namespace frugal {

// LlamaConfig from llama.* metadata (throws naming general.architecture when it is not "llama",
// or the key at fault).
LlamaConfig gguf_llama_config(const GGUFFile& f);

// One HF tensor and where it comes from.
struct GGUFTensorMap {
  std::string hf_name, gguf_name;
  std::vector<int64_t> shape;  // HF shape
  int unpermute_heads = 0;     // > 0: undo llama.cpp's Q/K permutation with this many heads
};
// The HF tensors of the config, each with its GGUF source; every tensor of the file must be one of
// them or rope_freqs.weight (Llama-3.1 RoPE scaling, turned into rope_scaling by gguf_llama_config).
std::vector<GGUFTensorMap> gguf_llama_tensor_map(const GGUFFile& f, const LlamaConfig& cfg);
// Dequantizes and un-permutes one tensor into out (numel(shape) bf16).
void gguf_load_tensor_bf16(const GGUFFile& f, const GGUFTensorMap& m, bf16* out);
// Inverse of llama.cpp's permute on the rows of w [rows, cols] (rows = n_head·hd): in place.
void unpermute_rows_bf16(bf16* w, int64_t rows, int64_t cols, int n_head);

// Hugging Face tokenizer.json / tokenizer_config.json from the tokenizer.ggml.* metadata.
nlohmann::ordered_json gguf_tokenizer_json(const GGUFFile& f);
nlohmann::ordered_json gguf_tokenizer_config_json(const GGUFFile& f, const LlamaConfig& cfg);
// Merges transformers derives from a SentencePiece vocabulary (tokenization_utils_base.py
// generate_merges with vocab_scores): every split of a token into two vocabulary pieces, ordered
// by (score, len(left), len(right)) descending, stably; lengths in code points.
std::vector<std::pair<std::string, std::string>> sentencepiece_merges(const std::vector<std::string>& tokens,
                                                                       const std::vector<double>& scores);

struct ImportOptions {
  bool force = false;                        // allow a non-empty out_dir
  size_t max_shard_bytes = 5'000'000'000ull;
  bool verbose = false;                      // one line per tensor on stderr
};
// Writes out_dir/{config.json, model.safetensors (or shards + index), tokenizer.json,
// tokenizer_config.json}. Returns the config written.
LlamaConfig import_gguf(const std::string& gguf_path, const std::string& out_dir, const ImportOptions& opt = {});

}  // namespace frugal
