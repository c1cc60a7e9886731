// import_gguf.cpp: GGUF (llama) -> HF model dir. Sections: config, tensor map + un-permutation,
// tokenizer.json, streaming safetensors writer, import_gguf.
#include "src/cli/import_gguf.h"

#include "src/io/atomic_file.h"


#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_map>

#include "quant/ggml_quants.h"
#include "src/io/safetensors.h"

namespace frugal {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// ---- config ------------------------------------------------------------------------------------
namespace {
// llama.cpp's converter writes Llama-3.1-style RoPE scaling as rope_freqs.weight [head_dim/2], the
// divisor of each frequency (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors):
//   wl = 2π/freq; wl < omp/hff: 1; wl > omp/lff: factor; else 1 / ((1−s)/factor + s),
//   s = (omp/wl − lff)/(hff − lff)
// which is HF's rope_type "llama3". factor = the largest divisor; in the smooth band
// y = (1/r − 1/factor)/(1 − 1/factor) = a/wl − b with a = omp/(hff−lff), b = lff/(hff−lff): only
// (a, b) are identifiable, so lff = 1 (what every Llama 3.x config has) and hff = 1 + 1/b,
// omp = a/b. With fewer than two smooth entries hff = 4 (also universal) is assumed. The result is
// verified against every entry.
double llama3_divisor(double freq, double factor, double lff, double hff, double omp) {
  const double wl = 2 * M_PI / freq;
  if (wl < omp / hff) return 1.0;
  if (wl > omp / lff) return factor;
  const double s = (omp / wl - lff) / (hff - lff);
  return 1.0 / ((1 - s) / factor + s);
}

void infer_llama3_rope(const GGUFFile& f, const GGUFTensorInfo& t, LlamaConfig& c) {
  const int n = c.head_dim / 2;
  if (t.numel() != n)
    fail(f.path(), ": tensor 'rope_freqs.weight' has ", t.numel(), " elements, expected head_dim/2 = ", n);
  std::vector<float> r((size_t)n);
  dequantize(t.type, t.data, r.data(), n, f.path() + ": tensor 'rope_freqs.weight'");
  std::vector<double> freq((size_t)n);
  double factor = 0;
  for (int i = 0; i < n; ++i) {
    freq[i] = 1.0 / std::pow((double)c.rope.theta, 2.0 * i / c.head_dim);
    if (!(r[i] >= 1.0f) || !std::isfinite(r[i]))
      fail(f.path(), ": tensor 'rope_freqs.weight' entry ", i, " = ", r[i], " is not a frequency divisor >= 1");
    factor = std::max(factor, (double)r[i]);
  }
  if (factor == 1.0) return;  // no scaling at all
  std::vector<double> xs, ys;  // smooth band: y = a·x − b, x = 1/wl
  for (int i = 0; i < n; ++i)
    if (r[i] > 1.0f + 1e-6f && r[i] < factor * (1 - 1e-6)) {
      xs.push_back(freq[i] / (2 * M_PI));
      ys.push_back((1.0 / r[i] - 1.0 / factor) / (1.0 - 1.0 / factor));
    }
  double lff = 1.0, hff = 4.0, omp = 8192.0;
  if (xs.size() >= 2) {  // least squares for (a, b)
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    const double m = (double)xs.size();
    for (size_t k = 0; k < xs.size(); ++k) sx += xs[k], sy += ys[k], sxx += xs[k] * xs[k], sxy += xs[k] * ys[k];
    const double a = (m * sxy - sx * sy) / (m * sxx - sx * sx), b = (a * sx - sy) / m;
    if (b > 0 && a > 0) {
      hff = std::round((1.0 + 1.0 / b) * 1000) / 1000;
      omp = std::round(a / b);
    }
  } else if (xs.size() == 1) {  // lff = 1, hff = 4: y = (omp·x − 1)/3
    omp = std::round((3 * ys[0] + 1) / xs[0]);
  }
  for (int i = 0; i < n; ++i) {
    const double want = llama3_divisor(freq[i], factor, lff, hff, omp);
    if (!(std::abs(want - r[i]) <= 1e-4 * want))
      fail(f.path(), ": tensor 'rope_freqs.weight' does not follow Llama-3 RoPE scaling (entry ", i, " = ", r[i],
           ", expected ", want, " for factor ", factor, ", low_freq_factor ", lff, ", high_freq_factor ", hff,
           ", original_max_position_embeddings ", omp, ")");
  }
  c.rope.type = fm::ROPE_LLAMA3;
  c.rope.factor = (float)factor;
  c.rope.low_freq_factor = (float)lff;
  c.rope.high_freq_factor = (float)hff;
  c.rope.original_max_position_embeddings = (int)omp;
}
}  // namespace

LlamaConfig gguf_llama_config(const GGUFFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  if (arch != "llama")
    fail(f.path(), ": general.architecture = \"", arch, "\" is not supported (frugal imports \"llama\" GGUF files)");
  const std::string p = "llama.";
  LlamaConfig c;
  c.hidden_size = (int)f.get_int(p + "embedding_length");
  c.num_hidden_layers = (int)f.get_int(p + "block_count");
  c.intermediate_size = (int)f.get_int(p + "feed_forward_length");
  c.num_attention_heads = (int)f.get_int(p + "attention.head_count");
  c.num_key_value_heads = (int)f.get_int(p + "attention.head_count_kv", c.num_attention_heads);
  c.max_position_embeddings = (int)f.get_int(p + "context_length", 2048);
  c.rms_norm_eps = (float)f.get_float(p + "attention.layer_norm_rms_epsilon");
  if (c.num_attention_heads <= 0)
    fail(f.path(), ": metadata key 'llama.attention.head_count' must be positive, got ", c.num_attention_heads);
  if (f.has(p + "attention.key_length")) {
    c.head_dim = (int)f.get_int(p + "attention.key_length");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail(f.path(), ": llama.attention.head_count = ", c.num_attention_heads, " does not divide llama.embedding_length = ",
           c.hidden_size);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (f.has(p + "attention.value_length") && f.get_int(p + "attention.value_length") != c.head_dim)
    fail(f.path(), ": metadata key 'llama.attention.value_length' differs from the key length ", c.head_dim,
         " (not a Llama layout)");
  const int64_t rope_dim = f.get_int(p + "rope.dimension_count", c.head_dim);
  if (rope_dim != c.head_dim)
    fail(f.path(), ": metadata key 'llama.rope.dimension_count' = ", rope_dim, " differs from the head dim ", c.head_dim,
         " (partial rotary embeddings are not supported)");

  c.rope = fm::RopeParams{};
  c.rope.head_dim = c.head_dim;
  c.rope.max_position_embeddings = c.max_position_embeddings;
  c.rope.theta = (float)f.get_float(p + "rope.freq_base", 10000.0);
  // RoPE scaling: rope.scaling.type (none | linear | yarn), older files: rope.scale_linear.
  std::string st = f.get_string(p + "rope.scaling.type", "none");
  if (st == "none" && f.has(p + "rope.scale_linear")) {
    c.rope.type = fm::ROPE_LINEAR;
    c.rope.factor = (float)f.get_float(p + "rope.scale_linear");
  } else if (st == "linear") {
    c.rope.type = fm::ROPE_LINEAR;
    c.rope.factor = (float)f.get_float(p + "rope.scaling.factor");
  } else if (st == "yarn") {
    c.rope.type = fm::ROPE_YARN;
    c.rope.factor = (float)f.get_float(p + "rope.scaling.factor");
    c.rope.original_max_position_embeddings =
        (int)f.get_int(p + "rope.scaling.original_context_length", c.max_position_embeddings);
  } else if (st != "none") {
    fail(f.path(), ": metadata key 'llama.rope.scaling.type' = \"", st, "\" is not supported (none, linear, yarn)");
  }
  if (const GGUFTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
    if (c.rope.type != fm::ROPE_DEFAULT)
      fail(f.path(), ": tensor 'rope_freqs.weight' and llama.rope.scaling.type = \"", st, "\" both scale RoPE");
    infer_llama3_rope(f, *rf, c);
  }

  // vocabulary = rows of the embedding (what HF's vocab_size means)
  const GGUFTensorInfo& emb = f.tensor("token_embd.weight");
  if (emb.ne.size() != 2 || emb.ne[0] != c.hidden_size)
    fail(f.path(), ": tensor 'token_embd.weight' must be [vocab, ", c.hidden_size, "]");
  c.vocab_size = (int)emb.ne[1];
  if (f.has(p + "vocab_size") && f.get_int(p + "vocab_size") != c.vocab_size)
    fail(f.path(), ": metadata key 'llama.vocab_size' = ", f.get_int(p + "vocab_size"),
         " differs from the rows of token_embd.weight (", c.vocab_size, ")");
  if (f.has("tokenizer.ggml.tokens") && (int64_t)f.get_string_array("tokenizer.ggml.tokens").size() > c.vocab_size)
    fail(f.path(), ": metadata key 'tokenizer.ggml.tokens' has more tokens than token_embd.weight has rows (",
         c.vocab_size, ")");
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.bos_token_id = (int)f.get_int("tokenizer.ggml.bos_token_id", -1);
  c.eos_token_ids.clear();
  if (f.has("tokenizer.ggml.eos_token_id")) c.eos_token_ids.push_back((int)f.get_int("tokenizer.ggml.eos_token_id"));
  c.torch_dtype = "bfloat16";
  c.validate(f.path() + " (llama.* metadata)");
  return c;
}

// ---- tensors -----------------------------------------------------------------------------------
std::vector<GGUFTensorMap> gguf_llama_tensor_map(const GGUFFile& f, const LlamaConfig& c) {
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), ff = c.intermediate_size, V = c.vocab_size;
  std::vector<GGUFTensorMap> m;
  m.push_back({"model.embed_tokens.weight", "token_embd.weight", {V, d}, 0});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string hp = "model.layers." + std::to_string(i) + ".", gp = "blk." + std::to_string(i) + ".";
    m.push_back({hp + "input_layernorm.weight", gp + "attn_norm.weight", {d}, 0});
    m.push_back({hp + "self_attn.q_proj.weight", gp + "attn_q.weight", {q, d}, c.num_attention_heads});
    m.push_back({hp + "self_attn.k_proj.weight", gp + "attn_k.weight", {kv, d}, c.num_key_value_heads});
    m.push_back({hp + "self_attn.v_proj.weight", gp + "attn_v.weight", {kv, d}, 0});
    m.push_back({hp + "self_attn.o_proj.weight", gp + "attn_output.weight", {d, q}, 0});
    m.push_back({hp + "post_attention_layernorm.weight", gp + "ffn_norm.weight", {d}, 0});
    m.push_back({hp + "mlp.gate_proj.weight", gp + "ffn_gate.weight", {ff, d}, 0});
    m.push_back({hp + "mlp.up_proj.weight", gp + "ffn_up.weight", {ff, d}, 0});
    m.push_back({hp + "mlp.down_proj.weight", gp + "ffn_down.weight", {d, ff}, 0});
  }
  m.push_back({"model.norm.weight", "output_norm.weight", {d}, 0});
  if (!c.tie_word_embeddings) m.push_back({"lm_head.weight", "output.weight", {V, d}, 0});

