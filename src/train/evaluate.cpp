// evaluate.cpp: see evaluate.h.
#include "src/train/evaluate.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>

namespace frugal {

std::vector<int32_t> read_ids_file(const std::string& path, int vocab) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open token file ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string s = ss.str();
  std::vector<int32_t> ids;
  size_t i = 0, line = 1;
  while (true) {
    while (i < s.size() && std::isspace((unsigned char)s[i])) line += s[i++] == '\n';
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && !std::isspace((unsigned char)s[j])) j++;
    const std::string tok = s.substr(i, j - i);
    bool digits = !tok.empty() && tok.size() <= 10;
    for (char c : tok) digits = digits && c >= '0' && c <= '9';
    if (!digits)
      fail(path, ": token ", ids.size(), " (line ", line, ") '", tok.substr(0, 32),
           "' is not a non-negative integer");
    const long long v = std::stoll(tok);
    if (v >= vocab)
      fail(path, ": token ", ids.size(), " (line ", line, ") id ", v, " is outside the vocabulary [0, ",
           vocab, ")");
    ids.push_back((int32_t)v);
    i = j;
  }
  return ids;
}

EvalResult evaluate_windows(LlamaModel& m, const std::vector<int32_t>& ids, int seq_len, int batch) {
  if (seq_len < 2) fail("eval: --seq-len must be at least 2, got ", seq_len);
  if (batch < 1) fail("eval: --batch must be at least 1, got ", batch);
  EvalResult r;
  r.windows = (int64_t)ids.size() / seq_len;
  if (r.windows == 0)
    fail("eval: ", ids.size(), " tokens do not fill one window of --seq-len ", seq_len);
  r.tokens = r.windows * seq_len;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < r.windows; w += batch) {
    const int B = (int)std::min<int64_t>(batch, r.windows - w);
    const int32_t* x = ids.data() + w * seq_len;  // [B, seq_len]: consecutive windows
    std::vector<int32_t> targets = next_token_targets(x, B, seq_len);
    Batch b;
    b.B = B;
    b.T = seq_len;
    b.ids = x;
    b.targets = targets.data();
    r.stats += m.forward(b);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

EvalResult evaluate_samples(LlamaModel& m, const TokenDataset& ds, int seq_len, int batch, const std::string& where) {
  if (seq_len < 2) fail("eval: --seq-len must be at least 2, got ", seq_len);
  if (batch < 1) fail("eval: --batch must be at least 1, got ", batch);
  const int64_t V = m.config().vocab_size, S = ds.num_samples();
  EvalResult r;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids, targets;
  for (int64_t s0 = 0; s0 < S;) {
    // The next `batch` samples with at least 2 tokens (shorter ones predict nothing).
    std::vector<int64_t> rows;
    int T = 0;
    for (; s0 < S && (int)rows.size() < batch; ++s0) {
      const int64_t len = std::min<int64_t>(ds.offsets[s0 + 1] - ds.offsets[s0], seq_len);
      if (len < 2) continue;
      rows.push_back(s0);
      T = std::max<int>(T, (int)len);
    }
    if (rows.empty()) break;
    const int B = (int)rows.size();
    ids.assign((size_t)B * T, ds.pad_id);        // [B, T], right-padded
    targets.assign((size_t)B * T, kIgnoreIndex);  // [B, T] shifted targets
    for (int b = 0; b < B; ++b) {
      const int64_t off = ds.offsets[rows[b]];
      const int64_t len = std::min<int64_t>(ds.offsets[rows[b] + 1] - off, seq_len);
      for (int64_t t = 0; t < len; ++t) {
        const int32_t id = ds.tokens[off + t];
        if (id < 0 || id >= V)
          fail(where, ": sample ", rows[b], " token ", t, " id ", id, " is outside the model vocabulary [0, ", V, ")");
        ids[(size_t)b * T + t] = id;
        if (t + 1 < len && ds.loss_mask[off + t + 1]) targets[(size_t)b * T + t] = ds.tokens[off + t + 1];
      }
      r.tokens += len;
    }
    if (ds.pad_id < 0 || ds.pad_id >= V) fail(where, ": pad_id ", ds.pad_id, " is outside the model vocabulary");
    Batch bt;
    bt.B = B;
    bt.T = T;
    bt.ids = ids.data();
    bt.targets = targets.data();
    r.stats += m.forward(bt);
    r.windows += B;
  }
  if (r.stats.n_targets == 0) fail(where, ": no loss-mask targets within the first ", seq_len, " tokens of any sample");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace frugal
