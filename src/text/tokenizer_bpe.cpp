// tokenizer_bpe.cpp: the BPE model of tokenizer.json (huggingface/tokenizers models/bpe).
// A pre-token is split into characters (vocab ids; unknown ones become <0xXX> byte tokens with
// byte_fallback, else unk), then the merge loop repeatedly applies the lowest-rank merge among
// adjacent pairs (ties: leftmost), with a binary heap over (rank, position) and a linked list of
// symbols, exactly as the reference's Word::merge_all. Results are cached per word.
#include <algorithm>
#include <cstdio>

#include "src/common.h"
#include "src/text/tokenizer_internal.h"

namespace frugal::tok {

// ---- MergeMap ---------------------------------------------------------------------------------
void MergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;  // load factor <= 1/2 keeps probe chains short
  if (cap <= slots_.size()) return;
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  n_ = 0;
  for (const Slot& s : old)
    if (s.key != kEmpty) insert(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.rank, s.id);
}

void MergeMap::grow() { reserve(slots_.empty() ? 8 : slots_.size()); }

void MergeMap::insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
  if (2 * (n_ + 1) > slots_.size()) grow();
  uint64_t key = pack(a, b);
  size_t i = hash(key) & mask_;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
  if (slots_[i].key == kEmpty) ++n_;
  slots_[i] = Slot{key, rank, id};
}

// ---- loading ------------------------------------------------------------------------------------
static std::string opt_str(const nlohmann::json& m, const char* k, const std::string& where,
                           bool* present) {
  *present = false;
  if (!m.contains(k) || m[k].is_null()) return {};
  if (!m[k].is_string()) fail(where, ": model.", k, " must be a string or null");
  *present = true;
  return m[k].get<std::string>();
}

BPE::BPE(const nlohmann::json& m, const std::string& where) {
  if (!m.contains("vocab") || !m["vocab"].is_object())
    fail(where, ": model.vocab is missing or not an object {token: id}");
  if (!m.contains("merges") || !m["merges"].is_array())
    fail(where, ": model.merges is missing or not a list");
  auto flag = [&](const char* k) {
    if (!m.contains(k) || m[k].is_null()) return false;
    if (!m[k].is_boolean()) fail(where, ": model.", k, " must be true or false");
    return m[k].get<bool>();
  };
  unk_token_ = opt_str(m, "unk_token", where, &has_unk_);
  prefix_ = opt_str(m, "continuing_subword_prefix", where, &has_prefix_);
  suffix_ = opt_str(m, "end_of_word_suffix", where, &has_suffix_);
  fuse_unk_ = flag("fuse_unk");
  byte_fallback_ = flag("byte_fallback");
  ignore_merges_ = flag("ignore_merges");
  // dropout (random merges) is a training-time regularizer; encoding here is deterministic.

  const auto& v = m["vocab"];
  vocab_.reserve(v.size());
  int64_t max_id = -1;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX)
      fail(where, ": model.vocab[\"", it.key(), "\"] is not a non-negative integer id");
    int32_t id = it.value().get<int32_t>();
    vocab_[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  vocab_r_.assign(size_t(max_id + 1), std::string());
  for (const auto& [tok, id] : vocab_) vocab_r_[id] = tok;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (has_unk_ && !vocab_.count(unk_token_))
    fail(where, ": model.unk_token '", unk_token_, "' is not in model.vocab");

  const auto& merges = m["merges"];
  merges_.reserve(merges.size());
  std::string a, b;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& e = merges[r];
    if (e.is_string()) {  // legacy "a b": exactly one space
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail(where, ": model.merges[", r, "] '", s, "' is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      fail(where, ": model.merges[", r, "] must be a pair of strings or an \"a b\" string");
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end()) fail(where, ": model.merges[", r, "]: token '", a, "' is not in model.vocab");
    if (ib == vocab_.end()) fail(where, ": model.merges[", r, "]: token '", b, "' is not in model.vocab");
    if (has_prefix_ && b.size() < prefix_.size())
      fail(where, ": model.merges[", r, "]: '", b, "' is shorter than continuing_subword_prefix");
    std::string merged = a + b.substr(has_prefix_ ? prefix_.size() : 0);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      fail(where, ": model.merges[", r, "]: merged token '", merged, "' is not in model.vocab");
    merges_.insert(ia->second, ib->second, int32_t(r), im->second);
  }
}