  std::set<std::string> expected = {"rope_freqs.weight"};  // read by gguf_llama_config
  for (const GGUFTensorMap& t : m) {
    expected.insert(t.gguf_name);
    const GGUFTensorInfo& ti = f.tensor(t.gguf_name);
    if (ti.shape() != t.shape) {
      std::string got, want;
      for (int64_t x : ti.shape()) got += (got.empty() ? "" : ", ") + std::to_string(x);
      for (int64_t x : t.shape) want += (want.empty() ? "" : ", ") + std::to_string(x);
      fail(f.path(), ": tensor '", t.gguf_name, "' has shape [", got, "], expected [", want, "] for ", t.hf_name);
    }
    if (!ggml_can_dequantize(ti.type))
      fail(f.path(), ": tensor '", t.gguf_name, "' has type ", ggml_type_traits(ti.type).name,
           ", which the import cannot dequantize (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)");
  }
  for (const GGUFTensorInfo& ti : f.tensors())
    if (!expected.count(ti.name))
      fail(f.path(), ": tensor '", ti.name, "' is not part of a ", c.num_hidden_layers, "-layer Llama model");
  return m;
}

void unpermute_rows_bf16(bf16* w, int64_t rows, int64_t cols, int n_head) {
  FRUGAL_CHECK(n_head > 0 && rows % (2 * n_head) == 0, "rows ", rows, " not divisible by 2·heads ", n_head);
  const int64_t hd = rows / n_head, half = hd / 2;
  std::vector<bf16> tmp((size_t)(hd * cols));
  for (int h = 0; h < n_head; ++h) {
    bf16* base = w + h * hd * cols;
    // GGUF row 2j + s holds HF row s·half + j
    for (int64_t j = 0; j < half; ++j)
      for (int s = 0; s < 2; ++s)
        std::copy(base + (2 * j + s) * cols, base + (2 * j + s + 1) * cols, tmp.data() + (s * half + j) * cols);
    std::copy(tmp.begin(), tmp.end(), base);
  }
}

