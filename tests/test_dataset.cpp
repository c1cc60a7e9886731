// test_dataset.cpp: the HDF5 token dataset and the BatchLoader.
// Checks against: hand-written expected rows; a naive reference that materializes the whole
// token stream (pack) or the list of rows (pad) over several epochs; malformed files written
// with the raw HDF5 C API; an uninterrupted loader (cursor restore).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "src/common.h"
#include "tests/test_util.h"
#include "src/io/dataset.h"
#include "src/io/h5.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

test_util::ScratchDir scratch("dataset");  // removed when the binary exits
std::string tmp_path(const std::string& name) { return scratch.path(name); }
using test_util::expect_error;

// A small irregular dataset: sample lengths include 0 and 1; vocab 97.
TokenDataset hand_dataset() {
  TokenDataset ds;
  const int lens[] = {5, 0, 1, 9, 3, 7, 2, 11};
  ds.offsets.push_back(0);
  int k = 0;
  for (int len : lens) {
    for (int j = 0; j < len; ++j, ++k) {
      ds.tokens.push_back((k * 37 + 11) % 97);
      ds.loss_mask.push_back((k % 3) != 1);  // mixed mask, also 1 on some first tokens
    }
    ds.offsets.push_back(int64_t(ds.tokens.size()));
  }
  ds.vocab_size = 97;
  ds.pad_id = 96;
  ds.bos_id = 1;
  ds.eos_id = 2;
  return ds;
}

// Raw-API writer for malformed files.
hid_t raw_create(const std::string& path) {
  return H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
}
void raw_dataset(hid_t f, const char* name, hid_t mtype, const void* data, std::vector<hsize_t> dims) {
  hid_t sp = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f, name, mtype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  hsize_t n = 1;
  for (auto x : dims) n *= x;
  if (n) {
    ASSERT_GE(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  }
  H5Dclose(d);
  H5Sclose(sp);
}
void raw_str_attr(hid_t f, const char* key, const char* v) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, strlen(v));
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, key, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, t, v);
  H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
}
void raw_i64_attr(hid_t f, const char* key, int64_t v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, key, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
  H5Sclose(sp);
}

