// tokenizer_text.cpp: text-level parts of the tokenizer: UTF-8 helpers, the GPT-2 byte table,
// PCRE2 regexes (UTF + UCP, JIT) and the normalizers and pre-tokenizers of tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "src/common.h"
#include "src/text/tokenizer_internal.h"

namespace frugal::tok {

// ---- UTF-8 ----------------------------------------------------------------------------------

// Length of the valid sequence starting at s[i] (1..4), or 0 with *bad = length of the maximal
// invalid subpart (Unicode's "maximal subpart" rule, which Rust's from_utf8_lossy follows).
static int utf8_seq(std::string_view s, size_t i, int* bad) {
  auto b = [&](size_t k) { return k < s.size() ? uint8_t(s[k]) : 0x100; };
  unsigned c = uint8_t(s[i]);
  if (c < 0x80) return 1;
  int need;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c == 0xE0) need = 2, lo = 0xA0;
  else if (c == 0xED) need = 2, hi = 0x9F;
  else if (c >= 0xE1 && c <= 0xEF) need = 2;
  else if (c == 0xF0) need = 3, lo = 0x90;
  else if (c == 0xF4) need = 3, hi = 0x8F;
  else if (c >= 0xF1 && c <= 0xF3) need = 3;
  else {
    *bad = 1;
    return 0;
  }
  for (int k = 1; k <= need; ++k) {
    unsigned x = b(i + k);
    unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (x < l || x > h) {
      *bad = k;
      return 0;
    }
  }
  return need + 1;
}

size_t utf8_valid_prefix(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int bad = 0, n = utf8_seq(s, i, &bad);
    if (n == 0) return i;
    i += n;
  }
  return i;
}

uint32_t utf8_decode(std::string_view s, size_t i, int* len) {
  unsigned c = uint8_t(s[i]);
  if (c < 0x80) return *len = 1, c;
  if (c < 0xE0) return *len = 2, ((c & 0x1F) << 6) | (uint8_t(s[i + 1]) & 0x3F);
  if (c < 0xF0)
    return *len = 3, ((c & 0x0F) << 12) | ((uint8_t(s[i + 1]) & 0x3F) << 6) |
                         (uint8_t(s[i + 2]) & 0x3F);
  return *len = 4, ((c & 0x07) << 18) | ((uint8_t(s[i + 1]) & 0x3F) << 12) |
                       ((uint8_t(s[i + 2]) & 0x3F) << 6) | (uint8_t(s[i + 3]) & 0x3F);
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    int bad = 0, n = utf8_seq(s, i, &bad);
    if (n > 0) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += bad;
    }
  }
  return out;
}

bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_word_char(uint32_t cp) {
  // Rust regex's Unicode \w: Alphabetic, marks, decimal digits, connector punctuation, joiners.
  static const Regex re("^[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]", "\\w");
  std::string ch;
  utf8_append(ch, cp);
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(ch, m);
  return !m.empty();
}

const ByteLevelTable& ByteLevelTable::get() {
  static const ByteLevelTable t = [] {
    ByteLevelTable t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      uint32_t cp = self ? uint32_t(b) : uint32_t(256 + n++);
      utf8_append(t.byte_to_utf8[b], cp);
      t.cp_to_byte[cp] = uint8_t(b);
    }
    return t;
  }();
  return t;
}

// ---- PCRE2 ----------------------------------------------------------------------------------

namespace {
// Per-thread match data and JIT stack: matching is const and may run on several threads.
struct MatchScratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchScratch() {
    md = pcre2_match_data_create(32, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!md || !mc || !js) throw std::bad_alloc();
    pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) {
  // PCRE2 with UCP agrees with Oniguruma (the reference's engine) on the classes these patterns
  // use: \s is Unicode White_Space (incl. U+0085), \p{L} / \p{N} by general category.
  const std::string& p = pattern;
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(where, ": bad regex '", pattern, "' at offset ", off, ": ",
         reinterpret_cast<const char*>(msg));
  }
  // JIT is an optimization; the interpreter gives the same matches if JIT is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  thread_local MatchScratch scratch;
  out.clear();
  auto* code = static_cast<pcre2_code*>(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    // The subject was validated once by the caller: skip PCRE2's per-call UTF check, which
    // would rescan the whole subject at every match.
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, scratch.md, scratch.mc);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0 && rc != 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex match failed: ", reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.md);
    size_t a = ov[0], b = ov[1];
    out.emplace_back(a, b);
    if (b > a) {
      pos = b;
    } else {  // empty match: resume one character later (Oniguruma's find_iter)
      if (b >= s.size()) break;
      int len = 1;
      utf8_decode(s, b, &len);
      pos = b + len;
    }
  }
}