void gguf_load_tensor_bf16(const GGUFFile& f, const GGUFTensorMap& m, bf16* out) {
  const GGUFTensorInfo& ti = f.tensor(m.gguf_name);
  dequantize_bf16(ti.type, ti.data, out, ti.numel(), f.path() + ": tensor '" + m.gguf_name + "'");
  if (m.unpermute_heads > 0) unpermute_rows_bf16(out, m.shape[0], m.shape[1], m.unpermute_heads);
}

// ---- tokenizer ---------------------------------------------------------------------------------
namespace {

void utf8_append(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += (char)(0xE0 | (cp >> 12));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xF0 | (cp >> 18));
    s += (char)(0x80 | ((cp >> 12) & 0x3F));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  }
}

// Decodes UTF-8 into code points; false if the bytes are not valid UTF-8.
bool utf8_decode(const std::string& s, std::vector<uint32_t>* out) {
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = (unsigned char)s[i];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      const unsigned char cc = (unsigned char)s[i + k];
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out->push_back(cp);
    i += n;
  }
  return true;
}

// GPT-2 bytes_to_unicode (SPEC §7): code point of each byte.
std::vector<uint32_t> byte_to_cp() {
  std::vector<uint32_t> m(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    m[b] = keep ? (uint32_t)b : 0x100 + n++;
  }
  return m;
}

