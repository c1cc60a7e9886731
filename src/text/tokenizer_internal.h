// tokenizer_internal.h: the parts of the tokenizer pipeline (private to src/text/tokenizer_*.cpp).
//   text -> added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer
//        -> BPE model per piece -> post-processor (add_special)
//   ids  -> tokens -> decoder chain -> text
// Each stage mirrors the same-named component of huggingface/tokenizers; the JSON keys are
// those of tokenizer.json. Errors name the file (`where`) and the key path.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace frugal::tok {

// Non-owning reference to a callable (no allocation, unlike std::function): pieces are passed
// down the pipeline through these, millions of times per megabyte.
template <class Sig>
class FnRef;
template <class R, class... A>
class FnRef<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FnRef>>>
  FnRef(F&& f)  // NOLINT: implicit on purpose, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, A... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...);
        }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// ---- UTF-8 and Unicode helpers (tokenizer_text.cpp) ----------------------------------------
// Length of the valid UTF-8 prefix of s (== s.size() when valid). Rejects overlongs and
// surrogates, as Rust's str does.
size_t utf8_valid_prefix(std::string_view s);
// Decodes the code point starting at s[i] (s valid); sets *len to its byte length.
uint32_t utf8_decode(std::string_view s, size_t i, int* len);
void utf8_append(std::string& out, uint32_t cp);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool is_white_space(uint32_t cp);  // Unicode White_Space (Rust char::is_whitespace, regex \s)
bool is_word_char(uint32_t cp);    // Rust regex \w (Unicode): letters, marks, digits, Pc, joiners

// GPT-2 byte <-> unicode table (SPEC §7): byte b maps to one code point, stored as UTF-8.
struct ByteLevelTable {
  std::string byte_to_utf8[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  static const ByteLevelTable& get();
};

// ---- PCRE2 regex, UTF + UCP, JIT ------------------------------------------------------------
class Regex {
 public:
  // Compiles (UTF, UCP) and JIT-compiles. Errors name `where`.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping leftmost matches [start, end) of s (valid UTF-8), as Oniguruma's find_iter.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// ---- normalizers ---------------------------------------------------------------------------
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
// null json -> nullptr. Supports Sequence, Prepend, Replace, Strip.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where,
                                            const std::string& key);

// ---- pre-tokenizers --------------------------------------------------------------------------
// Pieces flow depth-first through the flattened step list; the sink receives each final piece.
// at_start: the piece begins at offset 0 of the original text (Metaspace prepend_scheme first).
using PieceSink = FnRef<void(std::string_view piece)>;
struct PreTokStep {
  virtual ~PreTokStep() = default;
  // Calls next(sub, sub_at_start) for each non-empty sub-piece of `piece`, in order.
  virtual void run(std::string_view piece, bool at_start,
                   FnRef<void(std::string_view, bool)> next) const = 0;
};
class PreTokenizer {
 public:
  // null json -> identity. Supports Sequence, Split, ByteLevel, Digits, Metaspace.
  PreTokenizer(const nlohmann::json& j, const std::string& where, const std::string& key);
  ~PreTokenizer();
  void run(std::string_view text, bool at_start, PieceSink sink) const;

 private:
  void add(const nlohmann::json& j, const std::string& where, const std::string& key);
  void run_from(size_t k, std::string_view piece, bool at_start, PieceSink sink) const;
  std::vector<std::unique_ptr<PreTokStep>> steps_;
};

// ---- BPE model ------------------------------------------------------------------------------
struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

// Open-addressing map (a, b) -> (rank, merged id): the hot lookup of the merge loop.
class MergeMap {
 public:
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, int32_t rank, int32_t id);  // later insert wins (as HashMap)
  // Returns false if (a, b) is no merge.
  bool find(int32_t a, int32_t b, int32_t* rank, int32_t* id) const {
    if (slots_.empty()) return false;
    uint64_t key = pack(a, b);
    size_t i = hash(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) {
        *rank = s.rank;
        *id = s.id;
        return true;
      }
      if (s.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return n_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0, id = 0;
  };
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) { return size_t((k * 0x9E3779B97F4A7C15ull) >> 17); }
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0, n_ = 0;
};

class BPE {
 public:
  BPE(const nlohmann::json& model, const std::string& where);
  // Appends the ids of one pre-token (the model's tokenize()).
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  const Vocab& vocab() const { return vocab_; }
  const std::vector<std::string>& vocab_r() const { return vocab_r_; }  // "" for holes

 private:
  void merge_word(std::string_view w, std::vector<int32_t>& out) const;
  Vocab vocab_;
  std::vector<std::string> vocab_r_;
  MergeMap merges_;
  std::string unk_token_, prefix_, suffix_;
  bool has_unk_ = false, has_prefix_ = false, has_suffix_ = false;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];  // <0xXX> ids for byte fallback (-1 if absent)
  // Per-word cache (the reference caches up to 10,000 words shorter than 256 bytes; more
  // entries pay off for long texts). Readers share the lock; it stops growing when full.
  static constexpr size_t kCacheCapacity = 1 << 18, kCacheMaxWord = 256;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StrHash, std::equal_to<>> cache_;
};

// ---- added tokens ---------------------------------------------------------------------------
struct AddedToken {
  int32_t id = -1;
  std::string content;
  std::string shown;  // content, normalized if `normalized` (the reference's id_to_token)
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matcher over a set of byte strings (the reference uses Aho-Corasick with
// MatchKind::LeftmostLongest; a trie walked from each candidate start gives the same matches).
class TokenTrie {
 public:
  void add(const std::string& s, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest pattern starting at s[i]: returns its value and sets *len, or -1.
  int32_t longest_at(std::string_view s, size_t i, size_t* len) const;
  bool may_start(uint8_t c) const { return first_[c]; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t value = -1;
  };
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
};

// ---- decoders and post-processors ----------------------------------------------------------
struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where,
                                      const std::string& key);

struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;  // only called with add_special
  virtual void bos_eos(std::optional<int32_t>* bos, std::optional<int32_t>* eos) const {}
};
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j,
                                                   const std::string& where,
                                                   const std::string& key);

// ---- the whole tokenizer --------------------------------------------------------------------
struct TokenizerImpl {
  std::string where;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BPE> model;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<PostProcessor> post_processor;
  std::vector<AddedToken> added;                        // as listed in the file
  std::unordered_map<int32_t, size_t> added_by_id;      // id -> index into added
  Vocab added_by_content;
  TokenTrie raw_trie, normalized_trie;                  // value = index into added
  std::optional<int32_t> bos, eos;
  int64_t vocab_size = 0;

  void encode_into(std::string_view text, std::vector<int32_t>& out) const;
  void split_added(std::string_view s, const TokenTrie& trie,
                   FnRef<void(std::string_view, size_t, int32_t)> emit) const;
};

}  // namespace frugal::tok
