// cmd_tokenize.cpp: `frugal tokenize --tokenizer PATH --input FILE.jsonl [--add-special]`.
// Prints, for each input line's "text", one line of space-separated ids (no special tokens unless
// --add-special). Lines are encoded in chunks across OpenMP threads and printed in order; a bad
// line is an error naming the file and line number. --stats reports throughput on stderr.
#include <omp.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/cli/cli.h"
#include "src/common.h"
#include "src/text/tokenizer.h"

namespace frugal {
namespace {

struct TokenizeArgs {
  std::string tokenizer, input;
  bool add_special = false, stats = false;
};

// PATH may be tokenizer.json itself or the model directory holding it.
std::string tokenizer_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) return (std::filesystem::path(path) / "tokenizer.json").string();
  return path;
}

void run_tokenize(const TokenizeArgs& a) {
  Tokenizer tok = Tokenizer::load(tokenizer_file(a.tokenizer));
  std::ifstream in(a.input, std::ios::binary);
  if (!in) fail(a.input, ": cannot open");

  const size_t kChunk = 8192;
  std::vector<std::string> raw;
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::string> errors;
  std::string out;
  size_t line_no = 0, n_lines = 0, n_bytes = 0, n_tokens = 0;
  double encode_s = 0, encode_cpu_s = 0;  // wall, and CPU of all threads (fair on a busy box)
  bool eof = false;
  while (!eof) {
    raw.clear();
    std::string line;
    while (raw.size() < kChunk && std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      raw.push_back(std::move(line));
    }
    eof = raw.size() < kChunk;
    size_t n = raw.size();
    texts.assign(n, std::string());
    ids.assign(n, {});
    errors.assign(n, std::string());
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
#pragma omp parallel for schedule(dynamic, 64)
    for (long i = 0; i < long(n); ++i) {
      // Exceptions may not leave an OpenMP region: keep the message, report the first in order.
      try {
        if (raw[i].find_first_not_of(" \t") == std::string::npos) {
          errors[i] = "empty line (expected a JSON object with a \"text\" string)";
          continue;
        }
        nlohmann::json j = nlohmann::json::parse(raw[i]);
        if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
          errors[i] = "expected a JSON object with a \"text\" string";
          continue;
        }
        texts[i] = j["text"].get<std::string>();
        ids[i] = tok.encode(texts[i], a.add_special);
      } catch (const nlohmann::json::exception& e) {
        errors[i] = str("invalid JSON: ", e.what());
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
    encode_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    encode_cpu_s += double(std::clock() - c0) / CLOCKS_PER_SEC;
    out.clear();
    for (size_t i = 0; i < n; ++i) {
      if (!errors[i].empty()) {
        std::fwrite(out.data(), 1, out.size(), stdout);  // lines before the bad one stay printed
        std::fflush(stdout);
        fail(a.input, ":", line_no + i + 1, ": ", errors[i]);
      }
      for (size_t k = 0; k < ids[i].size(); ++k) {
        if (k) out += ' ';
        out += std::to_string(ids[i][k]);
      }
      out += '\n';
      n_bytes += texts[i].size();
      n_tokens += ids[i].size();
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    line_no += n;
    n_lines += n;
  }
  std::fflush(stdout);
  if (a.stats)
    std::fprintf(stderr,
                 "tokenize: %zu lines, %zu bytes of text, %zu tokens; parse+encode on %d threads: "
                 "%.3f s wall, %.2f MB/s; %.3f s CPU, %.2f MB/s per CPU second\n",
                 n_lines, n_bytes, n_tokens, omp_get_max_threads(), encode_s,
                 encode_s > 0 ? n_bytes / encode_s / 1e6 : 0.0, encode_cpu_s,
                 encode_cpu_s > 0 ? n_bytes / encode_cpu_s / 1e6 : 0.0);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* sub = app.add_subcommand(
      "tokenize", "Print the token ids of each JSONL line's \"text\" (tokenizer.json, as HF tokenizers)");
  sub->add_option("--tokenizer", args->tokenizer, "tokenizer.json, or a model directory holding it")
      ->required();
  sub->add_option("--input", args->input, "JSONL file, one {\"text\": ...} object per line")->required();
  sub->add_flag("--add-special", args->add_special, "add the post-processor's special tokens (e.g. BOS)");
  sub->add_flag("--stats", args->stats, "print lines, tokens and MB/s to stderr");
  sub->callback([args] { run_tokenize(*args); });
}

}  // namespace frugal