// Split regexes transformers' GGUF converter uses per tokenizer.ggml.pre (GGUF_PRE_TOKENIZER_SPLITS).
const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
const char* kGpt4oSplit =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

ojson byte_level(bool use_regex) {
  return ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

ojson byte_level_pre_tokenizer(const std::string& pre) {
  static const std::set<std::string> llama3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                               "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"};
  static const std::set<std::string> qwen2 = {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"};
  static const std::set<std::string> gpt4o = {"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"};
  // llama.cpp (llama-vocab.cpp) splits single digits first for these, then the GPT-2 regex: the
  // same as SmolLM/StarCoder's own tokenizer.json (Digits individual + ByteLevel). transformers'
  // GGUF converter has no entry for them and would keep plain ByteLevel, merging digit runs.
  static const std::set<std::string> digits = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                                               "minerva"};
  const char* split = llama3.count(pre) ? kLlama3Split : qwen2.count(pre) ? kQwen2Split : gpt4o.count(pre) ? kGpt4oSplit : nullptr;
  if (split)
    return ojson{{"type", "Sequence"},
                 {"pretokenizers", ojson::array({ojson{{"type", "Split"},
                                                       {"pattern", {{"Regex", split}}},
                                                       {"behavior", "Isolated"},
                                                       {"invert", false}},
                                                 byte_level(false)})}};
  if (digits.count(pre))
    return ojson{{"type", "Sequence"},
                 {"pretokenizers",
                  ojson::array({ojson{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}};
  if (pre != "default" && pre != "gpt2" && !pre.empty())
    std::fprintf(stderr, "frugal import-gguf: tokenizer.ggml.pre = \"%s\" is not known; using GPT-2's ByteLevel "
                         "pre-tokenizer (as transformers does)\n", pre.c_str());
  return byte_level(true);
}

ojson template_processing(bool add_bos, bool add_eos, const std::string& bos, int bos_id, const std::string& eos,
                          int eos_id) {
  auto seq = [&](const char* id, int type_id) {
    ojson a = ojson::array();
    if (add_bos) a.push_back({{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}});
    a.push_back({{"Sequence", {{"id", id}, {"type_id", type_id}}}});
    if (add_eos) a.push_back({{"SpecialToken", {{"id", eos}, {"type_id", type_id}}}});
    return a;
  };
  ojson single = seq("A", 0), pair = seq("A", 0);
  for (auto& x : seq("B", 1)) pair.push_back(x);
  ojson special = ojson::object();
  if (add_bos) special[bos] = {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}};
  if (add_eos) special[eos] = {{"id", eos}, {"ids", {eos_id}}, {"tokens", {eos}}};
  return ojson{{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}};
}

}  // namespace

std::vector<std::pair<std::string, std::string>> sentencepiece_merges(const std::vector<std::string>& tokens,
                                                                       const std::vector<double>& scores) {
  // vocab: token -> index (last occurrence wins, as a Python dict comprehension); iteration in
  // first-occurrence order with the last score (dict(zip(tokens, scores))).
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<std::string, double> score;
  std::vector<const std::string*> order;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!score.count(tokens[i])) order.push_back(&tokens[i]);
    vocab[tokens[i]] = (int64_t)i;
    score[tokens[i]] = scores[i];
  }
  struct M {
    std::string l, r;
    double score;
    size_t ll, lr;  // lengths in code points
  };
  std::vector<M> merges;
  std::vector<uint32_t> cps;
  for (const std::string* t : order) {
    if (!utf8_decode(*t, &cps) || cps.size() < 2) continue;
    std::vector<M> local;
    std::string left;
    for (size_t k = 1; k < cps.size(); ++k) {
      utf8_append(left, cps[k - 1]);
      std::string right;
      for (size_t j = k; j < cps.size(); ++j) utf8_append(right, cps[j]);
      if (vocab.count(left) && vocab.count(right)) local.push_back({left, right, score[*t], k, cps.size() - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const M& a, const M& b) {
      const int64_t al = vocab[a.l], bl = vocab[b.l];
      return al != bl ? al < bl : vocab[a.r] < vocab[b.r];
    });
    for (M& x : local) merges.push_back(std::move(x));
  }
  // sorted(key=(score, len(l), len(r)), reverse=True): descending, ties keep their order
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.ll != b.ll) return a.ll > b.ll;
    return a.lr > b.lr;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (M& x : merges) out.emplace_back(std::move(x.l), std::move(x.r));
  return out;
}