// ---- encoding -----------------------------------------------------------------------------------
namespace {
struct Symbol {
  int32_t id, prev, next, len;  // len 0: merged away
};
struct Merge {
  int32_t rank, pos, id;
};
// Min-heap order: lowest rank first, then leftmost position (the reference's Merge Ord).
struct MergeAfter {
  bool operator()(const Merge& x, const Merge& y) const {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  }
};
}  // namespace

void BPE::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Merge> heap;
  sym.clear();
  heap.clear();
  auto add = [&](int32_t id, int32_t len) {
    int32_t n = int32_t(sym.size());
    sym.push_back({id, n - 1, -1, len});
    if (n > 0) sym[n - 1].next = n;
  };
  int32_t unk_id = -1, unk_len = 0;  // a pending unk (fuse_unk extends it)
  std::string s;
  for (size_t i = 0; i < w.size();) {
    int len = 1;
    utf8_decode(w, i, &len);
    bool first = i == 0, last = i + len >= w.size();
    std::string_view ch = w.substr(i, len);
    i += len;
    std::string_view key = ch;
    if ((first && has_prefix_) || (last && has_suffix_)) {
      // The reference adds the prefix to the first char and the suffix to the last one.
      s.assign(first && has_prefix_ ? prefix_ : std::string());
      s += ch;
      if (last && has_suffix_) s += suffix_;
      key = s;
    }
    auto it = vocab_.find(key);
    if (it != vocab_.end()) {
      if (unk_id >= 0) add(unk_id, unk_len), unk_id = -1;
      add(it->second, len);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : key) all = all && byte_ids_[c] >= 0;
      if (all) {
        if (unk_id >= 0) add(unk_id, unk_len), unk_id = -1;
        for (unsigned char c : key) add(byte_ids_[c], 1);
        continue;
      }
    }
    if (has_unk_) {
      int32_t id = vocab_.find(unk_token_)->second;
      if (unk_id >= 0 && fuse_unk_) {
        unk_len += len;
      } else {
        if (unk_id >= 0) add(unk_id, unk_len);
        unk_id = id, unk_len = len;
      }
    }
    // No unk token: the reference drops the character.
  }
  if (unk_id >= 0) add(unk_id, unk_len);

  MergeAfter after;
  int32_t rank, id;
  for (size_t p = 0; p + 1 < sym.size(); ++p)
    if (merges_.find(sym[p].id, sym[p + 1].id, &rank, &id)) heap.push_back({rank, int32_t(p), id});
  std::make_heap(heap.begin(), heap.end(), after);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    Merge top = heap.back();
    heap.pop_back();
    Symbol& cur = sym[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    Symbol right = sym[cur.next];
    // Skip stale entries: the pair at this position changed since it was queued.
    if (!merges_.find(cur.id, right.id, &rank, &id) || id != top.id) continue;
    cur.id = top.id;
    cur.len += right.len;
    sym[cur.next].len = 0;
    cur.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0 && merges_.find(sym[cur.prev].id, cur.id, &rank, &id)) {
      heap.push_back({rank, cur.prev, id});
      std::push_heap(heap.begin(), heap.end(), after);
    }
    if (cur.next >= 0 && merges_.find(cur.id, sym[cur.next].id, &rank, &id)) {
      heap.push_back({rank, top.pos, id});
      std::push_heap(heap.begin(), heap.end(), after);
    }
  }
  for (const Symbol& x : sym)
    if (x.len != 0) out.push_back(x.id);
}

void BPE::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {  // Llama-3: a pre-token that is itself a token is emitted whole
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  bool cacheable = word.size() < kCacheMaxWord;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mu_);
    if (cache_.size() < kCacheCapacity)
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + start, out.end()));
  }
}

}  // namespace frugal::tok
