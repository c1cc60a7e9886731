// test_prepare.cpp: chat templates, `frugal prepare` and `frugal eval --data FILE.txt`.
//
// What each check is against:
//  - renderings: tests/fixtures/chat/chat_templates.json, made by scripts/gen_chat_fixtures.py
//    with transformers' apply_chat_template (Meta's Llama-3 template + tokenizer, SmolLM2's
//    ChatML template): the text for both templates, and for Llama-3 also the ids (pieces
//    tokenized one by one by our tokenizer must give transformers' ids for the whole string);
//  - masks: recomputed naively here from the token ids alone (chat: 1 from after each
//    "<|start_header_id|>assistant<|end_header_id|>\n\n" up to and including its <|eot_id|>;
//    alpaca: the Alpaca prompt is written out literally here, not taken from chat_template.cpp);
//  - malformed lines: the error names FILE:LINE; --skip-bad counts exactly the bad lines;
//  - eval on text: the ids read from a .txt equal PyPI tokenizers' ids from
//    tests/fixtures/tokenizer/golden.json, and the loss equals evaluating those reference ids.
// Tokenizers come from ../shared/data/tokenizers (llama3, gpt2); tests skip when absent.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/text/chat_template.h"
#include "src/model/init.h"
#include "src/model/model.h"
#include "src/train/evaluate.h"
#include "src/text/prepare.h"
#include "src/text/tokenizer.h"

using namespace frugal;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kShared = FRUGAL_SOURCE_DIR "/../shared/data/tokenizers";
const std::string kLlama3 = kShared + "/llama3/tokenizer.json";
const std::string kGpt2 = kShared + "/gpt2/tokenizer.json";

json read_json(const std::string& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error("cannot open " + p);
  return json::parse(f);
}

const json& fixture() {
  static const json j = read_json(FRUGAL_SOURCE_DIR "/tests/fixtures/chat/chat_templates.json");
  return j;
}

const Tokenizer& llama3() {
  static const Tokenizer t = Tokenizer::load(kLlama3);
  return t;
}

