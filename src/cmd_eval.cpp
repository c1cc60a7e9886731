// cmd_eval.cpp: `frugal eval --model DIR --data FILE [--adapter PEFT_DIR]`: mean next-token
// cross-entropy and perplexity of a model (optionally with a PEFT LoRA adapter).
//   FILE.ids: a token stream cut into non-overlapping windows of seq_len tokens, every next token
//             predicted;
//   FILE.txt: text, tokenized with DIR/tokenizer.json as one stream with no special tokens added,
//             then evaluated exactly as the ids of a .ids file (read_text_tokens);
//   FILE.h5:  a frugal-tokens-v1 dataset (src/dataset.h), each sample its own sequence (first
//             seq_len tokens), only loss-mask targets counted (evaluate_samples).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "src/cli.h"
#include "src/dataset.h"
#include "src/export.h"
#include "src/model.h"
#include "src/peft.h"
#include "src/prepare.h"

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

static bool is_hdf5_file(const std::string& path) {  // HDF5 superblock signature at offset 0
  std::ifstream f(path, std::ios::binary);
  char sig[8] = {};
  f.read(sig, 8);
  return f.gcount() == 8 && std::memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0;
}

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Mean next-token loss and perplexity on a token-id file");
  struct Opts {
    std::string model, data, adapter, quant = "none";
    int seq_len = 0, batch = 1;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model dir (config.json + safetensors)")->required();
  cmd->add_option("--data", o->data,
                  "token file: whitespace-separated ids (.ids), text (.txt, tokenized with DIR/tokenizer.json), or an HDF5 frugal-tokens-v1 dataset (loss masks apply)")
      ->required();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors)");
  cmd->add_option("--seq-len", o->seq_len, "window length (default min(1024, max_position_embeddings))");
  cmd->add_option("--batch", o->batch, "windows per forward");
  cmd->add_option("--quant", o->quant, "frozen linear storage: none | nf4");
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->callback([o]() {
    ModelOptions mo;
    mo.quant = parse_quant_mode(o->quant);
    LlamaModel m = LlamaModel::load(o->model, mo);
    if (!o->adapter.empty()) load_peft_adapter(m, o->adapter);
    const int seq_len = o->seq_len > 0 ? o->seq_len : std::min(1024, m.config().max_position_embeddings);
    const bool h5 = is_hdf5_file(o->data);
    EvalResult r;
    if (h5) {
      TokenDataset ds = TokenDataset::load(o->data);
      r = evaluate_samples(m, ds, seq_len, o->batch, o->data);
    } else {
      const bool txt = std::filesystem::path(o->data).extension() == ".txt";
      std::vector<int32_t> ids =
          txt ? read_text_tokens(o->data, (std::filesystem::path(o->model) / "tokenizer.json").string(),
                                 m.config().vocab_size)
              : read_ids_file(o->data, m.config().vocab_size);
      r = evaluate_windows(m, ids, seq_len, o->batch);
    }
    const double loss = r.stats.mean(), ppl = std::exp(loss);
    const double tps = r.seconds > 0 ? (double)r.tokens / r.seconds : 0.0;
    if (o->json) {
      nlohmann::json j = {{"loss", loss},          {"perplexity", ppl},     {"tokens", r.tokens},
                          {"predicted", r.stats.n_targets}, {"windows", r.windows},
                          {"seq_len", seq_len},    {"seconds", r.seconds},  {"tokens_per_s", tps},
                          {"quant", o->quant},     {"adapter", o->adapter},
                          {"data_format", h5 ? "hdf5" : std::filesystem::path(o->data).extension() == ".txt" ? "text" : "ids"}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      if (h5)
        std::printf("loss %.6f\nperplexity %.4f\ntokens %lld (%lld samples truncated to %d, %lld loss-mask targets)\n"
                    "tokens/s %.1f\n",
                    loss, ppl, (long long)r.tokens, (long long)r.windows, seq_len, (long long)r.stats.n_targets, tps);
      else
        std::printf("loss %.6f\nperplexity %.4f\ntokens %lld (%lld windows of %d, %lld predicted)\n"
                    "tokens/s %.1f\n",
                    loss, ppl, (long long)r.tokens, (long long)r.windows, seq_len,
                    (long long)r.stats.n_targets, tps);
    }
  });
}

}  // namespace frugal
