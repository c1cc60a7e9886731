// dataset.cpp: TokenDataset HDF5 load/save with validation, the shuffled BatchLoader, and the
// synthetic "patterns" dataset (see dataset.h and docs/dataset.md).
#include "src/io/dataset.h"

#include "src/io/atomic_file.h"

#include <cstdio>
#include <filesystem>

#include "src/common.h"
#include "src/io/h5.h"

namespace frugal {

// ---- deterministic randomness (splitmix64; no <random> distributions: they differ by stdlib) --

namespace {
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform integer in [0, n), n >= 1: Lemire's multiply-shift with rejection (exactly uniform).
inline uint64_t uniform_below(uint64_t& s, uint64_t n) {
  uint64_t x = splitmix64(s);
  __uint128_t m = (__uint128_t)x * n;
  uint64_t lo = uint64_t(m);
  if (lo < n) {
    uint64_t thresh = (0 - n) % n;
    while (lo < thresh) {
      x = splitmix64(s);
      m = (__uint128_t)x * n;
      lo = uint64_t(m);
    }
  }
  return uint64_t(m >> 64);
}
}  // namespace

std::vector<int64_t> epoch_order(int64_t n, bool shuffle, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  if (!shuffle) return order;
  uint64_t k = seed ^ 0x6a09e667f3bcc909ull;  // stream key: (seed, epoch)
  uint64_t s = splitmix64(k) ^ uint64_t(epoch) * 0xD1B54A32D192ED03ull;
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates
    int64_t j = int64_t(uniform_below(s, uint64_t(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

// ---- TokenDataset ------------------------------------------------------------------------

void TokenDataset::validate(const std::string& where) const {
  const int64_t n = int64_t(tokens.size());
  if (n == 0) fail(where, ": dataset '/tokens': empty dataset (no tokens)");
  if (offsets.size() < 2)
    fail(where, ": dataset '/offsets': needs at least 2 entries (n_samples + 1), has ", offsets.size());
  if (offsets[0] != 0) fail(where, ": dataset '/offsets': offsets[0] = ", offsets[0], ", expected 0");
  for (size_t i = 1; i < offsets.size(); ++i)
    if (offsets[i] < offsets[i - 1])
      fail(where, ": dataset '/offsets': not non-decreasing: offsets[", i, "] = ", offsets[i],
           " < offsets[", i - 1, "] = ", offsets[i - 1]);
  if (offsets.back() != n)
    fail(where, ": dataset '/offsets': last offset ", offsets.back(), " != n_tokens ", n,
         " (length of '/tokens')");
  if (int64_t(loss_mask.size()) != n)
    fail(where, ": dataset '/loss_mask': length ", loss_mask.size(), " != n_tokens ", n);
  for (int64_t i = 0; i < n; ++i)
    if (loss_mask[i] > 1)
      fail(where, ": dataset '/loss_mask': value ", int(loss_mask[i]), " at ", i, " (must be 0 or 1)");
  if (vocab_size < 0) fail(where, ": attribute 'vocab_size' = ", vocab_size, " is negative");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0) fail(where, ": dataset '/tokens': negative token id ", tokens[i], " at ", i);
    if (vocab_size > 0 && tokens[i] >= vocab_size)
      fail(where, ": dataset '/tokens': token id ", tokens[i], " at ", i, " >= vocab_size ", vocab_size);
  }
  auto check_id = [&](const char* key, int32_t id, bool optional) {
    if (optional && id == -1) return;
    if (id < 0 || (vocab_size > 0 && id >= vocab_size))
      fail(where, ": attribute '", key, "' = ", id, " outside [0, vocab_size ", vocab_size, ")");
  };
  check_id("pad_id", pad_id, false);
  check_id("bos_id", bos_id, true);
  check_id("eos_id", eos_id, true);
}

namespace {
// Reads a 1-D dataset of exactly type T; errors name file and dataset.
template <class T>
std::vector<T> read_1d(const h5::H5File& f, const char* name) {
  h5::DatasetInfo di = f.info(name);  // "missing dataset" error names file + dataset
  if (di.shape.size() != 1)
    fail(f.path(), ": dataset '", name, "': wrong rank ", di.shape.size(), " (expected 1-D)");
  return f.read<T>(name);  // wrong dtype: error naming expected and found
}

int32_t read_id_attr(const h5::H5File& f, const char* key, int32_t dflt) {
  if (!f.has_attr(key)) return dflt;
  int64_t v = f.attr_i64(key);
  if (v < INT32_MIN || v > INT32_MAX) fail(f.path(), ": attribute '", key, "' = ", v, " does not fit int32");
  return int32_t(v);
}
}  // namespace

TokenDataset TokenDataset::load(const std::string& path) {
  h5::H5File f = h5::H5File::open(path);
  if (!f.has_attr("format"))
    fail(path, ": missing root attribute 'format' (expected \"", kTokensFormat, "\"; see docs/dataset.md)");
  std::string fmt = f.attr_str("format");
  if (fmt != kTokensFormat)
    fail(path, ": attribute 'format' = \"", fmt, "\", expected \"", kTokensFormat, "\"");
  TokenDataset ds;
  ds.tokens = read_1d<int32_t>(f, "/tokens");
  ds.offsets = read_1d<int64_t>(f, "/offsets");
  ds.loss_mask = read_1d<uint8_t>(f, "/loss_mask");
  ds.vocab_size = f.has_attr("vocab_size") ? f.attr_i64("vocab_size") : 0;
  ds.pad_id = read_id_attr(f, "pad_id", 0);
  ds.bos_id = read_id_attr(f, "bos_id", -1);
  ds.eos_id = read_id_attr(f, "eos_id", -1);
  ds.validate(path);
  return ds;
}

void TokenDataset::save(const std::string& path) const {
  validate(path);
  const std::string tmp = path + ".tmp";
  std::error_code ec;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);  // else: create() names the path
  {
    h5::H5File f = h5::H5File::create(tmp);
    f.write("/tokens", tokens.data(), {int64_t(tokens.size())});
    f.write("/offsets", offsets.data(), {int64_t(offsets.size())});
    f.write("/loss_mask", loss_mask.data(), {int64_t(loss_mask.size())});
    f.set_attr("format", kTokensFormat);
    if (vocab_size > 0) f.set_attr("vocab_size", int64_t(vocab_size));
    f.set_attr("pad_id", int64_t(pad_id));
    if (bos_id >= 0) f.set_attr("bos_id", int64_t(bos_id));
    if (eos_id >= 0) f.set_attr("eos_id", int64_t(eos_id));
    f.close();
  }
  commit_temp_file(tmp, path);  // fsync, rename, fsync the directory
}

// ---- BatchLoader -------------------------------------------------------------------------

BatchLoader::BatchLoader(const TokenDataset& ds, int seq_len, bool pack, bool shuffle, uint64_t seed)
    : ds_(ds), T_(seq_len), pack_(pack), shuffle_(shuffle), seed_(seed) {
  if (seq_len < 1) fail("BatchLoader: seq_len ", seq_len, " must be >= 1");
  ds.validate("BatchLoader dataset");
  advance_to_nonempty(cur_);
}

const std::vector<int64_t>& BatchLoader::order_for(int64_t epoch) {
  for (int k = 0; k < 2; ++k)
    if (order_epochs_[k] == epoch) return orders_[k];
  int k = order_epochs_[0] <= order_epochs_[1] ? 0 : 1;  // evict the older epoch
  orders_[k] = epoch_order(ds_.num_samples(), shuffle_, seed_, epoch);
  order_epochs_[k] = epoch;
  return orders_[k];
}

// Normalizes c to point at a token: past the end of a sample -> next sample; past the last
// sample -> index 0 of the next epoch. Empty samples are skipped (validate() guarantees one
// non-empty sample, so this terminates).
void BatchLoader::advance_to_nonempty(DataCursor& c) {
  const int64_t n = ds_.num_samples();
  for (;;) {
    if (c.index >= n) { c.epoch += 1; c.index = 0; c.offset = 0; }
    int64_t s = order_for(c.epoch)[c.index];
    if (c.offset < ds_.sample_len(s)) return;
    c.index += 1;
    c.offset = 0;
  }
}

void BatchLoader::next_packed_row(int32_t* ids, int32_t* targets) {
  // Read T+1 tokens of the stream from the cursor; the row consumes T of them.
  DataCursor c = cur_;
  for (int t = 0; t <= T_; ++t) {
    int64_t s = order_for(c.epoch)[c.index];
    int64_t pos = ds_.offsets[s] + c.offset;
    int32_t tok = ds_.tokens[pos];
    bool is_target = ds_.loss_mask[pos] != 0 && c.offset > 0;
    if (t < T_) ids[t] = tok;
    if (t > 0) targets[t - 1] = is_target ? tok : kIgnoreIndex;
    c.offset += 1;
    advance_to_nonempty(c);
    if (t == T_ - 1) cur_ = c;  // the next row starts after T tokens
  }
}

void BatchLoader::next_padded_row(int32_t* ids, int32_t* targets) {
  int64_t s = order_for(cur_.epoch)[cur_.index];
  const int64_t len = ds_.sample_len(s);
  const int64_t base = ds_.offsets[s];
  for (int t = 0; t < T_; ++t) {
    ids[t] = t < len ? ds_.tokens[base + t] : ds_.pad_id;
    int64_t j = t + 1;  // the predicted token's position in the sample
    targets[t] = (t < len && j < len && ds_.loss_mask[base + j]) ? ds_.tokens[base + j] : kIgnoreIndex;
  }
  cur_.index += 1;
  cur_.offset = 0;
  advance_to_nonempty(cur_);
}

void BatchLoader::next(int B, int32_t* ids, int32_t* targets) {
  for (int b = 0; b < B; ++b) {
    if (pack_) next_packed_row(ids + int64_t(b) * T_, targets + int64_t(b) * T_);
    else next_padded_row(ids + int64_t(b) * T_, targets + int64_t(b) * T_);
  }
}

void BatchLoader::restore(const DataCursor& c) {
  const int64_t n = ds_.num_samples();
  if (c.epoch < 0 || c.index < 0 || c.index > n || c.offset < 0)
    fail("data cursor (epoch ", c.epoch, ", index ", c.index, ", offset ", c.offset,
         ") is outside the dataset (", n, " samples)");
  if (c.index < n) {
    int64_t s = epoch_order(n, shuffle_, seed_, c.epoch)[c.index];
    if (c.offset > ds_.sample_len(s) || (!pack_ && c.offset != 0))
      fail("data cursor offset ", c.offset, " is invalid for sample ", s, " of length ",
           ds_.sample_len(s), pack_ ? "" : " (padding mode needs offset 0)");
  }
  cur_ = c;
  advance_to_nonempty(cur_);
}

// ---- synthetic patterns ------------------------------------------------------------------

TokenDataset make_synthetic_patterns(int vocab, int n_samples, int sample_len, uint64_t seed) {
  if (vocab < 4) fail("synthetic patterns: vocab ", vocab, " must be >= 4");
  if (n_samples < 1) fail("synthetic patterns: n_samples ", n_samples, " must be >= 1");
  if (sample_len < 2) fail("synthetic patterns: sample_len ", sample_len, " must be >= 2");
  const int lo = 2, hi = vocab < 66 ? vocab : 66;  // motif ids in [lo, hi)
  TokenDataset ds;
  ds.vocab_size = vocab;
  ds.pad_id = 0;
  ds.bos_id = 1;
  ds.offsets.push_back(0);
  uint64_t s = seed ^ 0xbb67ae8584caa73bull;
  for (int i = 0; i < n_samples; ++i) {
    int m = 3 + int(uniform_below(s, 4));  // motif length 3..6
    int motif[6];
    for (int k = 0; k < m; ++k) motif[k] = lo + int(uniform_below(s, uint64_t(hi - lo)));
    int phase = int(uniform_below(s, uint64_t(m)));
    ds.tokens.push_back(1);  // bos
    ds.loss_mask.push_back(0);
    for (int j = 0; j < sample_len - 1; ++j) {
      ds.tokens.push_back(motif[(phase + j) % m]);
      ds.loss_mask.push_back(j >= m ? 1 : 0);  // the first period is the prompt
    }
    ds.offsets.push_back(int64_t(ds.tokens.size()));
  }
  return ds;
}

}  // namespace frugal
