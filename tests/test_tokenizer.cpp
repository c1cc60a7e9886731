// test_tokenizer.cpp: the native tokenizer against PyPI `tokenizers` (golden ids and decodes made
// by scripts/gen_tokenizer_fixtures.py): GPT-2 and Llama-3 byte-level BPE (real tokenizer.json
// files in ../shared/data/tokenizers), their SmolLM2 / Meta post-processor variants, and a
// byte-fallback BPE trained by the script (Llama-2 layout). Also round trips, special tokens and
// errors on malformed files, and the `frugal tokenize` command.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/cli/cli.h"
#include "src/common.h"
#include "src/text/tokenizer.h"

using frugal::Tokenizer;
using nlohmann::json;

namespace {

const std::string kFixtures = FRUGAL_SOURCE_DIR "/tests/fixtures/tokenizer";
const std::string kShared = FRUGAL_SOURCE_DIR "/../shared/data/tokenizers";

json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  return json::parse(f);
}

std::string base_path(const std::string& base) {
  if (base == "bytefallback") return kFixtures + "/bytefallback.json";
  return kShared + "/" + base + "/tokenizer.json";
}

const json& golden() {
  static const json g = read_json(kFixtures + "/golden.json");
  return g;
}

// The variant's tokenizer: its base file with the same top-level keys patched as in the script.
Tokenizer variant_tokenizer(const json& v) {
  json j = read_json(base_path(v["base"]));
  for (auto it = v["patch"].begin(); it != v["patch"].end(); ++it) j[it.key()] = it.value();
  return Tokenizer::from_json(j, v["name"].get<std::string>());
}

bool have(const std::string& base) { return std::filesystem::exists(base_path(base)); }

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t x : ids) s += std::to_string(x) + " ";
  return s;
}

class Parity : public ::testing::TestWithParam<std::string> {};

const json& find_variant(const std::string& name) {
  for (const auto& v : golden()["variants"])
    if (v["name"] == name) return v;
  throw std::runtime_error("no variant " + name);
}

}  // namespace

// Ids with and without add_special equal tokenizers' for every corpus line, and decode(ids)
// equals tokenizers' decode.
TEST_P(Parity, IdsAndDecodeEqualReference) {
  const json& v = find_variant(GetParam());
  if (!have(v["base"])) GTEST_SKIP() << base_path(v["base"]) << " is absent";
  Tokenizer tok = variant_tokenizer(v);
  const auto& lines = golden()["lines"];
  int mismatches = 0, mismatches_special = 0, decode_mismatches = 0;
  size_t n_ids = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string text = lines[i].get<std::string>();
    auto want = v["ids"][i].get<std::vector<int32_t>>();
    auto want_sp = v["ids_special"][i].get<std::vector<int32_t>>();
    auto got = tok.encode(text);
    auto got_sp = tok.encode(text, true);
    n_ids += want.size();
    if (got != want) {
      ++mismatches;
      ADD_FAILURE() << GetParam() << " line " << i << " " << json(text).dump() << "\n  want "
                    << show(want) << "\n  got  " << show(got);
    }
    if (got_sp != want_sp) {
      ++mismatches_special;
      ADD_FAILURE() << GetParam() << " add_special line " << i << "\n  want " << show(want_sp)
                    << "\n  got  " << show(got_sp);
    }
    std::string dec = tok.decode(want);
    if (dec != v["decoded"][i].get<std::string>()) {
      ++decode_mismatches;
      ADD_FAILURE() << GetParam() << " decode line " << i << ": got " << json(dec).dump()
                    << " want " << v["decoded"][i].dump();
    }
  }
  std::printf("[ %s ] %zu lines, %zu ids: %d id mismatches, %d with add_special, %d decode\n",
              GetParam().c_str(), lines.size(), n_ids, mismatches, mismatches_special,
              decode_mismatches);
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(mismatches_special, 0);
  EXPECT_EQ(decode_mismatches, 0);
}

