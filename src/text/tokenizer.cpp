// tokenizer.cpp: Tokenizer = tokenizer.json loaded into the pipeline of tokenizer_internal.h.
// Loading validates every part and names the file and key at fault; encode cuts out added tokens
// (the reference's AddedVocabulary::extract_and_normalize), normalizes, pre-tokenizes and runs
// the BPE model; decode maps ids to tokens and runs the decoder chain.
#include "src/text/tokenizer.h"

#include <filesystem>
#include <fstream>

#include "src/common.h"
#include "src/text/tokenizer_internal.h"

namespace frugal {
namespace tok {

// ---- TokenTrie ----------------------------------------------------------------------------------
void TokenTrie::add(const std::string& s, int32_t value) {
  if (s.empty()) return;
  int32_t n = 0;
  for (unsigned char c : s) {
    auto& next = nodes_[n].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t(-1)));
    if (it != next.end() && it->first == c) {
      n = it->second;
    } else {
      int32_t child = int32_t(nodes_.size());
      next.insert(it, {c, child});
      nodes_.emplace_back();  // may reallocate: `next` is not used after this
      n = child;
    }
  }
  if (nodes_[n].value < 0) nodes_[n].value = value;  // the first token with a content wins
  first_[uint8_t(s[0])] = true;
}

int32_t TokenTrie::longest_at(std::string_view s, size_t i, size_t* len) const {
  int32_t n = 0, best = -1;
  for (size_t k = i; k < s.size(); ++k) {
    const auto& next = nodes_[n].next;
    unsigned char c = uint8_t(s[k]);
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t(-1)));
    if (it == next.end() || it->first != c) break;
    n = it->second;
    if (nodes_[n].value >= 0) best = nodes_[n].value, *len = k + 1 - i;
  }
  return best;
}

// ---- added tokens -------------------------------------------------------------------------------
static uint32_t last_cp(std::string_view s, size_t end, size_t* start) {
  size_t k = end - 1;
  while (k > 0 && (uint8_t(s[k]) & 0xC0) == 0x80) --k;
  int len = 1;
  *start = k;
  return utf8_decode(s, k, &len);
}

// The reference's find_matches: Aho-Corasick matches (leftmost-longest, non-overlapping), each
// checked for single_word and widened by lstrip / rstrip over Unicode whitespace; emit gets
// (segment, offset, index into `added` or -1) covering s in order, empty segments left out.
void TokenizerImpl::split_added(std::string_view s, const TokenTrie& trie,
                                FnRef<void(std::string_view, size_t, int32_t)> emit) const {
  if (s.empty()) return;
  if (trie.empty()) return emit(s, 0, -1);
  size_t start_offset = 0, i = 0;
  while (i < s.size()) {
    if (!trie.may_start(uint8_t(s[i]))) {
      ++i;
      continue;
    }
    size_t len = 0;
    int32_t idx = trie.longest_at(s, i, &len);
    if (idx < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = added[idx];
    size_t start = i, stop = i + len;
    i = stop;
    int cl = 1;
    if (t.single_word) {
      size_t ps = 0;
      bool start_space = start == 0 || !is_word_char(last_cp(s, start, &ps));
      bool stop_space = stop == s.size() || !is_word_char(utf8_decode(s, stop, &cl));
      if (!start_space || !stop_space) continue;  // not a whole word: discarded
    }
    if (t.lstrip) {
      size_t a = start, ps = 0;
      while (a > 0 && is_white_space(last_cp(s, a, &ps))) a = ps;
      start = std::max(a, start_offset);  // spaces a previous match took stay with it
    }
    if (t.rstrip) {
      while (stop < s.size() && is_white_space(utf8_decode(s, stop, &cl))) stop += cl;
      i = stop;
    }
    if (start_offset < start) emit(s.substr(start_offset, start - start_offset), start_offset, -1);
    emit(s.substr(start, stop - start), start, idx);
    start_offset = stop;
  }
  if (start_offset < s.size()) emit(s.substr(start_offset), start_offset, -1);
}

void TokenizerImpl::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  std::string norm;
  // 1. added tokens that match the raw text (normalized: false), 2. normalize the rest and cut
  // out the normalized added tokens, 3. pre-tokenize, 4. BPE each piece.
  split_added(text, raw_trie, [&](std::string_view seg, size_t off, int32_t idx) {
    if (idx >= 0) return out.push_back(added[idx].id);
    norm.assign(seg);
    if (normalizer) normalizer->normalize(norm);
    bool seg_at_start = off == 0;
    split_added(norm, normalized_trie, [&](std::string_view sub, size_t off2, int32_t idx2) {
      if (idx2 >= 0) return out.push_back(added[idx2].id);
      pre_tokenizer->run(sub, seg_at_start && off2 == 0,
                         [&](std::string_view piece) { model->tokenize(piece, out); });
    });
  });
}

