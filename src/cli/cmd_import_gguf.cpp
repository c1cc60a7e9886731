// cmd_import_gguf.cpp: `frugal import-gguf FILE.gguf --out DIR [--force] [-v]`: a llama.cpp GGUF
// (architecture llama) as a Hugging Face model dir (config.json, bf16 safetensors, tokenizer.json,
// tokenizer_config.json). The work is import_gguf() in src/cli/import_gguf.cpp.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "src/cli/cli.h"
#include "src/cli/import_gguf.h"

namespace frugal {

void register_import_gguf(CLI::App& app) {
  struct Args {
    std::string gguf, out;
    bool force = false, verbose = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand("import-gguf", "convert a llama.cpp GGUF (llama) into a Hugging Face model dir (bf16)");
  sub->add_option("gguf", a->gguf, "GGUF file")->required()->check(CLI::ExistingFile);
  sub->add_option("--out", a->out, "output directory (must be empty or absent)")->required();
  sub->add_flag("--force", a->force, "overwrite a non-empty output directory");
  sub->add_flag("-v,--verbose", a->verbose, "print one line per tensor");
  sub->callback([a]() {
    ImportOptions opt;
    opt.force = a->force;
    opt.verbose = a->verbose;
    auto t0 = std::chrono::steady_clock::now();
    const LlamaConfig c = import_gguf(a->gguf, a->out, opt);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("frugal import-gguf: %s -> %s: %lld parameters, %d layers, hidden %d, heads %d/%d, vocab %d%s, %.1f s\n",
                a->gguf.c_str(), a->out.c_str(), (long long)c.num_parameters(), c.num_hidden_layers, c.hidden_size,
                c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
                c.tie_word_embeddings ? " (tied embeddings)" : "", sec);
  });
}

}  // namespace frugal
