// tokenizer.h: Hugging Face tokenizer.json, natively (SPEC §7): BPE models, byte-level (GPT-2,
// Llama-3, SmolLM2) and with byte fallback (Llama-2, TinyLlama). The pipeline is the reference's
// (huggingface/tokenizers): added tokens are cut out first (non-normalized ones on the raw text,
// normalized ones after the normalizer), the rest is normalized, pre-tokenized (PCRE2 regexes in
// UTF + UCP mode, JIT-compiled once), and each piece goes through the BPE merge loop (ranks in a
// hash map, a per-word cache). Ids equal PyPI `tokenizers` on tests/fixtures/tokenizer.
// A Tokenizer is immutable after load, cheap to copy (shared state), and encode/decode may be
// called from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace frugal {

namespace tok {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Reads tokenizer.json. bos/eos come from tokenizer_config.json beside it when present
  // (bos_token / eos_token), else from the post-processor's template.
  static Tokenizer load(const std::string& tokenizer_json_path);
  // From an already parsed tokenizer.json; `where` names it in errors. config may be null.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const std::string& where,
                             const nlohmann::json* tokenizer_config = nullptr);

  // Text must be valid UTF-8 (else frugal::Error naming the byte offset). add_special applies
  // the post-processor (e.g. BOS in front), as tokenizers' add_special_tokens=True.
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  // Unknown ids are dropped, as the reference does. Invalid UTF-8 produced by byte tokens is
  // replaced by U+FFFD (String::from_utf8_lossy in the reference).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int32_t token_to_id(std::string_view token) const;  // -1 if absent
  std::string id_to_token(int32_t id) const;           // "" if absent
  int64_t vocab_size() const;                          // max id + 1 over model and added tokens
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;  // an added token marked "special"

 private:
  const tok::TokenizerImpl& impl() const;  // throws if default-constructed
  std::shared_ptr<const tok::TokenizerImpl> impl_;
};

}  // namespace frugal
