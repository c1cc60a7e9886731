// tokenizer_decode.cpp: decoders (ids -> text) and post-processors (special tokens added by
// add_special) of tokenizer.json, as huggingface/tokenizers decoders/ and processors/ define
// them. A decoder chain maps a list of token strings to a list of strings; the result is joined.
#include <algorithm>

#include "src/common.h"
#include "src/text/tokenizer_internal.h"

namespace frugal::tok {
namespace {

std::string need_string(const nlohmann::json& j, const char* k, const std::string& where,
                        const std::string& key) {
  if (!j.contains(k) || !j[k].is_string()) fail(where, ": ", key, ".", k, " must be a string");
  return j[k].get<std::string>();
}

// ByteLevel: every char of every token back to its byte (a token with a char outside the table,
// e.g. an added token, keeps its own bytes), then lossy UTF-8 as one string.
struct DecByteLevel : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    const auto& t = ByteLevelTable::get();
    std::string bytes;
    for (const auto& tok : tokens) {
      size_t start = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < tok.size() && ok;) {
        int len = 1;
        uint32_t cp = utf8_decode(tok, i, &len);
        auto it = t.cp_to_byte.find(cp);
        if (it == t.cp_to_byte.end()) ok = false;
        else bytes += char(it->second);
        i += len;
      }
      if (!ok) {
        bytes.resize(start);
        bytes += tok;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

// ByteFallback: runs of <0xXX> tokens become their bytes when those form valid UTF-8, else one
// U+FFFD per byte token.
struct DecByteFallback : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; ++k) {
      char c = t[k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t n_pending = 0;
    auto flush = [&] {
      if (n_pending == 0) return;
      if (utf8_valid_prefix(pending) == pending.size()) out.push_back(pending);
      else
        for (size_t k = 0; k < n_pending; ++k) out.push_back("\xEF\xBF\xBD");
      pending.clear();
      n_pending = 0;
    };
    for (auto& tok : tokens) {
      int b = byte_of(tok);
      if (b >= 0) {
        pending += char(b);
        ++n_pending;
      } else {
        flush();
        out.push_back(std::move(tok));
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct DecFuse : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

// Strip: removes up to `start` leading and `stop` trailing `content` characters of each token.
struct DecStrip : Decoder {
  std::string content;  // one character
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      size_t a = 0, b = t.size();
      for (size_t k = 0; k < start && t.compare(a, content.size(), content) == 0 && a < b; ++k)
        a += content.size();
      for (size_t k = 0; k < stop && b >= a + content.size() &&
                         t.compare(b - content.size(), content.size(), content) == 0;
           ++k)
        b -= content.size();
      t = t.substr(a, b - a);
    }
  }
};

struct DecReplace : Decoder {
  std::string literal, content;
  std::unique_ptr<Regex> regex;
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for (auto& t : tokens) {
      m.clear();
      if (regex) {
        regex->find_all(t, m);
      } else {
        for (size_t p = t.find(literal); p != std::string::npos; p = t.find(literal, p + literal.size()))
          m.emplace_back(p, p + literal.size());
      }
      if (m.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto [a, b] : m) {
        out.append(t, prev, a - prev);
        out += content;
        prev = b;
      }
      out.append(t, prev, std::string::npos);
      t.swap(out);
    }
  }
};

// Metaspace: the replacement char becomes a space, except in the first token where the
// reference drops it (it was the prepended prefix) unless prepend_scheme is "never".
struct DecMetaspace : Decoder {
  std::string replacement;
  bool prepend = true;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t p = 0; p < t.size();) {
        if (t.compare(p, replacement.size(), replacement) == 0) {
          if (!(i == 0 && prepend)) out += ' ';
          p += replacement.size();
        } else {
          out += t[p++];
        }
      }
      tokens[i].swap(out);
    }
  }
};

struct DecSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts) p->decode_chain(tokens);
  }
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where,
                                      const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string type = need_string(j, "type", where, key);
  if (type == "ByteLevel") return std::make_unique<DecByteLevel>();
  if (type == "ByteFallback") return std::make_unique<DecByteFallback>();
  if (type == "Fuse") return std::make_unique<DecFuse>();
  if (type == "Strip") {
    auto d = std::make_unique<DecStrip>();
    d->content = need_string(j, "content", where, key);
    d->start = j.value("start", size_t(0));
    d->stop = j.value("stop", size_t(0));
    if (d->content.empty()) fail(where, ": ", key, ".content is empty");
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<DecReplace>();
    d->content = need_string(j, "content", where, key);
    const auto& p = j.contains("pattern") ? j["pattern"] : nlohmann::json();
    if (p.is_object() && p.contains("String") && p["String"].is_string() &&
        !p["String"].get<std::string>().empty())
      d->literal = p["String"].get<std::string>();
    else if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
      d->regex = std::make_unique<Regex>(p["Regex"].get<std::string>(), where + ": " + key);
    else
      fail(where, ": ", key, ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
    return d;
  }
  if (type == "Metaspace") {
    auto d = std::make_unique<DecMetaspace>();
    d->replacement = j.value("replacement", std::string("\xE2\x96\x81"));
    std::string scheme = j.value("prepend_scheme", std::string());
    d->prepend = scheme.empty() ? j.value("add_prefix_space", true) : scheme != "never";
    return d;
  }
  if (type == "Sequence") {
    auto d = std::make_unique<DecSequence>();
    if (!j.contains("decoders") || !j["decoders"].is_array())
      fail(where, ": ", key, ".decoders must be a list");
    for (size_t i = 0; i < j["decoders"].size(); ++i) {
      auto p = make_decoder(j["decoders"][i], where, str(key, ".decoders[", i, "]"));
      if (p) d->parts.push_back(std::move(p));
    }
    return d;
  }
  fail(where, ": ", key, ".type '", type,
       "' is not supported (supported: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, "
       "Sequence)");
}

