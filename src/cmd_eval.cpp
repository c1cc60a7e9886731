// cmd_eval.cpp: `frugal eval --model DIR --data FILE.ids`: mean next-token cross-entropy and
// perplexity of a model on a token stream cut into non-overlapping windows of seq_len tokens.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "src/cli.h"
#include "src/model.h"

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

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Mean next-token loss and perplexity on a token-id file");
  struct Opts {
    std::string model, data, quant = "none";
    int seq_len = 0, batch = 1;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model dir (config.json + safetensors)")->required();
  cmd->add_option("--data", o->data, "token file: whitespace-separated ids")->required();
  cmd->add_option("--seq-len", o->seq_len, "window length (default min(1024, max_position_embeddings))");
  cmd->add_option("--batch", o->batch, "windows per forward");
  cmd->add_option("--quant", o->quant, "frozen linear storage: none | nf4");
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->callback([o]() {
    ModelOptions mo;
    mo.quant = parse_quant_mode(o->quant);
    LlamaModel m = LlamaModel::load(o->model, mo);
    const int seq_len = o->seq_len > 0 ? o->seq_len : std::min(1024, m.config().max_position_embeddings);
    std::vector<int32_t> ids = read_ids_file(o->data, m.config().vocab_size);
    EvalResult r = evaluate_windows(m, ids, seq_len, o->batch);
    const double loss = r.stats.mean(), ppl = std::exp(loss);
    const double tps = r.seconds > 0 ? (double)r.tokens / r.seconds : 0.0;
    if (o->json) {
      nlohmann::json j = {{"loss", loss},          {"perplexity", ppl},     {"tokens", r.tokens},
                          {"predicted", r.stats.n_targets}, {"windows", r.windows},
                          {"seq_len", seq_len},    {"seconds", r.seconds},  {"tokens_per_s", tps},
                          {"quant", o->quant}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("loss %.6f\nperplexity %.4f\ntokens %lld (%lld windows of %d, %lld predicted)\n"
                  "tokens/s %.1f\n",
                  loss, ppl, (long long)r.tokens, (long long)r.windows, seq_len,
                  (long long)r.stats.n_targets, tps);
    }
  });
}

}  // namespace frugal