ojson gguf_tokenizer_json(const GGUFFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2" && model != "llama")
    fail(f.path(), ": metadata key 'tokenizer.ggml.model' = \"", model,
         "\" is not supported (gpt2: byte-level BPE, llama: SentencePiece BPE)");
  std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  const int64_t n = (int64_t)tokens.size();
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_int_array("tokenizer.ggml.token_type");
    if ((int64_t)types.size() != n)
      fail(f.path(), ": metadata key 'tokenizer.ggml.token_type' has ", types.size(), " items for ", n, " tokens");
  }
  const bool byte_lvl = model == "gpt2";

  std::vector<bool> in_alphabet(n, true);  // every code point in the byte-level alphabet
  if (byte_lvl) {
    const std::vector<uint32_t> b2c = byte_to_cp();
    const std::set<uint32_t> alphabet(b2c.begin(), b2c.end());
    std::vector<uint32_t> cps;
    for (int64_t i = 0; i < n; ++i) {
      bool ok = utf8_decode(tokens[i], &cps);
      for (uint32_t cp : cps) ok = ok && alphabet.count(cp);
      in_alphabet[i] = ok;
      if (!ok) {  // respell the token's bytes in the byte alphabet (transformers byte_level_tokenizer)
        std::string s;
        for (unsigned char ch : tokens[i]) utf8_append(s, b2c[ch]);
        tokens[i] = s;
      }
    }
  }
  // {token: id} in id order; a repeated token keeps its first position and its last id (a Python
  // dict comprehension). ordered_json's own insert searches linearly, so the entries go straight
  // into its underlying vector, deduplicated here.
  ojson vocab = ojson::object();
  {
    auto& entries = static_cast<std::vector<std::pair<const std::string, ojson>>&>(vocab.get_ref<ojson::object_t&>());
    std::unordered_map<std::string, size_t> pos;
    entries.reserve((size_t)n);
    for (int64_t i = 0; i < n; ++i) {
      auto [it, fresh] = pos.emplace(tokens[i], entries.size());
      if (fresh) entries.emplace_back(tokens[i], ojson(i));
      else entries[it->second].second = i;
    }
  }

  ojson merges = ojson::array();
  if (f.has("tokenizer.ggml.merges")) {
    const auto& ms = f.get_string_array("tokenizer.ggml.merges");
    for (size_t k = 0; k < ms.size(); ++k) {
      const size_t sp = ms[k].find(' ');
      if (sp == std::string::npos || ms[k].find(' ', sp + 1) != std::string::npos)
        fail(f.path(), ": metadata key 'tokenizer.ggml.merges' item ", k, " \"", ms[k], "\" is not \"left right\"");
      merges.push_back({ms[k].substr(0, sp), ms[k].substr(sp + 1)});
    }
  } else if (!byte_lvl) {
    const std::vector<double> scores = f.get_float_array("tokenizer.ggml.scores");
    if ((int64_t)scores.size() != n)
      fail(f.path(), ": metadata key 'tokenizer.ggml.scores' has ", scores.size(), " items for ", n, " tokens");
    for (auto& [l, r] : sentencepiece_merges(tokens, scores)) merges.push_back({l, r});
  } else {
    fail(f.path(), ": metadata key 'tokenizer.ggml.merges' is missing (needed for a gpt2 tokenizer)");
  }

  // Added tokens: CONTROL (3) and the bos/eos/unk/pad tokens are special; USER_DEFINED (4) are not.
  std::map<int64_t, bool> added;  // id -> special
  for (int64_t i = 0; i < (int64_t)types.size(); ++i)
    if (types[i] == 3 && in_alphabet[i]) added[i] = true;
  int bos_id = -1, eos_id = -1;
  for (const char* k : {"bos", "eos", "unknown", "padding"}) {
    const std::string key = std::string("tokenizer.ggml.") + k + "_token_id";
    if (!f.has(key)) continue;
    const int64_t id = f.get_int(key);
    if (id < 0 || id >= n) fail(f.path(), ": metadata key '", key, "' = ", id, " is outside the ", n, " tokens");
    added[id] = true;
    if (std::string(k) == "bos") bos_id = (int)id;
    if (std::string(k) == "eos") eos_id = (int)id;
  }
  for (int64_t i = 0; i < (int64_t)types.size(); ++i)
    if (types[i] == 4 && !added.count(i)) added[i] = false;
  ojson added_tokens = ojson::array();
  for (auto& [id, special] : added)
    added_tokens.push_back({{"id", id}, {"content", tokens[id]}, {"single_word", false}, {"lstrip", false},
                            {"rstrip", false}, {"normalized", false}, {"special", special}});

  const bool add_bos = f.get_bool("tokenizer.ggml.add_bos_token", !byte_lvl) && bos_id >= 0;
  const bool add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false) && eos_id >= 0;
  ojson j = ojson::object();
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added_tokens;
  j["normalizer"] = nullptr;
  const std::string bos = bos_id >= 0 ? tokens[bos_id] : "", eos = eos_id >= 0 ? tokens[eos_id] : "";
  if (byte_lvl) {
    j["pre_tokenizer"] = byte_level_pre_tokenizer(f.get_string("tokenizer.ggml.pre", "default"));
    j["post_processor"] = template_processing(add_bos, add_eos, bos, bos_id, eos, eos_id);
    j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                  {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                  {"vocab", vocab}, {"merges", merges}};
  } else {
    // LlamaTokenizer: Metaspace with prepend "first" unless tokenizer.ggml.add_space_prefix = false.
    const bool prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", prefix ? "first" : "never"},
                          {"split", false}};
    j["post_processor"] = template_processing(add_bos, add_eos, bos, bos_id, eos, eos_id);
    ojson dec = ojson::array({ojson{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                              ojson{{"type", "ByteFallback"}}, ojson{{"type", "Fuse"}}});
    if (prefix) dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    j["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
    j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                  {"vocab", vocab}, {"merges", merges}};
  }
  return j;
}