// ---- normalizers ----------------------------------------------------------------------------
namespace {

std::string key_of(const std::string& key, const char* sub) { return key + "." + sub; }

const nlohmann::json& need(const nlohmann::json& j, const char* k, const std::string& where,
                           const std::string& key) {
  if (!j.is_object() || !j.contains(k)) fail(where, ": missing key ", key_of(key, k));
  return j.at(k);
}

std::string need_str(const nlohmann::json& j, const char* k, const std::string& where,
                     const std::string& key) {
  const auto& v = need(j, k, where, key);
  if (!v.is_string()) fail(where, ": ", key_of(key, k), " must be a string");
  return v.get<std::string>();
}

// A Split/Replace "pattern": {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;
  Pattern(const nlohmann::json& j, const std::string& where, const std::string& key) {
    if (j.is_object() && j.contains("String") && j["String"].is_string()) {
      literal = j["String"].get<std::string>();
      if (literal.empty()) fail(where, ": ", key, ".String is empty");
    } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
      regex = std::make_unique<Regex>(j["Regex"].get<std::string>(), where + ": " + key);
    } else {
      fail(where, ": ", key, " must be {\"String\": ...} or {\"Regex\": ...}");
    }
  }
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
    if (regex) return regex->find_all(s, out);
    out.clear();
    for (size_t p = s.find(literal); p != std::string_view::npos; p = s.find(literal, p + literal.size()))
      out.emplace_back(p, p + literal.size());
  }
};

struct NormSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& s) const override {
    for (const auto& p : parts) p->normalize(s);
  }
};

struct NormPrepend : Normalizer {
  std::string prepend;
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend);  // the reference leaves empty strings alone
  }
};

struct NormReplace : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void normalize(std::string& s) const override {
    std::vector<std::pair<size_t, size_t>> m;
    pattern->find_all(s, m);
    if (m.empty()) return;
    std::string out;
    out.reserve(s.size() + m.size() * content.size());
    size_t prev = 0;
    for (auto [a, b] : m) {
      out.append(s, prev, a - prev);
      out += content;
      prev = b;
    }
    out.append(s, prev, std::string::npos);
    s.swap(out);
  }
};

struct NormStrip : Normalizer {
  bool left = true, right = true;
  void normalize(std::string& s) const override {
    size_t a = 0, b = s.size();
    int len = 1;
    while (left && a < b && is_white_space(utf8_decode(s, a, &len))) a += len;
    while (right && b > a) {
      size_t k = b - 1;
      while (k > a && (uint8_t(s[k]) & 0xC0) == 0x80) --k;
      if (!is_white_space(utf8_decode(s, k, &len))) break;
      b = k;
    }
    s = s.substr(a, b - a);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where,
                                            const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string type = need_str(j, "type", where, key);
  if (type == "Sequence") {
    auto n = std::make_unique<NormSequence>();
    const auto& list = need(j, "normalizers", where, key);
    if (!list.is_array()) fail(where, ": ", key, ".normalizers must be a list");
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_normalizer(list[i], where, str(key, ".normalizers[", i, "]"));
      if (p) n->parts.push_back(std::move(p));
    }
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<NormPrepend>();
    n->prepend = need_str(j, "prepend", where, key);
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<NormReplace>();
    n->pattern = std::make_unique<Pattern>(need(j, "pattern", where, key), where, key + ".pattern");
    n->content = need_str(j, "content", where, key);
    return n;
  }
  if (type == "Strip") {
    auto n = std::make_unique<NormStrip>();
    n->left = j.value("strip_left", true);
    n->right = j.value("strip_right", true);
    return n;
  }
  fail(where, ": ", key, ".type '", type,
       "' is not supported (supported: Sequence, Prepend, Replace, Strip)");
}