std::vector<ChatMessage> messages(const json& ms) {
  std::vector<ChatMessage> out;
  for (const json& m : ms) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("frugal_test_prepare_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

void write_file(const std::string& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

const char* kLlama3Gen = "<|start_header_id|>assistant<|end_header_id|>\n\n";

}  // namespace

// Meta's Llama-3.0 template appends the generation prompt even with add_generation_prompt=false;
// ours appends it only when asked (a training sample must end after the last reply), so for those
// cases the reference equals our rendering + the generation prompt.
TEST(ChatTemplate, Llama3MatchesTransformersTextAndIds) {
  if (!fs::exists(kLlama3)) GTEST_SKIP() << kLlama3 << " is absent";
  int n = 0;
  for (const json& c : fixture()["cases"]) {
    if (c["template"] != "llama3") continue;
    SCOPED_TRACE(c["name"].get<std::string>() + (c["add_generation_prompt"].get<bool>() ? " +gen" : ""));
    const bool gen = c["add_generation_prompt"];
    const auto msgs = messages(c["messages"]);
    const std::string bos = c["bos_text"];
    std::vector<RenderedPiece> pieces = render_chat(ChatTemplate::Llama3, msgs, gen, bos);
    if (!gen) pieces.push_back({kLlama3Gen, false});
    std::string text;
    for (const auto& p : pieces) text += p.text;
    EXPECT_EQ(text, c["text"].get<std::string>());
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    append_pieces(llama3(), pieces, ids, mask);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    // The trained text is exactly each trimmed assistant content followed by <|eot_id|>.
    std::string trained, expect;
    for (const auto& p : pieces)
      if (p.train) trained += p.text;
    for (const auto& m : msgs)
      if (m.role == "assistant") {
        std::string s = m.content;
        s.erase(0, s.find_first_not_of(" \n"));
        s.erase(s.find_last_not_of(" \n") + 1);
        expect += s + "<|eot_id|>";
      }
    EXPECT_EQ(trained, expect);
    ++n;
  }
  EXPECT_EQ(n, 8);
}

TEST(ChatTemplate, ChatMLMatchesTransformersText) {
  int n = 0;
  for (const json& c : fixture()["cases"]) {
    if (c["template"] != "chatml") continue;
    SCOPED_TRACE(c["name"].get<std::string>() + (c["add_generation_prompt"].get<bool>() ? " +gen" : ""));
    EXPECT_EQ(render_chat_text(ChatTemplate::ChatML, messages(c["messages"]), c["add_generation_prompt"], ""),
              c["text"].get<std::string>());
    ++n;
  }
  EXPECT_EQ(n, 8);
}

TEST(ChatTemplate, AutoDetectionAndErrors) {
  TempDir d("auto");
  write_file(d / "tokenizer_config.json",
             json{{"chat_template", fixture()["chatml_chat_template"]}}.dump());
  EXPECT_EQ(parse_chat_template("auto", d / "tokenizer.json"), ChatTemplate::ChatML);
  write_file(d / "tokenizer_config.json", json{{"chat_template", fixture()["llama3_chat_template"]}}.dump());
  EXPECT_EQ(parse_chat_template("auto", d.path.string()), ChatTemplate::Llama3);
  write_file(d / "tokenizer_config.json", json{{"bos_token", "<s>"}}.dump());
  try {
    parse_chat_template("auto", d.path.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_chat_template("vicuna", d.path.string()), Error);
  EXPECT_THROW(render_chat(ChatTemplate::ChatML, {{"bot", "x"}}, false, ""), Error);
}

// Chat data with the Llama-3 template: masks recomputed from ids by scanning for the assistant
// header; ids equal the whole rendered conversation tokenized at once.
TEST(Prepare, ChatMasksLlama3) {
  if (!fs::exists(kLlama3)) GTEST_SKIP() << kLlama3 << " is absent";
  TempDir d("chat");
  write_file(d / "in.jsonl",
             "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
             "{\"role\":\"assistant\",\"content\":\"Hello there.\"},{\"role\":\"user\",\"content\":\"Bye\"},"
             "{\"role\":\"assistant\",\"content\":\"Farewell, 42 times.\"}]}\n"
             "\n"
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Say A\"},{\"role\":\"assistant\",\"content\":\"A\"}]}\n");
  PrepareOptions o;
  o.input = d / "in.jsonl";
  o.format = PrepareFormat::Chat;
  o.template_name = "llama3";
  PrepareStats st;
  TokenDataset ds = prepare_dataset(llama3(), kLlama3, o, &st);
  ASSERT_EQ(ds.num_samples(), 2);
  EXPECT_EQ(st.lines, 3);
  EXPECT_EQ(ds.eos_id, *llama3().eos_id());
  EXPECT_EQ(ds.vocab_size, llama3().vocab_size());
  const std::vector<int32_t> hdr = llama3().encode(kLlama3Gen, false);
  const int32_t eot = llama3().token_to_id("<|eot_id|>");
  ASSERT_EQ(hdr.size(), 4u);
  int64_t trained = 0;
  for (int64_t s = 0; s < 2; ++s) {
    const std::vector<int32_t> ids(ds.tokens.begin() + ds.offsets[s], ds.tokens.begin() + ds.offsets[s + 1]);
    const std::vector<uint8_t> mask(ds.loss_mask.begin() + ds.offsets[s], ds.loss_mask.begin() + ds.offsets[s + 1]);
    std::vector<uint8_t> expect(ids.size(), 0);
    for (size_t i = 0; i + hdr.size() <= ids.size(); ++i) {
      if (!std::equal(hdr.begin(), hdr.end(), ids.begin() + i)) continue;
      size_t j = i + hdr.size();
      for (; j < ids.size() && ids[j] != eot; ++j) expect[j] = 1;
      ASSERT_LT(j, ids.size());
      expect[j] = 1;  // the end token is a target: the model learns to stop
    }
    EXPECT_EQ(mask, expect) << "sample " << s;
    for (uint8_t m : expect) trained += m;
    EXPECT_EQ(ids.front(), *llama3().bos_id());
    EXPECT_EQ(ids.back(), eot);
  }
  EXPECT_EQ(st.trained, trained);
  // Tokenizing piece by piece gives the same ids as the whole string here.
  const std::string whole = render_chat_text(ChatTemplate::Llama3, {{"user", "Say A"}, {"assistant", "A"}}, false,
                                             "<|begin_of_text|>");
  const std::vector<int32_t> s1(ds.tokens.begin() + ds.offsets[1], ds.tokens.end());
  EXPECT_EQ(s1, llama3().encode(whole, false));
}

// Alpaca data: the prompt (written out here) masked, output + EOS trained; text: the
// post-processor's prefix (BOS for Meta's own file; ../shared's llama3 file has a ByteLevel
// post-processor, so none) masked, text + EOS trained.
TEST(Prepare, AlpacaAndTextMasks) {
  if (!fs::exists(kLlama3)) GTEST_SKIP() << kLlama3 << " is absent";
  const Tokenizer& t = llama3();
  const int32_t bos = *t.bos_id(), eos = *t.eos_id();
  const std::vector<int32_t> prefix = t.encode("", true);  // what add_special puts in front
  TempDir d("alpaca");
  write_file(d / "a.jsonl",
             "{\"instruction\":\"Define ambition.\",\"output\":\"An overmastering desire to be vilified.\"}\n"
             "{\"instruction\":\"Translate.\",\"input\":\"chat\",\"output\":\"cat\"}\n");
  PrepareOptions o;
  o.input = d / "a.jsonl";
  o.format = PrepareFormat::Alpaca;
  TokenDataset ds = prepare_dataset(t, kLlama3, o, nullptr);
  ASSERT_EQ(ds.num_samples(), 2);
  const std::string p0 =
      "Below is an instruction that describes a task. Write a response that appropriately completes the "
      "request.\n\n### Instruction:\nDefine ambition.\n\n### Response:\n";
  const std::string p1 =
      "Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
      "### Input:\nchat\n\n### Response:\n";
  const std::string outs[2] = {"An overmastering desire to be vilified.", "cat"};
  const std::string prompts[2] = {p0, p1};
  for (int s = 0; s < 2; ++s) {
    std::vector<int32_t> ids = prefix, pr = t.encode(prompts[s]), out = t.encode(outs[s]);
    ids.insert(ids.end(), pr.begin(), pr.end());
    std::vector<uint8_t> mask(ids.size(), 0);
    ids.insert(ids.end(), out.begin(), out.end());
    ids.push_back(eos);
    mask.resize(ids.size(), 1);
    EXPECT_EQ(std::vector<int32_t>(ds.tokens.begin() + ds.offsets[s], ds.tokens.begin() + ds.offsets[s + 1]), ids);
    EXPECT_EQ(std::vector<uint8_t>(ds.loss_mask.begin() + ds.offsets[s], ds.loss_mask.begin() + ds.offsets[s + 1]),
              mask);
  }

  // Text: JSONL and .txt (one document per line) give the same samples.
  write_file(d / "t.jsonl", "{\"text\":\"Hello world\"}\n{\"text\":\"Zürich, 1999\"}\n");
  write_file(d / "t.txt", "Hello world\nZürich, 1999\n");
  o.format = PrepareFormat::Text;
  o.input = d / "t.jsonl";
  TokenDataset tj = prepare_dataset(t, kLlama3, o, nullptr);
  o.input = d / "t.txt";
  TokenDataset tt = prepare_dataset(t, kLlama3, o, nullptr);
  EXPECT_EQ(tj.tokens, tt.tokens);
  EXPECT_EQ(tj.offsets, tt.offsets);
  std::vector<int32_t> ids = prefix, a = t.encode("Hello world"), b = t.encode("Zürich, 1999");
  std::vector<uint8_t> mask(prefix.size(), 0);
  ids.insert(ids.end(), a.begin(), a.end());
  ids.push_back(eos);
  mask.resize(ids.size(), 1);
  const size_t first = ids.size();
  ids.insert(ids.end(), prefix.begin(), prefix.end());
  mask.resize(ids.size(), 0);
  ids.insert(ids.end(), b.begin(), b.end());
  ids.push_back(eos);
  mask.resize(ids.size(), 1);
  EXPECT_EQ(tj.tokens, ids);
  EXPECT_EQ(tj.loss_mask, mask);
  EXPECT_EQ(tj.offsets, (std::vector<int64_t>{0, (int64_t)first, (int64_t)ids.size()}));

  // Through the file: run_prepare writes what TokenDataset::load reads back; --max-samples stops.
  o.input = d / "t.jsonl";
  o.tokenizer = kLlama3;
  o.out = d / "t.h5";
  o.max_samples = 1;
  run_prepare(o);
  TokenDataset back = TokenDataset::load(o.out);
  EXPECT_EQ(back.tokens, std::vector<int32_t>(ids.begin(), ids.begin() + first));
  EXPECT_EQ(back.bos_id, bos);
}

// Each malformed line fails naming FILE:LINE; with skip_bad they are counted and the good ones kept.
TEST(Prepare, MalformedLines) {
  if (!fs::exists(kLlama3)) GTEST_SKIP() << kLlama3 << " is absent";
  const std::string good = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"}]}";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"messages\": [", "invalid JSON"},
      {"[1, 2]", "expected a JSON object"},
      {"{\"text\":\"x\"}", "missing field \"messages\""},
      {"{\"messages\":\"hi\"}", "must be an array"},
      {"{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "content must be a string"},
      {"{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", "unknown role 'bot'"},
      {"{\"messages\":[{\"role\":\"user\",\"content\":\"only a question\"}]}", "no assistant message"},
  };
  TempDir d("bad");
  std::string all = good + "\n";
  for (size_t k = 0; k < bad.size(); ++k) {
    SCOPED_TRACE(bad[k].first);
    const std::string p = d / ("b" + std::to_string(k) + ".jsonl");
    write_file(p, good + "\n" + good + "\n" + bad[k].first + "\n" + good + "\n");
    all += bad[k].first + "\n" + good + "\n";
    PrepareOptions o;
    o.input = p;
    o.format = PrepareFormat::Chat;
    o.template_name = "llama3";
    try {
      prepare_dataset(llama3(), kLlama3, o, nullptr);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find(p + ":3: "), std::string::npos) << w;
      EXPECT_NE(w.find(bad[k].second), std::string::npos) << w;
    }
  }
  PrepareOptions o;
  o.input = d / "all.jsonl";
  write_file(o.input, all);
  o.format = PrepareFormat::Chat;
  o.template_name = "llama3";
  o.skip_bad = true;
  PrepareStats st;
  TokenDataset ds = prepare_dataset(llama3(), kLlama3, o, &st);
  EXPECT_EQ(st.skipped, (int64_t)bad.size());
  EXPECT_EQ(ds.num_samples(), (int64_t)bad.size() + 1);
  EXPECT_EQ(st.first_skip.rfind(o.input + ":2: invalid JSON", 0), 0u) << st.first_skip;
  // Alpaca: missing / wrongly typed fields.
  write_file(d / "a.jsonl", "{\"instruction\":\"x\",\"output\":\"y\"}\n{\"instruction\":\"x\",\"output\":3}\n");
  o.input = d / "a.jsonl";
  o.format = PrepareFormat::Alpaca;
  o.skip_bad = false;
  EXPECT_THROW(
      {
        try {
          prepare_dataset(llama3(), kLlama3, o, nullptr);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(":2: field \"output\" must be a string"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
}

// eval --data FILE.txt: the ids equal PyPI tokenizers' (golden fixture, gpt2), and the loss on
// them equals the loss on a .ids file of those reference ids.
TEST(EvalText, TxtEqualsIdsOfTheSameTokens) {
  if (!fs::exists(kGpt2)) GTEST_SKIP() << kGpt2 << " is absent";
  const json g = read_json(FRUGAL_SOURCE_DIR "/tests/fixtures/tokenizer/golden.json");
  const json* v = nullptr;
  for (const json& x : g["variants"])
    if (x["name"] == "gpt2") v = &x;
  ASSERT_NE(v, nullptr);
  const std::string line = g["lines"][3];
  const std::vector<int32_t> ref = (*v)["ids"][3].get<std::vector<int32_t>>();
  ASSERT_GE(ref.size(), 14u);

  TempDir d("eval");
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 23;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.max_position_embeddings = 32;
  c.rope.head_dim = c.head_dim;
  c.rope.max_position_embeddings = c.max_position_embeddings;
  c.initializer_range = 0.5f;
  InitOptions io;
  io.tokenizer = kGpt2;  // vocab 50257 from the tokenizer, copied into the model dir
  init_model(c, d / "m", 3, io);
  LlamaModel m = LlamaModel::load(d / "m");

  write_file(d / "x.txt", line);
  std::string ids_text;
  for (int32_t id : ref) ids_text += std::to_string(id) + " ";
  write_file(d / "x.ids", ids_text);
  const std::vector<int32_t> from_txt = read_text_tokens(d / "x.txt", d / "m/tokenizer.json", m.config().vocab_size);
  EXPECT_EQ(from_txt, ref);
  const EvalResult a = evaluate_windows(m, from_txt, 7, 2);
  const EvalResult b = evaluate_windows(m, read_ids_file(d / "x.ids", m.config().vocab_size), 7, 2);
  EXPECT_EQ(a.windows, (int64_t)ref.size() / 7);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.stats.n_targets, b.stats.n_targets);
  EXPECT_TRUE(std::isfinite(a.stats.mean()));
  EXPECT_EQ(a.stats.mean(), b.stats.mean());
  EXPECT_THROW(read_text_tokens(d / "nope.txt", d / "m/tokenizer.json", 50257), Error);
}
