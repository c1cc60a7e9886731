// prepare.cpp: JSONL / text -> frugal-tokens-v1 dataset with SFT loss masks (see prepare.h).
// One sample per line; a malformed line either fails with "FILE:LINE: reason" or, with
// skip_bad, is skipped and counted.
#include "src/text/prepare.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "src/common.h"

namespace frugal {
namespace {

// A malformed input line; carries the reason only (the caller adds FILE:LINE).
struct BadLine {
  std::string why;
};

const nlohmann::json& get_string_field(const nlohmann::json& j, const char* key, bool required) {
  static const nlohmann::json empty = "";
  if (!j.contains(key)) {
    if (required) throw BadLine{str("missing field \"", key, "\"")};
    return empty;
  }
  const nlohmann::json& v = j[key];
  if (!v.is_string()) throw BadLine{str("field \"", key, "\" must be a string, got ", v.type_name())};
  return v;
}

std::vector<ChatMessage> parse_messages(const nlohmann::json& j) {
  if (!j.contains("messages")) throw BadLine{"missing field \"messages\""};
  const nlohmann::json& ms = j["messages"];
  if (!ms.is_array()) throw BadLine{str("field \"messages\" must be an array, got ", ms.type_name())};
  if (ms.empty()) throw BadLine{"\"messages\" is empty"};
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < ms.size(); ++i) {
    const nlohmann::json& m = ms[i];
    if (!m.is_object()) throw BadLine{str("messages[", i, "] must be an object, got ", m.type_name())};
    for (const char* k : {"role", "content"}) {
      if (!m.contains(k)) throw BadLine{str("messages[", i, "] has no \"", k, "\"")};
      if (!m[k].is_string()) throw BadLine{str("messages[", i, "].", k, " must be a string, got ", m[k].type_name())};
    }
    ChatMessage c{m["role"].get<std::string>(), m["content"].get<std::string>()};
    if (c.role != "system" && c.role != "user" && c.role != "assistant")
      throw BadLine{str("messages[", i, "]: unknown role '", c.role, "' (expected system, user or assistant)")};
    out.push_back(std::move(c));
  }
  bool has_assistant = false;
  for (const ChatMessage& c : out) has_assistant = has_assistant || c.role == "assistant";
  if (!has_assistant) throw BadLine{"no assistant message (nothing to train on)"};
  return out;
}

struct Ctx {
  const Tokenizer& tok;
  PrepareFormat format;
  ChatTemplate tmpl;
  std::vector<int32_t> prefix;  // the post-processor's prefix ids (BOS), masked, for text/alpaca
  std::string bos_text;         // for the Llama-3 chat template
  int32_t eos = -1;
};

// Appends eos (trained) after every trained piece: the Alpaca template has no end token in text.
void append_with_eos(const Ctx& c, const std::vector<RenderedPiece>& pieces, std::vector<int32_t>& ids,
                     std::vector<uint8_t>& mask) {
  for (const RenderedPiece& p : pieces) {
    append_pieces(c.tok, {p}, ids, mask);
    if (p.train) {
      ids.push_back(c.eos);
      mask.push_back(1);
    }
  }
}

// One line -> (ids, mask). Throws BadLine for malformed input.
void encode_line(const Ctx& c, const std::string& line, bool plain_text, std::vector<int32_t>& ids,
                 std::vector<uint8_t>& mask) {
  ids.clear();
  mask.clear();
  if (plain_text) {
    ids = c.prefix;
    mask.assign(ids.size(), 0);
    const std::vector<int32_t> t = c.tok.encode(line, false);
    ids.insert(ids.end(), t.begin(), t.end());
    ids.push_back(c.eos);
    mask.resize(ids.size(), 1);
    return;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw BadLine{str("invalid JSON: ", e.what())};
  }
  if (!j.is_object()) throw BadLine{str("expected a JSON object, got ", j.type_name())};
  try {
    switch (c.format) {
      case PrepareFormat::Text: {
        const std::string text = get_string_field(j, "text", true).get<std::string>();
        ids = c.prefix;
        mask.assign(ids.size(), 0);
        const std::vector<int32_t> t = c.tok.encode(text, false);
        ids.insert(ids.end(), t.begin(), t.end());
        ids.push_back(c.eos);
        mask.resize(ids.size(), 1);
        return;
      }
      case PrepareFormat::Alpaca: {
        const std::string ins = get_string_field(j, "instruction", true).get<std::string>();
        const std::string inp = get_string_field(j, "input", false).get<std::string>();
        const std::string outp = get_string_field(j, "output", true).get<std::string>();
        if (c.tmpl == ChatTemplate::Alpaca) {
          ids = c.prefix;
          mask.assign(ids.size(), 0);
          append_with_eos(c, render_alpaca(ins, inp, outp), ids, mask);
        } else {
          const std::vector<ChatMessage> msgs = {{"user", inp.empty() ? ins : ins + "\n\n" + inp},
                                                 {"assistant", outp}};
          append_pieces(c.tok, render_chat(c.tmpl, msgs, false, c.bos_text), ids, mask);
        }
        return;
      }
      case PrepareFormat::Chat: {
        const std::vector<ChatMessage> msgs = parse_messages(j);
        if (c.tmpl == ChatTemplate::Alpaca) {
          ids = c.prefix;
          mask.assign(ids.size(), 0);
          append_with_eos(c, render_chat(c.tmpl, msgs, false, ""), ids, mask);
        } else {
          append_pieces(c.tok, render_chat(c.tmpl, msgs, false, c.bos_text), ids, mask);
        }
        return;
      }
    }
  } catch (const Error& e) {  // template errors (alternation) and invalid UTF-8 are the line's fault
    throw BadLine{e.what()};
  }
}

}  // namespace