ojson gguf_tokenizer_config_json(const GGUFFile& f, const LlamaConfig& cfg) {
  const auto& tokens = f.get_string_array("tokenizer.ggml.tokens");
  const bool byte_lvl = f.get_string("tokenizer.ggml.model") == "gpt2";
  ojson j = ojson::object();
  j["add_bos_token"] = f.get_bool("tokenizer.ggml.add_bos_token", !byte_lvl);
  j["add_eos_token"] = f.get_bool("tokenizer.ggml.add_eos_token", false);
  for (auto [name, key] : {std::pair{"bos_token", "bos"}, {"eos_token", "eos"}, {"unk_token", "unknown"}, {"pad_token", "padding"}}) {
    const std::string k = std::string("tokenizer.ggml.") + key + "_token_id";
    if (f.has(k)) j[name] = tokens.at((size_t)f.get_int(k));  // range checked by gguf_tokenizer_json
  }
  if (f.has("tokenizer.chat_template")) j["chat_template"] = f.get_string("tokenizer.chat_template");
  j["clean_up_tokenization_spaces"] = false;
  j["model_max_length"] = cfg.max_position_embeddings;
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  return j;
}

LlamaConfig import_gguf(const std::string& gguf_path, const std::string& out_dir, const ImportOptions& opt) {
  GGUFFile f(gguf_path);
  const LlamaConfig cfg = gguf_llama_config(f);
  const std::vector<GGUFTensorMap> tmap = gguf_llama_tensor_map(f, cfg);
  const bool has_tok = f.has("tokenizer.ggml.model");
  ojson tok, tok_cfg;
  if (has_tok) {  // built before anything is written: a bad tokenizer leaves no half-written dir
    tok = gguf_tokenizer_json(f);
    tok_cfg = gguf_tokenizer_config_json(f, cfg);
  }

  const fs::path dir(out_dir);
  if (fs::exists(dir)) {
    if (!fs::is_directory(dir)) fail(out_dir, ": exists and is not a directory");
    if (!fs::is_empty(dir) && !opt.force) fail(out_dir, ": directory is not empty (use --force to overwrite)");
  } else {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail(out_dir, ": cannot create directory: ", ec.message());
  }

  // File order and header from SafetensorsWriter; the data pointers are never read (bytes are
  // streamed tensor by tensor), so memory stays at one tensor.
  static const uint8_t dummy = 0;
  SafetensorsWriter all;
  std::map<std::string, const GGUFTensorMap*> by_name;
  for (const GGUFTensorMap& t : tmap) {
    by_name[t.hf_name] = &t;
    int64_t numel = 1;
    for (int64_t x : t.shape) numel *= x;
    all.add(t.hf_name, DType::BF16, t.shape, &dummy, (size_t)numel * sizeof(bf16));
  }
  all.set_metadata({{"format", "pt"}});
  avector<bf16> buf;  // one tensor at a time
  stream_model_files(out_dir, all, opt.max_shard_bytes, [&](const SafetensorsWriter::Entry& e, const TensorSink& sink) {
    auto t0 = std::chrono::steady_clock::now();
    buf.resize(e.nbytes / sizeof(bf16));
    gguf_load_tensor_bf16(f, *by_name.at(e.name), buf.data());
    sink(buf.data(), e.nbytes);
    if (opt.verbose) {
      const GGUFTensorInfo& ti = f.tensor(by_name.at(e.name)->gguf_name);
      std::fprintf(stderr, "  %-44s <- %-28s %-5s %.3f s\n", e.name.c_str(), ti.name.c_str(), ggml_type_traits(ti.type).name,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  });
  if (has_tok) {
    std::string tj;
    try {
      tj = tok.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    } catch (const nlohmann::json::exception& e) {
      fail(gguf_path, ": metadata key 'tokenizer.ggml.tokens' holds a token that is not valid UTF-8: ", e.what());
    }
    write_file_atomic((dir / "tokenizer.json").string(), tj + "\n");
    write_file_atomic((dir / "tokenizer_config.json").string(), tok_cfg.dump(2) + "\n");
  }
  write_file_atomic((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
  return cfg;
}

}  // namespace frugal