// Writes a well-formed 2-sample file, letting `mutate` change one piece.
struct RawSpec {
  std::vector<int32_t> tokens = {5, 6, 7, 8, 9};
  std::vector<int64_t> offsets = {0, 2, 5};
  std::vector<uint8_t> mask = {0, 1, 0, 1, 1};
  bool write_tokens = true, tokens_as_i64 = false, offsets_2d = false, write_format = true;
  bool tokens_as_group = false;
  std::string format = "frugal-tokens-v1";
  int64_t vocab = 10;
};
void write_raw(const std::string& path, const RawSpec& s) {
  hid_t f = raw_create(path);
  ASSERT_GE(f, 0);
  if (s.tokens_as_group) {
    H5Gclose(H5Gcreate2(f, "/tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  } else if (s.write_tokens) {
    if (s.tokens_as_i64) {
      std::vector<int64_t> t(s.tokens.begin(), s.tokens.end());
      raw_dataset(f, "/tokens", H5T_NATIVE_INT64, t.data(), {t.size()});
    } else {
      raw_dataset(f, "/tokens", H5T_NATIVE_INT32, s.tokens.data(), {s.tokens.size()});
    }
  }
  if (s.offsets_2d) raw_dataset(f, "/offsets", H5T_NATIVE_INT64, s.offsets.data(), {1, s.offsets.size()});
  else raw_dataset(f, "/offsets", H5T_NATIVE_INT64, s.offsets.data(), {s.offsets.size()});
  raw_dataset(f, "/loss_mask", H5T_NATIVE_UINT8, s.mask.data(), {s.mask.size()});
  if (s.write_format) raw_str_attr(f, "format", s.format.c_str());
  if (s.vocab > 0) raw_i64_attr(f, "vocab_size", s.vocab);
  H5Fclose(f);
}

}  // namespace

TEST(Dataset, RoundTrip) {
  TokenDataset ds = hand_dataset();
  std::string p = tmp_path("roundtrip.h5");
  ds.save(p);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  TokenDataset r = TokenDataset::load(p);
  EXPECT_EQ(r.tokens, ds.tokens);
  EXPECT_EQ(r.offsets, ds.offsets);
  EXPECT_EQ(r.loss_mask, ds.loss_mask);
  EXPECT_EQ(r.vocab_size, 97);
  EXPECT_EQ(r.pad_id, 96);
  EXPECT_EQ(r.bos_id, 1);
  EXPECT_EQ(r.eos_id, 2);
  EXPECT_EQ(r.num_samples(), 8);
}

TEST(Dataset, RawWellFormedFileLoads) {
  // The raw writer itself produces a valid file (so the malformed cases below differ by one thing).
  std::string p = tmp_path("raw_ok.h5");
  write_raw(p, RawSpec{});
  TokenDataset ds = TokenDataset::load(p);
  EXPECT_EQ(ds.tokens, (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(ds.num_samples(), 2);
  EXPECT_EQ(ds.pad_id, 0);  // default when the attribute is absent
  EXPECT_EQ(ds.bos_id, -1);
}

TEST(Dataset, MalformedFilesNameFileAndDataset) {
  struct Case { const char* name; std::function<void(RawSpec&)> mutate; std::vector<std::string> needles; };
  std::vector<Case> cases = {
      {"missing_tokens", [](RawSpec& s) { s.write_tokens = false; }, {"'/tokens'", "missing dataset"}},
      {"tokens_group", [](RawSpec& s) { s.tokens_as_group = true; }, {"'/tokens'", "not a dataset"}},
      {"tokens_int64", [](RawSpec& s) { s.tokens_as_i64 = true; }, {"'/tokens'", "wrong dtype", "int64"}},
      {"offsets_2d", [](RawSpec& s) { s.offsets_2d = true; }, {"'/offsets'", "wrong rank 2"}},
      {"offsets_start", [](RawSpec& s) { s.offsets = {1, 2, 5}; }, {"'/offsets'", "offsets[0] = 1"}},
      {"offsets_decreasing", [](RawSpec& s) { s.offsets = {0, 4, 3, 5}; }, {"'/offsets'", "non-decreasing"}},
      {"offsets_last", [](RawSpec& s) { s.offsets = {0, 2, 4}; }, {"'/offsets'", "last offset 4"}},
      {"mask_length", [](RawSpec& s) { s.mask = {0, 1, 0, 1}; }, {"'/loss_mask'", "length 4"}},
      {"mask_value", [](RawSpec& s) { s.mask = {0, 1, 2, 1, 1}; }, {"'/loss_mask'", "value 2"}},
      {"token_vocab", [](RawSpec& s) { s.tokens = {5, 6, 10, 8, 9}; }, {"'/tokens'", ">= vocab_size 10"}},
      {"token_negative", [](RawSpec& s) { s.tokens = {5, -3, 7, 8, 9}; }, {"'/tokens'", "negative"}},
      {"empty", [](RawSpec& s) { s.tokens = {}; s.offsets = {0}; s.mask = {}; }, {"'/tokens'", "empty"}},
      {"no_format", [](RawSpec& s) { s.write_format = false; }, {"'format'"}},
      {"bad_format", [](RawSpec& s) { s.format = "frugal-tokens-v0"; }, {"'format'", "frugal-tokens-v0"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RawSpec s;
    c.mutate(s);
    std::string p = tmp_path(std::string("bad_") + c.name + ".h5");
    write_raw(p, s);
    std::vector<std::string> needles = c.needles;
    needles.push_back(p);  // every message names the file
    expect_error([&] { TokenDataset::load(p); }, needles);
  }
}

TEST(Dataset, NonHdf5AndTruncatedFiles) {
  std::string missing = tmp_path("does_not_exist.h5");
  expect_error([&] { TokenDataset::load(missing); }, {missing, "no such file"});

  std::string text = tmp_path("text.h5");
  std::ofstream(text) << "this is not an HDF5 file\n";
  expect_error([&] { TokenDataset::load(text); }, {text, "cannot open as HDF5"});

  std::string trunc = tmp_path("truncated.h5");
  hand_dataset().save(trunc);
  fs::resize_file(trunc, fs::file_size(trunc) / 2);
  // H5_CHECK reports the failing statement and the innermost HDF5 message (via H5Ewalk2).
  expect_error([&] { TokenDataset::load(trunc); }, {trunc, "H5Fopen(", "truncated file"});
  expect_error([&] { TokenDataset::load(text); }, {"file signature not found"});
}

TEST(Dataset, SaveRejectsInvalid) {
  TokenDataset ds = hand_dataset();
  ds.tokens[3] = 97;  // == vocab_size
  std::string p = tmp_path("invalid_save.h5");
  expect_error([&] { ds.save(p); }, {p, "'/tokens'", "vocab_size 97"});
  EXPECT_FALSE(fs::exists(p));
}

// ---- BatchLoader -------------------------------------------------------------------------

TEST(BatchLoader, PackedHandExample) {
  // Two samples, no shuffle, T = 3. Stream: [10 11 12 | 20 21 | 10 11 12 | ...]
  // mask: 10:0 11:1 12:1 | 20:1 21:1. A sample's first token is never a target (20 has mask 1).
  TokenDataset ds;
  ds.tokens = {10, 11, 12, 20, 21};
  ds.offsets = {0, 3, 5};
  ds.loss_mask = {0, 1, 1, 1, 1};
  BatchLoader L(ds, 3, /*pack=*/true, /*shuffle=*/false, 7);
  int32_t ids[6], tg[6];
  L.next(2, ids, tg);
  // row 0: ids 10 11 12, next tokens 11 12 20(first of sample: ignored)
  // row 1: ids 20 21 10, next tokens 21 10(first) 11
  const int32_t e_ids[6] = {10, 11, 12, 20, 21, 10};
  const int32_t e_tg[6] = {11, 12, -100, 21, -100, 11};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(ids[i], e_ids[i]) << i;
    EXPECT_EQ(tg[i], e_tg[i]) << i;
  }
  EXPECT_EQ(L.cursor(), (DataCursor{1, 0, 1}));  // next row starts at token 11 of epoch 1
}

TEST(BatchLoader, PaddedHandExample) {
  // Samples [10 11 12 13 14], [] (skipped), [20 21]; T = 4, pad 0. The long sample is truncated
  // and its token 4 (14) is the target of position 3.
  TokenDataset ds;
  ds.tokens = {10, 11, 12, 13, 14, 20, 21};
  ds.offsets = {0, 5, 5, 7};
  ds.loss_mask = {0, 1, 0, 1, 1, 1, 1};
  ds.pad_id = 0;
  BatchLoader L(ds, 4, /*pack=*/false, /*shuffle=*/false, 7);
  int32_t ids[12], tg[12];
  L.next(3, ids, tg);
  const int32_t e_ids[12] = {10, 11, 12, 13, 20, 21, 0, 0, 10, 11, 12, 13};
  const int32_t e_tg[12] = {11, -100, 13, 14, 21, -100, -100, -100, 11, -100, 13, 14};
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(ids[i], e_ids[i]) << i;
    EXPECT_EQ(tg[i], e_tg[i]) << i;
  }
}

namespace {
// Naive packed reference: the concatenated stream of `epochs` epochs, then rows of T.
void ref_packed(const TokenDataset& ds, int T, bool shuffle, uint64_t seed, int epochs, int rows,
                std::vector<int32_t>* ids, std::vector<int32_t>* tg) {
  std::vector<int32_t> tok;
  std::vector<bool> target;
  for (int e = 0; e < epochs; ++e)
    for (int64_t s : epoch_order(ds.num_samples(), shuffle, seed, e))
      for (int64_t j = ds.offsets[s]; j < ds.offsets[s + 1]; ++j) {
        tok.push_back(ds.tokens[j]);
        target.push_back(ds.loss_mask[j] && j > ds.offsets[s]);
      }
  ASSERT_GE(tok.size(), size_t(rows) * T + 1);
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < T; ++t) {
      size_t k = size_t(r) * T + t;
      ids->push_back(tok[k]);
      tg->push_back(target[k + 1] ? tok[k + 1] : -100);
    }
}
// Naive padded reference: every non-empty sample in epoch order becomes one row.
void ref_padded(const TokenDataset& ds, int T, bool shuffle, uint64_t seed, int epochs, int rows,
                std::vector<int32_t>* ids, std::vector<int32_t>* tg) {
  int made = 0;
  for (int e = 0; e < epochs && made < rows; ++e)
    for (int64_t s : epoch_order(ds.num_samples(), shuffle, seed, e)) {
      int64_t b = ds.offsets[s], len = ds.offsets[s + 1] - b;
      if (len == 0) continue;
      if (made == rows) break;
      ++made;
      for (int t = 0; t < T; ++t) {
        ids->push_back(t < len ? ds.tokens[b + t] : ds.pad_id);
        bool ok = t + 1 < len && ds.loss_mask[b + t + 1];
        tg->push_back(ok ? ds.tokens[b + t + 1] : -100);
      }
    }
  ASSERT_EQ(made, rows);
}
}  // namespace

TEST(BatchLoader, MatchesNaiveReference) {
  TokenDataset ds = hand_dataset();  // 38 tokens, 7 non-empty samples
  for (bool pack : {true, false})
    for (bool shuffle : {false, true})
      for (int T : {1, 4, 7, 13}) {
        SCOPED_TRACE(str("pack ", pack, " shuffle ", shuffle, " T ", T));
        const int B = 3, batches = 9;  // crosses several epoch boundaries
        BatchLoader L(ds, T, pack, shuffle, 4242);
        std::vector<int32_t> ids(size_t(B) * batches * T), tg(ids.size());
        for (int i = 0; i < batches; ++i) L.next(B, ids.data() + size_t(i) * B * T, tg.data() + size_t(i) * B * T);
        std::vector<int32_t> rids, rtg;
        if (pack) ref_packed(ds, T, shuffle, 4242, 12, B * batches, &rids, &rtg);
        else ref_padded(ds, T, shuffle, 4242, 12, B * batches, &rids, &rtg);
        ASSERT_EQ(rids.size(), ids.size());
        EXPECT_EQ(ids, rids);
        EXPECT_EQ(tg, rtg);
      }
}

TEST(BatchLoader, ShuffleIsSeededPermutation) {
  const int64_t n = 59;
  auto a = epoch_order(n, true, 1, 0);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(a, epoch_order(n, true, 1, 0));   // deterministic
  EXPECT_NE(a, epoch_order(n, true, 2, 0));   // depends on seed
  EXPECT_NE(a, epoch_order(n, true, 1, 1));   // and on epoch
  std::vector<int64_t> id(n);
  for (int64_t i = 0; i < n; ++i) id[i] = i;
  EXPECT_NE(a, id);
  EXPECT_EQ(epoch_order(n, false, 1, 3), id);
  // Every position receives many different samples over epochs (not a fixed rotation).
  std::set<int64_t> at0;
  for (int e = 0; e < 40; ++e) at0.insert(epoch_order(n, true, 9, e)[0]);
  EXPECT_GE(at0.size(), 20u);
}

TEST(BatchLoader, CursorRestoreEqualsUninterrupted) {
  TokenDataset ds = hand_dataset();
  for (bool pack : {true, false}) {
    SCOPED_TRACE(pack ? "pack" : "pad");
    const int T = 5, B = 2, total = 30;
    BatchLoader A(ds, T, pack, true, 99);
    std::vector<DataCursor> cursors;
    std::vector<std::vector<int32_t>> ids(total, std::vector<int32_t>(B * T)), tg = ids;
    for (int i = 0; i < total; ++i) {
      cursors.push_back(A.cursor());
      A.next(B, ids[i].data(), tg[i].data());
    }
    EXPECT_GE(A.cursor().epoch, 3);  // the run crossed epoch boundaries
    for (int start : {0, 1, 7, 13, 22, 29}) {
      BatchLoader R(ds, T, pack, true, 99);
      R.restore(cursors[start]);
      EXPECT_EQ(R.cursor(), cursors[start]);
      std::vector<int32_t> i2(B * T), t2(B * T);
      for (int i = start; i < total; ++i) {
        R.next(B, i2.data(), t2.data());
        ASSERT_EQ(i2, ids[i]) << "restored at " << start << ", batch " << i;
        ASSERT_EQ(t2, tg[i]) << "restored at " << start << ", batch " << i;
      }
    }
  }
}

TEST(BatchLoader, RestoreRejectsBadCursor) {
  TokenDataset ds = hand_dataset();
  BatchLoader L(ds, 4, true, false, 1);
  expect_error([&] { L.restore({0, 9, 0}); }, {"cursor", "8 samples"});
  expect_error([&] { L.restore({-1, 0, 0}); }, {"cursor"});
  expect_error([&] { L.restore({0, 0, 6}); }, {"offset 6", "length 5"});
  BatchLoader P(ds, 4, false, false, 1);
  expect_error([&] { P.restore({0, 0, 2}); }, {"padding mode"});
}

TEST(SyntheticPatterns, DeterministicValidAndPeriodic) {
  TokenDataset a = make_synthetic_patterns(128, 37, 41, 5);
  TokenDataset b = make_synthetic_patterns(128, 37, 41, 5);
  TokenDataset c = make_synthetic_patterns(128, 37, 41, 6);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  a.validate("synthetic");
  EXPECT_EQ(a.num_samples(), 37);
  int64_t targets = 0;
  for (int64_t s = 0; s < a.num_samples(); ++s) {
    int64_t base = a.offsets[s];
    ASSERT_EQ(a.sample_len(s), 41);
    EXPECT_EQ(a.tokens[base], 1);
    EXPECT_EQ(a.loss_mask[base], 0);
    // Smallest period p of the body; every target is predictable: equals the token p before it,
    // which lies after the bos (the prompt holds one full period).
    int p = 0;
    for (int q = 1; q <= 6 && !p; ++q) {
      bool ok = true;
      for (int64_t j = base + 1 + q; j < base + 41; ++j) ok = ok && a.tokens[j] == a.tokens[j - q];
      if (ok) p = q;
    }
    ASSERT_GE(p, 1) << "sample " << s << " is not periodic";
    for (int64_t j = base; j < base + 41; ++j) {
      if (!a.loss_mask[j]) continue;
      ++targets;
      EXPECT_GE(j - p, base + 1);
      EXPECT_EQ(a.tokens[j], a.tokens[j - p]);
    }
  }
  EXPECT_GT(targets, 37 * 30);
  expect_error([] { make_synthetic_patterns(3, 1, 5, 0); }, {"vocab"});
}