PrepareFormat parse_prepare_format(const std::string& name) {
  if (name == "text") return PrepareFormat::Text;
  if (name == "alpaca") return PrepareFormat::Alpaca;
  if (name == "chat") return PrepareFormat::Chat;
  fail("--format: unknown format '", name, "' (expected text, alpaca or chat)");
}

std::string tokenizer_json_path(const std::string& path) {
  if (std::filesystem::is_directory(path)) return (std::filesystem::path(path) / "tokenizer.json").string();
  return path;
}

void append_pieces(const Tokenizer& tok, const std::vector<RenderedPiece>& pieces, std::vector<int32_t>& ids,
                   std::vector<uint8_t>& mask) {
  for (const RenderedPiece& p : pieces) {
    const std::vector<int32_t> t = tok.encode(p.text, false);
    ids.insert(ids.end(), t.begin(), t.end());
    mask.insert(mask.end(), t.size(), p.train ? 1 : 0);
  }
}

TokenDataset prepare_dataset(const Tokenizer& tok, const std::string& tokenizer_path, const PrepareOptions& o,
                             PrepareStats* stats) {
  PrepareStats st;
  const std::optional<int32_t> eos = tok.eos_id(), bos = tok.bos_id();
  if (!eos) fail(tokenizer_path, ": the tokenizer has no EOS token (tokenizer_config.json eos_token); prepare appends it");
  Ctx c{tok, o.format, ChatTemplate::Alpaca, tok.encode("", true), "", *eos};
  if (o.format != PrepareFormat::Text) {
    // alpaca data defaults to the Alpaca prompt; chat data to the tokenizer's own template.
    const std::string name = (o.format == PrepareFormat::Alpaca && o.template_name == "auto") ? "alpaca" : o.template_name;
    c.tmpl = parse_chat_template(name, tokenizer_path);
    if (c.tmpl == ChatTemplate::Llama3) {
      if (!bos) fail(tokenizer_path, ": the llama3 chat template starts with bos_token, but the tokenizer has none");
      c.bos_text = tok.id_to_token(*bos);
    }
    const std::string end = chat_end_token(c.tmpl);
    if (!end.empty() && tok.token_to_id(end) < 0)
      fail(tokenizer_path, ": the ", chat_template_name(c.tmpl), " template ends turns with ", end,
           ", which is not a token of this tokenizer (wrong --template?)");
  }

  std::ifstream in(o.input, std::ios::binary);
  if (!in) fail(o.input, ": cannot open");
  const bool plain_text = o.format == PrepareFormat::Text && std::filesystem::path(o.input).extension() == ".txt";

  TokenDataset ds;
  ds.offsets.push_back(0);
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  std::string line;
  while (std::getline(in, line)) {
    if (o.max_samples > 0 && st.samples >= o.max_samples) break;
    st.lines++;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines separate nothing
    try {
      encode_line(c, line, plain_text, ids, mask);
    } catch (const BadLine& b) {
      const std::string msg = str(o.input, ":", st.lines, ": ", b.why);
      if (!o.skip_bad) fail(msg, " (use --skip-bad to skip malformed lines)");
      if (st.skipped++ == 0) st.first_skip = msg;
      continue;
    }
    ds.tokens.insert(ds.tokens.end(), ids.begin(), ids.end());
    ds.loss_mask.insert(ds.loss_mask.end(), mask.begin(), mask.end());
    ds.offsets.push_back((int64_t)ds.tokens.size());
    st.samples++;
    for (uint8_t m : mask) st.trained += m;
    if (o.seq_len > 0 && (int64_t)ids.size() > o.seq_len) st.longer_than_seq_len++;
  }
  if (st.samples == 0) fail(o.input, ": no samples (", st.lines, " lines read, ", st.skipped, " skipped)");
  st.tokens = (int64_t)ds.tokens.size();
  ds.vocab_size = tok.vocab_size();
  ds.eos_id = *eos;
  ds.bos_id = bos ? *bos : -1;
  ds.pad_id = *eos;  // padding positions are never targets; any valid id does
  ds.validate(o.input);
  if (stats) *stats = st;
  return ds;
}

std::vector<int32_t> read_text_tokens(const std::string& path, const std::string& tokenizer_json, int vocab) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open text file ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const Tokenizer tok = Tokenizer::load(tokenizer_json);
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(ss.str(), /*add_special=*/false);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= vocab)
      fail(path, ": token ", i, " id ", ids[i], " (", tokenizer_json, ") is outside the model vocabulary [0, ", vocab, ")");
  return ids;
}

PrepareStats run_prepare(const PrepareOptions& o) {
  if (o.out.empty()) fail("prepare: --out is required");
  const std::string tj = tokenizer_json_path(o.tokenizer);
  Tokenizer tok = Tokenizer::load(tj);
  PrepareStats st;
  TokenDataset ds = prepare_dataset(tok, o.tokenizer, o, &st);
  ds.save(o.out);
  return st;
}

}  // namespace frugal
