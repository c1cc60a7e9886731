// cmd_eval.cpp: `frugal eval --model DIR --data FILE [--adapter PEFT_DIR]`: mean next-token
// cross-entropy and perplexity of a model (optionally with a PEFT LoRA adapter).
//   FILE.ids: a token stream cut into non-overlapping windows of seq_len tokens, every next token
//             predicted;
//   FILE.txt: text, tokenized with DIR/tokenizer.json as one stream with no special tokens added,
//             then evaluated exactly as the ids of a .ids file (read_text_tokens);
//   FILE.h5:  a frugal-tokens-v1 dataset (src/io/dataset.h), each sample its own sequence (first
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

#include "src/cli/cli.h"
#include "src/io/dataset.h"
#include "src/train/evaluate.h"
#include "src/train/export.h"
#include "src/model/model.h"
#include "src/model/peft.h"
#include "src/text/prepare.h"

namespace frugal {

static bool is_hdf5_file(const std::string& path) {  // HDF5 superblock signature at offset 0
  std::ifstream f(path, std::ios::binary);
  char sig[8] = {};
  f.read(sig, 8);
  return f.gcount() == 8 && std::memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0;
}

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Mean next-token loss and perplexity on a token-id file");
  struct Opts {
    std::string model, data, adapter, quant = "none", device = "cpu";
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
  cmd->add_option("--device", o->device, "backend the ops run on: cpu | cuda")->capture_default_str();
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->callback([o]() {
    ModelOptions mo;
    mo.quant = parse_quant_mode(o->quant);
    mo.backend = backend_by_name(o->device).name();  // an unbuilt backend fails before loading
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