// ---- loading ------------------------------------------------------------------------------------
static std::shared_ptr<TokenizerImpl> build(const nlohmann::json& j, const std::string& where,
                                            const nlohmann::json* config) {
  if (!j.is_object()) fail(where, ": not a JSON object");
  auto t = std::make_shared<TokenizerImpl>();
  t->where = where;
  auto get = [&](const char* k) { return j.contains(k) ? j[k] : nlohmann::json(); };

  if (!j.contains("model") || !j["model"].is_object()) fail(where, ": missing key 'model' (an object)");
  const auto& m = j["model"];
  if (m.contains("type")) {
    if (!m["type"].is_string()) fail(where, ": model.type must be a string");
    std::string type = m["type"].get<std::string>();
    if (type != "BPE") fail(where, ": model.type '", type, "' is not supported (only BPE)");
  } else if (!m.contains("merges")) {
    fail(where, ": model.type is missing and model has no merges (only BPE is supported)");
  }
  t->model = std::make_unique<BPE>(m, where);
  t->normalizer = make_normalizer(get("normalizer"), where, "normalizer");
  t->pre_tokenizer = std::make_unique<PreTokenizer>(get("pre_tokenizer"), where, "pre_tokenizer");
  t->decoder = make_decoder(get("decoder"), where, "decoder");

  int64_t max_id = int64_t(t->model->vocab_r().size()) - 1;
  const auto& at = get("added_tokens");
  if (!at.is_null() && !at.is_array()) fail(where, ": added_tokens must be a list");
  for (size_t i = 0; !at.is_null() && i < at.size(); ++i) {
    const auto& e = at[i];
    std::string key = str("added_tokens[", i, "]");
    if (!e.contains("id") || !e["id"].is_number_integer() || e["id"].get<int64_t>() < 0)
      fail(where, ": ", key, ".id is missing or not a non-negative integer");
    if (!e.contains("content") || !e["content"].is_string())
      fail(where, ": ", key, ".content is missing or not a string");
    AddedToken a;
    a.id = e["id"].get<int32_t>();
    a.content = e["content"].get<std::string>();
    a.special = e.value("special", false);
    a.single_word = e.value("single_word", false);
    a.lstrip = e.value("lstrip", false);
    a.rstrip = e.value("rstrip", false);
    a.normalized = e.value("normalized", !a.special);
    if (a.content.empty()) continue;  // the reference ignores empty added tokens
    // The reference gives a token already in the model vocab the model's id (it only warns
    // when the file says otherwise).
    auto in_model = t->model->vocab().find(a.content);
    if (in_model != t->model->vocab().end()) a.id = in_model->second;
    // A normalized token is matched, and shown (id_to_token, decode), in normalized form.
    a.shown = a.content;
    if (a.normalized && t->normalizer) t->normalizer->normalize(a.shown);
    max_id = std::max<int64_t>(max_id, a.id);
    t->added_by_id[a.id] = t->added.size();
    t->added_by_content[a.content] = a.id;
    t->added.push_back(a);
  }
  // The reference builds its matchers from the special tokens first, then the others.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < t->added.size(); ++i) {
      const AddedToken& a = t->added[i];
      if (a.special != (pass == 0)) continue;
      if (!a.normalized) {
        t->raw_trie.add(a.content, int32_t(i));
      } else {
        t->normalized_trie.add(a.shown, int32_t(i));  // matched against normalized text
      }
    }
  }
  t->vocab_size = max_id + 1;

  auto id_of = [&](const std::string& s) -> int32_t {
    auto it = t->added_by_content.find(s);
    if (it != t->added_by_content.end()) return it->second;
    auto jt = t->model->vocab().find(s);
    return jt == t->model->vocab().end() ? -1 : jt->second;
  };
  t->post_processor = make_post_processor(get("post_processor"), where, "post_processor");

  // bos / eos: tokenizer_config.json names them; else the post-processor's template does.
  auto from_config = [&](const char* k) -> std::optional<int32_t> {
    if (!config || !config->contains(k)) return std::nullopt;
    const auto& v = (*config)[k];
    std::string s;
    if (v.is_string()) s = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) s = v["content"].get<std::string>();
    else return std::nullopt;
    int32_t id = id_of(s);
    if (id < 0) fail(where, ": tokenizer_config.json ", k, " '", s, "' is not a token");
    return id;
  };
  t->bos = from_config("bos_token");
  t->eos = from_config("eos_token");
  if (t->post_processor) t->post_processor->bos_eos(&t->bos, &t->eos);
  return t;
}

}  // namespace tok

