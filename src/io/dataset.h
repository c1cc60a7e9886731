// dataset.h: the HDF5 token dataset ("frugal-tokens-v1", docs/dataset.md) and the batch loader.
// File: /tokens int32 [n_tokens]; /offsets int64 [n_samples+1] (sample i = tokens[offsets[i]:
// offsets[i+1]]); /loss_mask uint8 [n_tokens] (1 = this token is a prediction target); root
// attributes format="frugal-tokens-v1", vocab_size (int64, optional), bos_id/eos_id/pad_id (optional).
// BatchLoader turns it into ids/targets [B, T] rows: packed (samples concatenated) or padded (one
// sample per row), in a per-epoch shuffled order that is a pure function of (seed, epoch).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace frugal {

inline constexpr const char* kTokensFormat = "frugal-tokens-v1";

struct TokenDataset {
  std::vector<int32_t> tokens;     // [n_tokens]
  std::vector<int64_t> offsets;    // [n_samples + 1], offsets[0] = 0, last = n_tokens
  std::vector<uint8_t> loss_mask;  // [n_tokens], 0/1
  int64_t vocab_size = 0;          // 0 = unknown (not checked)
  int32_t pad_id = 0;
  int32_t bos_id = -1, eos_id = -1;  // -1 = not given (addition to the issue-3 interface)

  int64_t num_samples() const { return offsets.empty() ? 0 : int64_t(offsets.size()) - 1; }
  int64_t sample_len(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  // Validates everything; errors name the file and the dataset/attribute.
  static TokenDataset load(const std::string& path);
  void save(const std::string& path) const;  // validate, write "<path>.tmp", rename
  // The same rules as load, on an in-memory dataset; `where` names it in errors.
  void validate(const std::string& where) const;
};

// Position in the stream of rows: shuffled-order index of the current sample within `epoch`,
// and the token offset inside that sample (packing splits samples across rows).
struct DataCursor {
  int64_t epoch = 0;
  int64_t index = 0;
  int64_t offset = 0;
  bool operator==(const DataCursor&) const = default;
};

// The order of samples in `epoch`: identity without shuffle, else Fisher-Yates driven by a
// splitmix64 stream seeded from (seed, epoch); identical on every platform and standard library.
std::vector<int64_t> epoch_order(int64_t n_samples, bool shuffle, uint64_t seed, int64_t epoch);

class BatchLoader {
 public:
  BatchLoader(const TokenDataset& ds, int seq_len, bool pack, bool shuffle, uint64_t seed);
  // ids [B, T] and targets [B, T] (T = seq_len). targets[b,t] = ids[b,t+1] (for t = T-1 the
  // token after the row: packing reads one lookahead token, padding the sample's token T) when
  // that token is a loss-mask target of the same sample, else -100 (kIgnoreIndex). A sample's
  // first token is never a target (it has no context inside its own sample).
  // pack: the epoch's samples concatenated into rows of T tokens, the stream running on into
  //       the next (reshuffled) epoch; no pack: one sample per row, truncated to T, padded with
  //       pad_id (target -100); empty samples are skipped.
  void next(int B, int32_t* ids, int32_t* targets);
  DataCursor cursor() const { return cur_; }
  void restore(const DataCursor& c);  // validated against the dataset
  int seq_len() const { return T_; }

 private:
  const TokenDataset& ds_;
  int T_;
  bool pack_, shuffle_;
  uint64_t seed_;
  DataCursor cur_;
  std::vector<int64_t> orders_[2];    // cached epoch orders (current and lookahead epoch)
  int64_t order_epochs_[2] = {-1, -1};
  const std::vector<int64_t>& order_for(int64_t epoch);
  void advance_to_nonempty(DataCursor& c);  // skip empty samples / finished epochs
  void next_packed_row(int32_t* ids, int32_t* targets);
  void next_padded_row(int32_t* ids, int32_t* targets);
};

// A deterministic LEARNABLE dataset for tests and recipes/tiny_qlora.toml: sample = [bos] +
// a random motif of 3..6 tokens (ids 2..min(vocab, 66)-1) repeated from a per-sample phase up to
// sample_len tokens; the bos and the first motif period are the prompt (loss_mask 0), every later
// token is a target and predictable from the previous period. ids 0 = pad, 1 = bos.
TokenDataset make_synthetic_patterns(int vocab, int n_samples, int sample_len, uint64_t seed);

}  // namespace frugal