// ---- pre-tokenizers -------------------------------------------------------------------------
namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_from(const std::string& s, const std::string& where, const std::string& key) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  fail(where, ": ", key, " '", s, "' is not a split behavior");
}

struct Span {
  size_t a, b;
  bool match;
};

// The reference's NormalizedString::split: matches -> covering spans -> behavior -> non-empty.
void split_spans(std::string_view s, const std::vector<std::pair<size_t, size_t>>& m,
                 Behavior behavior, bool invert, std::vector<Span>& out) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (auto [a, b] : m) {
    if (a > prev) spans.push_back({prev, a, invert});
    spans.push_back({a, b, !invert});
    prev = b;
  }
  if (prev < s.size()) spans.push_back({prev, s.size(), invert});
  out.clear();
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& sp : spans)
        if (!sp.match) out.push_back(sp);
      break;
    case Behavior::Isolated:
      out = spans;
      break;
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& sp : spans) {
        if (sp.match && !prev_match && !out.empty()) out.back().b = sp.b;
        else out.push_back(sp);
        prev_match = sp.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const auto& sp = spans[i];
        if (sp.match && !prev_match && !out.empty()) out.back().a = sp.a;
        else out.push_back(sp);
        prev_match = sp.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (const auto& sp : spans) {
        if (sp.match == prev_match && !out.empty()) out.back().b = sp.b;
        else out.push_back(sp);
        prev_match = sp.match;
      }
      break;
    }
  }
}

void emit_spans(std::string_view s, const std::vector<Span>& spans, bool at_start,
                FnRef<void(std::string_view, bool)> next) {
  for (const auto& sp : spans)
    if (sp.b > sp.a) next(s.substr(sp.a, sp.b - sp.a), at_start && sp.a == 0);
}

struct SplitStep : PreTokStep {
  std::unique_ptr<Pattern> pattern;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  void run(std::string_view piece, bool at_start,
           FnRef<void(std::string_view, bool)> next) const override {
    std::vector<std::pair<size_t, size_t>> m;
    std::vector<Span> spans;
    pattern->find_all(piece, m);
    split_spans(piece, m, behavior, invert, spans);
    emit_spans(piece, spans, at_start, next);
  }
};

// GPT-2's pre-tokenizer regex (ByteLevel use_regex).
const char* kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct ByteLevelStep : PreTokStep {
  bool add_prefix_space = false;
  std::unique_ptr<Regex> regex;  // when use_regex
  void run(std::string_view piece, bool at_start,
           FnRef<void(std::string_view, bool)> next) const override {
    std::string spaced;
    if (add_prefix_space && (piece.empty() || piece[0] != ' ')) {
      spaced = " ";
      spaced += piece;
      piece = spaced;
    }
    const auto& t = ByteLevelTable::get();
    auto map_and_emit = [&](std::string_view sub, bool st) {
      std::string mapped;
      mapped.reserve(sub.size() * 2);
      for (unsigned char c : sub) mapped += t.byte_to_utf8[c];
      next(mapped, st);
    };
    if (!regex) {
      if (!piece.empty()) map_and_emit(piece, at_start);
      return;
    }
    std::vector<std::pair<size_t, size_t>> m;
    regex->find_all(piece, m);
    size_t prev = 0;  // Isolated: matches and the gaps between them
    for (auto [a, b] : m) {
      if (a > prev) map_and_emit(piece.substr(prev, a - prev), at_start && prev == 0);
      if (b > a) map_and_emit(piece.substr(a, b - a), at_start && a == 0);
      prev = b;
    }
    if (prev < piece.size()) map_and_emit(piece.substr(prev), at_start && prev == 0);
  }
};