// ---- public API ---------------------------------------------------------------------------------
static nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

Tokenizer Tokenizer::load(const std::string& path) {
  nlohmann::json j = read_json(path);
  auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    nlohmann::json cfg = read_json(cfg_path.string());
    return from_json(j, path, &cfg);
  }
  return from_json(j, path, nullptr);
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j, const std::string& where,
                               const nlohmann::json* config) {
  Tokenizer t;
  t.impl_ = tok::build(j, where, config);
  return t;
}

const tok::TokenizerImpl& Tokenizer::impl() const {
  if (!impl_) fail("Tokenizer: used before load() / from_json()");
  return *impl_;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  size_t valid = tok::utf8_valid_prefix(text);
  if (valid != text.size()) fail(impl().where, ": encode: text is not valid UTF-8 at byte ", valid);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl().encode_into(text, ids);
  if (add_special && impl().post_processor) impl().post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const auto& t = impl();
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  const auto& vr = t.model->vocab_r();
  for (int32_t id : ids) {
    auto it = t.added_by_id.find(id);
    if (it != t.added_by_id.end()) {
      const auto& a = t.added[it->second];
      if (!(skip_special && a.special)) tokens.push_back(a.shown);
    } else if (id >= 0 && size_t(id) < vr.size() && !vr[id].empty()) {
      tokens.push_back(vr[id]);
    }  // unknown ids are dropped, as the reference does
  }
  if (t.decoder) t.decoder->decode_chain(tokens);
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!t.decoder && i > 0) out += ' ';  // no decoder: the reference joins with spaces
    out += tokens[i];
  }
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl().added_by_content.find(token);
  if (it != impl().added_by_content.end()) return it->second;
  auto jt = impl().model->vocab().find(token);
  return jt == impl().model->vocab().end() ? -1 : jt->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto it = impl().added_by_id.find(id);
  if (it != impl().added_by_id.end()) return impl().added[it->second].shown;
  const auto& vr = impl().model->vocab_r();
  return id >= 0 && size_t(id) < vr.size() ? vr[id] : std::string();
}

int64_t Tokenizer::vocab_size() const { return impl().vocab_size; }
std::optional<int32_t> Tokenizer::bos_id() const { return impl().bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl().eos; }

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl().added_by_id.find(id);
  return it != impl().added_by_id.end() && impl().added[it->second].special;
}

}  // namespace frugal