// Random id sequences (special tokens, byte tokens forming invalid UTF-8) decode as tokenizers
// decodes them (lossy UTF-8, ByteFallback's one U+FFFD per bad byte token, skip_special).
TEST_P(Parity, DecodeRandomIdsEqualsReference) {
  const json& v = find_variant(GetParam());
  if (!have(v["base"])) GTEST_SKIP() << base_path(v["base"]) << " is absent";
  Tokenizer tok = variant_tokenizer(v);
  int mismatches = 0;
  for (const auto& c : v["decode_cases"]) {
    std::string got = tok.decode(c["ids"].get<std::vector<int32_t>>(), c["skip_special"].get<bool>());
    if (got != c["text"].get<std::string>()) {
      ++mismatches;
      ADD_FAILURE() << GetParam() << " decode " << c["ids"].dump() << " skip " << c["skip_special"]
                    << ": got " << json(got).dump() << " want " << c["text"].dump();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << v["decode_cases"].size();
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Parity,
                         ::testing::Values("gpt2", "llama3", "llama3_bos", "gpt2_digits",
                                           "bytefallback", "bytefallback_metaspace"));

// decode(encode(x)) == x. Byte-level: exact for every line (special tokens decode to their text).
// Byte fallback: exact wherever the normalizer's change is undone by the decoder, i.e. for lines
// with no added token (those cut the text into separately normalized parts) and no '▁'; with
// Metaspace (prepend_scheme first) also not for text starting with a space: nothing is prepended
// then, yet the decoder strips one space (the reference does the same; the parity test checks it).
TEST(Tokenizer, RoundTrip) {
  for (const char* name : {"gpt2", "llama3", "gpt2_digits", "bytefallback", "bytefallback_metaspace"}) {
    const json& v = find_variant(name);
    if (!have(v["base"])) continue;
    Tokenizer tok = variant_tokenizer(v);
    bool byte_level = std::string(name).rfind("bytefallback", 0) != 0;
    int checked = 0, failures = 0;
    for (const auto& l : golden()["lines"]) {
      std::string text = l.get<std::string>();
      auto ids = tok.encode(text);
      if (!byte_level) {
        bool has_added = false;
        for (int32_t id : ids) has_added = has_added || id == tok.token_to_id("frugal") || tok.is_special(id);
        if (has_added || text.find("\xE2\x96\x81") != std::string::npos) continue;
        if (std::string(name) == "bytefallback_metaspace" && !text.empty() && text[0] == ' ') continue;
      }
      ++checked;
      if (tok.decode(ids) != text) {
        ++failures;
        ADD_FAILURE() << name << ": " << json(text).dump() << " -> " << json(tok.decode(ids)).dump();
      }
    }
    std::printf("[ %s ] round trip exact on %d lines, %d failures\n", name, checked, failures);
    EXPECT_GT(checked, 90);
  }
}

TEST(Tokenizer, HelloWorld) {
  if (!have("gpt2") || !have("llama3")) GTEST_SKIP() << kShared << " is absent";
  Tokenizer gpt2 = Tokenizer::load(base_path("gpt2"));
  Tokenizer llama3 = Tokenizer::load(base_path("llama3"));
  EXPECT_EQ(gpt2.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(llama3.encode("Hello world"), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(gpt2.decode({15496, 995}), "Hello world");
  EXPECT_EQ(gpt2.vocab_size(), 50257);
  ASSERT_TRUE(gpt2.eos_id().has_value());  // tokenizer_config.json: <|endoftext|>
  EXPECT_EQ(*gpt2.eos_id(), 50256);
  EXPECT_TRUE(gpt2.is_special(50256));
  // The file's post-processor is ByteLevel only: add_special adds nothing (as tokenizers).
  EXPECT_EQ(gpt2.encode("Hello world", true), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(llama3.decode({9906, 1917}), "Hello world");
}

TEST(Tokenizer, SpecialTokensLlama3) {
  if (!have("llama3")) GTEST_SKIP() << kShared << " is absent";
  Tokenizer t = Tokenizer::load(base_path("llama3"));
  EXPECT_EQ(t.vocab_size(), 128256);
  EXPECT_EQ(t.token_to_id("<|begin_of_text|>"), 128000);
  EXPECT_EQ(t.token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(t.token_to_id("no such token"), -1);
  EXPECT_EQ(t.id_to_token(128009), "<|eot_id|>");
  EXPECT_EQ(t.id_to_token(9906), "Hello");
  EXPECT_TRUE(t.is_special(128000));
  EXPECT_FALSE(t.is_special(9906));
  // bos / eos from tokenizer_config.json beside the file.
  ASSERT_TRUE(t.bos_id().has_value());
  ASSERT_TRUE(t.eos_id().has_value());
  EXPECT_EQ(*t.bos_id(), 128000);
  EXPECT_EQ(*t.eos_id(), 128001);
  auto ids = t.encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 128006);
  EXPECT_EQ(ids.back(), 128009);
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "user\n\nHi");
  EXPECT_EQ(t.decode({128000, 9906}, false), "<|begin_of_text|>Hello");
  EXPECT_EQ(t.decode({9906, 999999, -5}), "Hello");  // unknown ids dropped, as the reference
}

TEST(Tokenizer, SpecialTokensByteFallback) {
  Tokenizer t = Tokenizer::load(kFixtures + "/bytefallback.json");
  // No tokenizer_config.json there: BOS comes from the TemplateProcessing post-processor.
  ASSERT_TRUE(t.bos_id().has_value());
  EXPECT_EQ(*t.bos_id(), 1);
  EXPECT_FALSE(t.eos_id().has_value());
  auto plain = t.encode("hello");
  auto with = t.encode("hello", true);
  ASSERT_EQ(with.size(), plain.size() + 1);
  EXPECT_EQ(with[0], 1);
  EXPECT_EQ(std::vector<int32_t>(with.begin() + 1, with.end()), plain);
  // A character the training text never had goes to its UTF-8 bytes: 'ʬ' = CA AC.
  auto ids = t.encode("\xCA\xAC");
  EXPECT_EQ(t.id_to_token(ids.back()), "<0xAC>");
  EXPECT_EQ(t.id_to_token(ids[ids.size() - 2]), "<0xCA>");
  EXPECT_EQ(t.decode(ids), "\xCA\xAC");
  // A lone continuation byte token decodes to U+FFFD, as the reference's ByteFallback decoder.
  EXPECT_EQ(t.decode({t.token_to_id("<0xAC>")}), "\xEF\xBF\xBD");
  EXPECT_EQ(t.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(t.encode("", true), std::vector<int32_t>{1});
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  Tokenizer t = Tokenizer::load(kFixtures + "/bytefallback.json");
  try {
    t.encode("ok \xC3\x28 bad");
    FAIL() << "no error";
  } catch (const frugal::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8 at byte 3"), std::string::npos) << e.what();
  }
}

// Concurrent encodes share the word cache; results must equal the single-threaded ones.
TEST(Tokenizer, ThreadSafe) {
  Tokenizer t = Tokenizer::load(kFixtures + "/bytefallback.json");
  std::vector<std::string> lines;
  for (const auto& l : golden()["lines"]) lines.push_back(l.get<std::string>());
  std::vector<std::vector<int32_t>> want(lines.size()), got(lines.size() * 8);
  for (size_t i = 0; i < lines.size(); ++i) want[i] = Tokenizer::load(kFixtures + "/bytefallback.json").encode(lines[i]);
#pragma omp parallel for num_threads(4) schedule(dynamic)
  for (long k = 0; k < long(got.size()); ++k) got[k] = t.encode(lines[k % lines.size()]);
  for (size_t k = 0; k < got.size(); ++k) ASSERT_EQ(got[k], want[k % lines.size()]) << k;
}

// ---- malformed files: the error names the file and the key ---------------------------------------
namespace {
std::string load_error(const json& j, const std::string& name) {
  std::string path = ::testing::TempDir() + "/" + name;
  {
    std::ofstream f(path);
    f << j.dump();
  }
  try {
    Tokenizer::load(path);
  } catch (const frugal::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    return msg;
  }
  ADD_FAILURE() << name << ": no error";
  return "";
}
}  // namespace

TEST(Tokenizer, MalformedFiles) {
  const json good = read_json(kFixtures + "/bytefallback.json");
  auto contains = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << msg << "' lacks '" << part << "'";
  };
  {
    json j = good;
    j.erase("model");
    contains(load_error(j, "no_model.json"), "'model'");
  }
  {
    json j = good;
    j["model"]["type"] = "WordPiece";
    contains(load_error(j, "wordpiece.json"), "model.type 'WordPiece'");
  }
  {
    json j = good;
    j["model"]["merges"][5] = json::array({"\xE2\x96\x81zzz_not_a_token", "e"});
    contains(load_error(j, "bad_merge_token.json"), "model.merges[5]");
  }
  {
    json j = good;
    j["model"]["merges"][3] = "a b c";
    contains(load_error(j, "bad_merge_string.json"), "model.merges[3]");
  }
  {
    json j = good;
    j["model"]["merges"][2] = json::array({"a"});
    contains(load_error(j, "bad_merge_pair.json"), "model.merges[2]");
  }
  {
    json j = good;
    j["model"].erase("vocab");
    contains(load_error(j, "no_vocab.json"), "model.vocab");
  }
  {
    json j = good;
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
    contains(load_error(j, "bad_regex.json"), "pre_tokenizer");
  }
  {
    json j = good;
    j["normalizer"] = {{"type", "NFKC"}};
    contains(load_error(j, "nfkc.json"), "normalizer.type 'NFKC'");
  }
  {
    json j = good;
    j["added_tokens"][1].erase("content");
    contains(load_error(j, "added_no_content.json"), "added_tokens[1].content");
  }
  {
    std::string path = ::testing::TempDir() + "/not_json.json";
    std::ofstream(path) << "{\"model\": ";
    try {
      Tokenizer::load(path);
      ADD_FAILURE() << "no error";
    } catch (const frugal::Error& e) {
      contains(e.what(), path + ": invalid JSON");
    }
  }
}

// ---- frugal tokenize ------------------------------------------------------------------------------
namespace {
// Runs `frugal tokenize ARGS` in-process (the subcommand as main() registers it); returns stdout.
std::string run_cli(std::vector<std::string> args) {
  CLI::App app;
  frugal::register_tokenize(app);
  args.insert(args.begin(), "tokenize");
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments in reverse order
  ::testing::internal::CaptureStdout();
  try {
    app.parse(args);
  } catch (...) {
    ::testing::internal::GetCapturedStdout();
    throw;
  }
  return ::testing::internal::GetCapturedStdout();
}
}  // namespace

TEST(TokenizeCommand, PrintsIdsPerLineAndNamesBadLines) {
  const std::string tok_path = kFixtures + "/bytefallback.json";
  Tokenizer t = Tokenizer::load(tok_path);
  std::vector<std::string> texts = {"hello world", "", "tabs\tand \"quotes\" <s> é 日本"};
  std::string path = ::testing::TempDir() + "/tok_in.jsonl";
  {
    std::ofstream f(path);
    for (const auto& s : texts) f << json{{"text", s}, {"id", 7}}.dump() << "\n";
  }
  for (bool special : {false, true}) {
    std::vector<std::string> args = {"--tokenizer", tok_path, "--input", path};
    if (special) args.push_back("--add-special");
    std::string out = run_cli(args);
    std::string want;
    for (const auto& s : texts) {
      auto ids = t.encode(s, special);
      for (size_t k = 0; k < ids.size(); ++k) {
        if (k) want += " ";
        want += std::to_string(ids[k]);
      }
      want += "\n";
    }
    EXPECT_EQ(out, want);
  }
  // A bad line: the error names the file and the line number.
  std::string bad = ::testing::TempDir() + "/tok_bad.jsonl";
  {
    std::ofstream f(bad);
    f << "{\"text\": \"fine\"}\n{\"text\": \"unterminated}\n{\"text\": \"fine\"}\n";
  }
  try {
    run_cli({"--tokenizer", tok_path, "--input", bad});
    ADD_FAILURE() << "no error";
  } catch (const frugal::Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad + ":2: invalid JSON"), std::string::npos) << e.what();
  }
  {
    std::ofstream f(bad);
    f << "{\"text\": \"fine\"}\n{\"text\": \"fine\"}\n[1, 2]\n";
  }
  try {
    run_cli({"--tokenizer", tok_path, "--input", bad});
    ADD_FAILURE() << "no error";
  } catch (const frugal::Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad + ":3: expected a JSON object"), std::string::npos) << e.what();
  }
}