struct MetaspaceStep : PreTokStep {
  std::string replacement;
  enum { Always, First, Never } scheme = Always;
  bool split = true;
  void run(std::string_view piece, bool at_start,
           FnRef<void(std::string_view, bool)> next) const override {
    std::string s;
    s.reserve(piece.size() + replacement.size());
    for (char c : piece) {
      if (c == ' ') s += replacement;
      else s += c;
    }
    bool starts = s.compare(0, replacement.size(), replacement) == 0;
    if (!starts && (scheme == Always || (scheme == First && at_start))) s.insert(0, replacement);
    if (!split) {
      if (!s.empty()) next(s, at_start);
      return;
    }
    std::vector<std::pair<size_t, size_t>> m;
    for (size_t p = s.find(replacement); p != std::string::npos;
         p = s.find(replacement, p + replacement.size()))
      m.emplace_back(p, p + replacement.size());
    std::vector<Span> spans;
    split_spans(s, m, Behavior::MergedWithNext, false, spans);
    emit_spans(s, spans, at_start, next);
  }
};

}  // namespace

PreTokenizer::PreTokenizer(const nlohmann::json& j, const std::string& where,
                           const std::string& key) {
  if (!j.is_null()) add(j, where, key);
}
PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::add(const nlohmann::json& j, const std::string& where, const std::string& key) {
  std::string type = need_str(j, "type", where, key);
  if (type == "Sequence") {
    const auto& list = need(j, "pretokenizers", where, key);
    if (!list.is_array()) fail(where, ": ", key, ".pretokenizers must be a list");
    for (size_t i = 0; i < list.size(); ++i) add(list[i], where, str(key, ".pretokenizers[", i, "]"));
  } else if (type == "Split") {
    auto s = std::make_unique<SplitStep>();
    s->pattern = std::make_unique<Pattern>(need(j, "pattern", where, key), where, key + ".pattern");
    s->behavior = behavior_from(need_str(j, "behavior", where, key), where, key + ".behavior");
    s->invert = j.value("invert", false);
    steps_.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    auto s = std::make_unique<ByteLevelStep>();
    s->add_prefix_space = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) s->regex = std::make_unique<Regex>(kGpt2Regex, where + ": " + key);
    steps_.push_back(std::move(s));
  } else if (type == "Digits") {
    // Rust's char::is_numeric is \p{N}; individual digits are isolated one by one, otherwise
    // runs of them (Contiguous behavior == Isolated runs).
    auto s = std::make_unique<SplitStep>();
    bool individual = j.value("individual_digits", false);
    nlohmann::json pat = {{"Regex", individual ? "\\p{N}" : "\\p{N}+"}};
    s->pattern = std::make_unique<Pattern>(pat, where, key);
    s->behavior = Behavior::Isolated;
    steps_.push_back(std::move(s));
  } else if (type == "Metaspace") {
    auto s = std::make_unique<MetaspaceStep>();
    s->replacement = j.value("replacement", std::string("\xE2\x96\x81"));
    if (s->replacement.empty()) fail(where, ": ", key, ".replacement is empty");
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    if (scheme == "always") s->scheme = MetaspaceStep::Always;
    else if (scheme == "first") s->scheme = MetaspaceStep::First;
    else if (scheme == "never") s->scheme = MetaspaceStep::Never;
    else fail(where, ": ", key, ".prepend_scheme '", scheme, "' is not always/first/never");
    s->split = j.value("split", true);
    steps_.push_back(std::move(s));
  } else {
    fail(where, ": ", key, ".type '", type,
         "' is not supported (supported: Sequence, Split, ByteLevel, Digits, Metaspace)");
  }
}

void PreTokenizer::run_from(size_t k, std::string_view piece, bool at_start, PieceSink sink) const {
  if (k == steps_.size()) return sink(piece);
  steps_[k]->run(piece, at_start,
                 [&](std::string_view sub, bool st) { run_from(k + 1, sub, st, sink); });
}

void PreTokenizer::run(std::string_view text, bool at_start, PieceSink sink) const {
  if (text.empty()) return;
  run_from(0, text, at_start, sink);
}

}  // namespace frugal::tok