// ---- post-processors ----------------------------------------------------------------------------
namespace {

// TemplateProcessing: the "single" template, e.g. [<s>, $A] -> BOS in front.
struct PostTemplate : PostProcessor {
  struct Item {
    bool sequence;
    std::vector<int32_t> ids;  // a special token's ids
  };
  std::vector<Item> single;
  void process(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const auto& it : single) {
      if (it.sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), it.ids.begin(), it.ids.end());
    }
    ids.swap(out);
  }
  void bos_eos(std::optional<int32_t>* bos, std::optional<int32_t>* eos) const override {
    bool seen_seq = false;
    for (const auto& it : single) {
      if (it.sequence) seen_seq = true;
      else if (!it.ids.empty() && !seen_seq && !*bos) *bos = it.ids.back();
      else if (!it.ids.empty() && seen_seq && !*eos) *eos = it.ids.front();
    }
  }
};

// RobertaProcessing / BertProcessing: cls $A sep.
struct PostClsSep : PostProcessor {
  int32_t cls = -1, sep = -1;
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), cls);
    ids.push_back(sep);
  }
  void bos_eos(std::optional<int32_t>* bos, std::optional<int32_t>* eos) const override {
    if (!*bos) *bos = cls;
    if (!*eos) *eos = sep;
  }
};

struct PostNone : PostProcessor {  // ByteLevel: only trims offsets, ids unchanged
  void process(std::vector<int32_t>&) const override {}
};

struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& p : parts) p->process(ids);
  }
  void bos_eos(std::optional<int32_t>* bos, std::optional<int32_t>* eos) const override {
    for (const auto& p : parts) p->bos_eos(bos, eos);
  }
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j,
                                                   const std::string& where,
                                                   const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string type = need_string(j, "type", where, key);
  if (type == "ByteLevel") return std::make_unique<PostNone>();
  if (type == "TemplateProcessing") {
    auto p = std::make_unique<PostTemplate>();
    if (!j.contains("single") || !j["single"].is_array())
      fail(where, ": ", key, ".single must be a list");
    const auto& specials = j.contains("special_tokens") ? j["special_tokens"] : nlohmann::json::object();
    for (size_t i = 0; i < j["single"].size(); ++i) {
      const auto& e = j["single"][i];
      std::string ek = str(key, ".single[", i, "]");
      if (e.contains("Sequence")) {
        p->single.push_back({true, {}});
      } else if (e.contains("SpecialToken") && e["SpecialToken"].contains("id")) {
        std::string name = e["SpecialToken"]["id"].get<std::string>();
        if (!specials.contains(name) || !specials[name].contains("ids"))
          fail(where, ": ", key, ".special_tokens has no entry '", name, "' (used in ", ek, ")");
        std::vector<int32_t> ids;
        for (const auto& v : specials[name]["ids"]) {
          if (!v.is_number_integer()) fail(where, ": ", key, ".special_tokens.", name, ".ids must be integers");
          ids.push_back(v.get<int32_t>());
        }
        p->single.push_back({false, ids});
      } else {
        fail(where, ": ", ek, " must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    return p;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto p = std::make_unique<PostClsSep>();
    auto pair_id = [&](const char* k) {
      if (!j.contains(k) || !j[k].is_array() || j[k].size() != 2 || !j[k][1].is_number_integer())
        fail(where, ": ", key, ".", k, " must be [token, id]");
      return j[k][1].get<int32_t>();
    };
    p->cls = pair_id("cls");
    p->sep = pair_id("sep");
    return p;
  }
  if (type == "Sequence") {
    auto p = std::make_unique<PostSequence>();
    if (!j.contains("processors") || !j["processors"].is_array())
      fail(where, ": ", key, ".processors must be a list");
    for (size_t i = 0; i < j["processors"].size(); ++i) {
      auto q = make_post_processor(j["processors"][i], where, str(key, ".processors[", i, "]"));
      if (q) p->parts.push_back(std::move(q));
    }
    return p;
  }
  fail(where, ": ", key, ".type '", type,
       "' is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
       "BertProcessing, Sequence)");
}

}  // namespace frugal::tok
