// cmd_prepare.cpp: `frugal prepare --tokenizer PATH --input FILE --format text|alpaca|chat
// [--template llama3|chatml|alpaca|auto] --out FILE.h5 [--seq-len N --pack] [--skip-bad]
// [--max-samples N]`: see src/text/prepare.h.
#include <cstdio>
#include <memory>

#include "src/cli/cli.h"
#include "src/text/prepare.h"

namespace frugal {

void register_prepare(CLI::App& app) {
  auto* cmd = app.add_subcommand("prepare", "JSONL/text -> HDF5 token dataset with SFT loss masks");
  struct Args {
    PrepareOptions o;
    std::string format = "text";
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokenizer", a->o.tokenizer, "tokenizer.json or the model dir holding it")->required();
  cmd->add_option("--input", a->o.input, "JSONL input (text: {\"text\"}; alpaca: {instruction,input,output}; "
                                         "chat: {messages}), or .txt for --format text (one document per line)")
      ->required();
  cmd->add_option("--format", a->format, "text | alpaca | chat")->required();
  cmd->add_option("--template", a->o.template_name,
                  "chat template: llama3 | chatml | alpaca | auto (from tokenizer_config.json; alpaca data: alpaca)");
  cmd->add_option("--out", a->o.out, "output HDF5 dataset (frugal-tokens-v1)")->required();
  cmd->add_option("--seq-len", a->o.seq_len, "report samples longer than this (the trainer truncates them unless packing)");
  cmd->add_flag("--pack", a->o.pack, "samples will be packed (done by the trainer at load time: recipe data.pack)");
  cmd->add_flag("--skip-bad", a->o.skip_bad, "skip malformed lines and count them instead of failing");
  cmd->add_option("--max-samples", a->o.max_samples, "stop after N samples");
  cmd->callback([a]() {
    a->o.format = parse_prepare_format(a->format);
    const PrepareStats st = run_prepare(a->o);
    std::printf("%s: %lld samples, %lld tokens (%lld trained, %.1f%%) from %lld lines\n", a->o.out.c_str(),
                (long long)st.samples, (long long)st.tokens, (long long)st.trained,
                st.tokens ? 100.0 * st.trained / st.tokens : 0.0, (long long)st.lines);
    if (a->o.skip_bad || st.skipped)
      std::printf("skipped %lld malformed lines%s%s\n", (long long)st.skipped, st.skipped ? "; first: " : "",
                  st.first_skip.c_str());
    if (a->o.seq_len > 0)
      std::printf("%lld samples longer than --seq-len %d (%s)\n", (long long)st.longer_than_seq_len, a->o.seq_len,
                  a->o.pack ? "packing splits them across rows" : "truncated by the trainer unless data.pack");
  });
}

}  // namespace frugal
