// init.cpp: `frugal init` behind the CLI — random Llama weights in Hugging Face layout.
// Weights are generated chunk by chunk (counter-based RNG, OpenMP) and streamed into the
// safetensors file(s), so memory stays at one chunk whatever the model size. The header bytes come
// from SafetensorsWriter::header(), so the layout is exactly the one the writer produces.
#include "src/model/init.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"

namespace frugal {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorSpec::numel() const {
  return shape_numel(shape);
}

std::vector<TensorSpec> llama_tensor_specs(const LlamaConfig& c) {
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size, V = c.vocab_size;
  std::vector<TensorSpec> t;
  t.push_back({"model.embed_tokens.weight", {V, d}, false});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {d}, true});
    t.push_back({p + "self_attn.q_proj.weight", {q, d}, false});
    t.push_back({p + "self_attn.k_proj.weight", {kv, d}, false});
    t.push_back({p + "self_attn.v_proj.weight", {kv, d}, false});
    t.push_back({p + "self_attn.o_proj.weight", {d, q}, false});
    t.push_back({p + "post_attention_layernorm.weight", {d}, true});
    t.push_back({p + "mlp.gate_proj.weight", {f, d}, false});
    t.push_back({p + "mlp.up_proj.weight", {f, d}, false});
    t.push_back({p + "mlp.down_proj.weight", {d, f}, false});
  }
  t.push_back({"model.norm.weight", {d}, true});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {V, d}, false});
  return t;
}

// ---- counter-based normal generator ----------------------------------------------------------
// Pair p (samples 2p, 2p+1) comes from one splitmix64 output a = splitmix_at(key, p):
//   u1 = (a>>32 + 1)·2^-32 ∈ (0, 1], u2 = (a & 0xffffffff)·2^-32 ∈ [0, 1)  (radius ≤ 6.66σ)
//   r = std·sqrt(−2 ln u1), (z0, z1) = r·(cos 2πu2, sin 2πu2)        (Box-Muller)
// in fp32 with Cephes' logf/sinf/cosf polynomials (~1 ulp), every multiply-add an explicit fma,
// so the scalar reference and the AVX-512 path give the same bits (output is bf16 anyway).
namespace {
inline uint64_t mix64(uint64_t z) {  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
// Output number i of the splitmix64 stream seeded with key.
inline uint64_t splitmix_at(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * kGolden); }

constexpr float kTwoM32 = 2.3283064365386963e-10f;  // 2^-32
constexpr float kSqrtHalf = 0.707106781186547524f;
constexpr float kLogP[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                            -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                            2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
constexpr float kLogQ1 = -2.12194440e-4f, kLogQ2 = 0.693359375f;
constexpr float kPiO2 = 1.57079632679489661923f;
constexpr float kS0 = -1.9515295891e-4f, kS1 = 8.3321608736e-3f, kS2 = -1.6666654611e-1f;
constexpr float kC0 = 2.443315711809948e-5f, kC1 = -1.388731625493765e-3f, kC2 = 4.166664568298827e-2f;

// The scalar definition of pair p (the reference the vector path must match bit for bit).
inline void normal_pair(uint64_t key, uint64_t p, float std, float* z0, float* z1) {
  const uint64_t a = splitmix_at(key, p);
  const float u1 = (float)((a >> 32) + 1) * kTwoM32;
  const float u2 = (float)(a & 0xffffffffull) * kTwoM32;
  // ln(u1), Cephes logf: u1 = m·2^e, m ∈ [√½, √2)
  uint32_t bits = fm::f32_bits(u1);
  int e = (int)(bits >> 23) - 126;
  float m = fm::bits_f32((bits & 0x007fffffu) | 0x3f000000u);
  float x;
  if (m < kSqrtHalf) {
    e -= 1;
    x = (m + m) - 1.0f;
  } else {
    x = m - 1.0f;
  }
  const float fe = (float)e, z = x * x;
  float y = kLogP[0];
  for (int i = 1; i < 9; ++i) y = std::fma(y, x, kLogP[i]);
  y = (y * x) * z;
  y = std::fma(fe, kLogQ1, y);
  y = std::fma(z, -0.5f, y);
  float l = x + y;
  l = std::fma(fe, kLogQ2, l);
  const float r = std::sqrt(-2.0f * l) * std;
  // sin/cos(2π·u2): quadrant q = rint(4·u2), xx = (4·u2 − q)·π/2 ∈ [−π/4, π/4]
  const float t = u2 * 4.0f, q = std::nearbyint(t);
  const float xx = (t - q) * kPiO2, x2 = xx * xx;
  const float s = std::fma(std::fma(std::fma(kS0, x2, kS1), x2, kS2), x2 * xx, xx);
  const float c = std::fma(std::fma(std::fma(kC0, x2, kC1), x2, kC2), x2 * x2, std::fma(x2, -0.5f, 1.0f));
  const int qi = (int)q & 3;
  float cs = (qi & 1) ? s : c, sn = (qi & 1) ? c : s;
  if ((qi + 1) & 2) cs = -cs;
  if (qi & 2) sn = -sn;
  *z0 = r * cs;
  *z1 = r * sn;
}

inline bf16 to_bf16(float f) { return bf16::from_float(f); }

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
// Pairs p .. p+7 -> out[0..16) = z0(p), z1(p), z0(p+1), ... as bf16.
inline void normal_8pairs_avx512(uint64_t key, uint64_t p, float std, bf16* out) {
  const __m512i lane = _mm512_set_epi64(8, 7, 6, 5, 4, 3, 2, 1);  // i + 1 for i = p + lane
  __m512i zz = _mm512_add_epi64(_mm512_set1_epi64((long long)key),
                                _mm512_mullo_epi64(_mm512_add_epi64(_mm512_set1_epi64((long long)p), lane),
                                                   _mm512_set1_epi64((long long)kGolden)));
  zz = _mm512_mullo_epi64(_mm512_xor_si512(zz, _mm512_srli_epi64(zz, 30)),
                          _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull));
  zz = _mm512_mullo_epi64(_mm512_xor_si512(zz, _mm512_srli_epi64(zz, 27)),
                          _mm512_set1_epi64((long long)0x94D049BB133111EBull));
  zz = _mm512_xor_si512(zz, _mm512_srli_epi64(zz, 31));
  const __m256 two_m32 = _mm256_set1_ps(kTwoM32);
  const __m256 u1 = _mm256_mul_ps(
      _mm512_cvtepu64_ps(_mm512_add_epi64(_mm512_srli_epi64(zz, 32), _mm512_set1_epi64(1))), two_m32);
  const __m256 u2 = _mm256_mul_ps(_mm512_cvtepu64_ps(_mm512_and_si512(zz, _mm512_set1_epi64(0xffffffffll))), two_m32);
  // ln(u1)
  const __m256i bits = _mm256_castps_si256(u1);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126));
  const __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrtHalf), _CMP_LT_OQ);
  e = _mm256_add_epi32(e, _mm256_castps_si256(small));  // -1 where small
  const __m256 x = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), small);
  const __m256 fe = _mm256_cvtepi32_ps(e), z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(kLogP[0]);
  for (int i = 1; i < 9; ++i) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kLogP[i]));
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(fe, _mm256_set1_ps(kLogQ1), y);
  y = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5f), y);
  __m256 l = _mm256_add_ps(x, y);
  l = _mm256_fmadd_ps(fe, _mm256_set1_ps(kLogQ2), l);
  const __m256 r = _mm256_mul_ps(_mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), l)), _mm256_set1_ps(std));
  // sin/cos
  const __m256 t = _mm256_mul_ps(u2, _mm256_set1_ps(4.0f));
  const __m256 q = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 xx = _mm256_mul_ps(_mm256_sub_ps(t, q), _mm256_set1_ps(kPiO2));
  const __m256 x2 = _mm256_mul_ps(xx, xx);
  const __m256 s = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kS0), x2, _mm256_set1_ps(kS1)), x2, _mm256_set1_ps(kS2)),
      _mm256_mul_ps(x2, xx), xx);
  const __m256 c = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kC0), x2, _mm256_set1_ps(kC1)), x2, _mm256_set1_ps(kC2)),
      _mm256_mul_ps(x2, x2), _mm256_fmadd_ps(x2, _mm256_set1_ps(-0.5f), one));
  const __m256i qi = _mm256_and_si256(_mm256_cvtps_epi32(q), _mm256_set1_epi32(3));
  const __m256 swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
  const __m256i neg_cs = _mm256_and_si256(
      _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30), sign);
  const __m256i neg_sn = _mm256_and_si256(_mm256_slli_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(2)), 30), sign);
  const __m256 cs = _mm256_xor_ps(_mm256_blendv_ps(c, s, swap), _mm256_castsi256_ps(neg_cs));
  const __m256 sn = _mm256_xor_ps(_mm256_blendv_ps(s, c, swap), _mm256_castsi256_ps(neg_sn));
  const __m256 z0 = _mm256_mul_ps(r, cs), z1 = _mm256_mul_ps(r, sn);
  // interleave to z0[0], z1[0], z0[1], ... and round to bf16 (nearest even, as fm::float_to_bf16_bits)
  const __m512 both = _mm512_insertf32x8(_mm512_castps256_ps512(z0), z1, 1);
  const __m512i idx = _mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
  __m512i u = _mm512_castps_si512(_mm512_permutexvar_ps(idx, both));
  u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                           _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  _mm256_storeu_si256((__m256i*)out, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}
#endif
}  // namespace

uint64_t init_stream_key(uint64_t seed, const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a 64 of the name
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001B3ull;
  return mix64(mix64(seed) ^ h);
}

void normal_bf16_ref(bf16* x, int64_t start, int64_t n, float std, uint64_t key) {
  for (int64_t k = start; k < start + n; ++k) {
    float z0, z1;
    normal_pair(key, (uint64_t)(k / 2), std, &z0, &z1);
    x[k - start] = to_bf16(k % 2 ? z1 : z0);
  }
}

void normal_bf16(bf16* x, int64_t start, int64_t n, float std, uint64_t key) {
  if (n <= 0) return;
  const int64_t end = start + n;
  // blocks of 8 pairs = 16 samples, aligned to sample index 0; edge blocks go through the scalar path
  const int64_t b0 = start / 16, b1 = (end - 1) / 16;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t b = b0; b <= b1; ++b) {
    const int64_t k0 = b * 16;
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
    if (k0 >= start && k0 + 16 <= end) {
      normal_8pairs_avx512(key, (uint64_t)(k0 / 2), std, x + (k0 - start));
      continue;
    }
#endif
    const int64_t lo = std::max(k0, start), hi = std::min(k0 + 16, end);
    normal_bf16_ref(x + (lo - start), lo, hi - lo, std, key);
  }
}

// ---- tokenizer.json ---------------------------------------------------------------------------
TokenizerInfo read_tokenizer_info(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open tokenizer file");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object() || !j["model"].contains("vocab"))
    fail(path, ": key 'model.vocab' missing: not a Hugging Face tokenizer.json");
  std::map<std::string, int> ids;  // content -> id (added tokens override the model vocab)
  int64_t max_id = -1;
  const json& vocab = j["model"]["vocab"];
  if (vocab.is_object()) {  // BPE / WordPiece / WordLevel: {token: id}
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer()) fail(path, ": key 'model.vocab' entry \"", it.key(), "\" has no integer id");
      int64_t id = it.value().get<int64_t>();
      max_id = std::max(max_id, id);
      ids[it.key()] = (int)id;
    }
  } else if (vocab.is_array()) {  // Unigram: [[token, score], ...], id = position
    for (size_t i = 0; i < vocab.size(); ++i)
      if (vocab[i].is_array() && !vocab[i].empty() && vocab[i][0].is_string()) ids[vocab[i][0].get<std::string>()] = (int)i;
    max_id = (int64_t)vocab.size() - 1;
  } else {
    fail(path, ": key 'model.vocab' must be an object or a list");
  }
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) fail(path, ": key 'added_tokens' must be a list");
    for (const json& t : j["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
          !t["content"].is_string())
        fail(path, ": key 'added_tokens' has an entry without integer 'id' and string 'content': ", t.dump());
      int64_t id = t["id"].get<int64_t>();
      max_id = std::max(max_id, id);
      ids[t["content"].get<std::string>()] = (int)id;
    }
  }
  if (max_id < 0) fail(path, ": the tokenizer has no tokens");
  if (max_id >= INT32_MAX) fail(path, ": token id ", max_id, " is too large");
  TokenizerInfo info;
  info.vocab_size = (int)(max_id + 1);
  auto first = [&](std::initializer_list<const char*> names, std::string* content) {
    for (const char* n : names)
      if (auto it = ids.find(n); it != ids.end()) {
        *content = n;
        return it->second;
      }
    return -1;
  };
  // Llama-3, Llama-2/Mistral/TinyLlama (sentencepiece), Gemma, GPT-2/SmolLM (bos = eos = <|endoftext|>)
  info.bos_token_id = first({"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>"}, &info.bos_token);
  int eos = first({"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"}, &info.eos_token);
  if (eos >= 0) info.eos_token_ids = {eos};
  return info;
}

// ---- init_model -------------------------------------------------------------------------------
LlamaConfig init_model(const LlamaConfig& cfg_in, const std::string& out_dir, uint64_t seed, const InitOptions& opt) {
  LlamaConfig cfg = cfg_in;
  TokenizerInfo t;
  if (!opt.tokenizer.empty()) {
    t = read_tokenizer_info(opt.tokenizer);
    cfg.vocab_size = t.vocab_size;  // exact, as HF configs carry it (no rounding)
    cfg.bos_token_id = t.bos_token_id;
    cfg.eos_token_ids = t.eos_token_ids;
  }
  cfg.torch_dtype = "bfloat16";  // what the weights are stored as
  cfg.validate(out_dir + "/config.json");
  FRUGAL_CHECK(opt.chunk_elems >= 2 && opt.max_shard_bytes > 0, "bad InitOptions");

  const fs::path dir(out_dir);
  if (fs::exists(dir)) {
    if (!fs::is_directory(dir)) fail(out_dir, ": exists and is not a directory");
    if (!fs::is_empty(dir) && !opt.force)
      fail(out_dir, ": directory is not empty (use --force to overwrite)");
  } else {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail(out_dir, ": cannot create directory: ", ec.message());
  }

  // All entries in one writer to get its file order; the data pointer is never read (the bytes
  // are streamed), it only has to be non-null.
  const std::vector<TensorSpec> specs = llama_tensor_specs(cfg);
  std::map<std::string, const TensorSpec*> spec_of;
  static const uint8_t dummy = 0;
  SafetensorsWriter all;
  for (const TensorSpec& s : specs) {
    spec_of[s.name] = &s;
    all.add(s.name, DType::BF16, s.shape, &dummy, (size_t)s.numel() * sizeof(bf16));
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  all.set_metadata(meta);

  // Stream each tensor chunk by chunk into the (possibly sharded) files: memory stays at one chunk.
  avector<bf16> buf((size_t)opt.chunk_elems);
  stream_model_files(out_dir, all, opt.max_shard_bytes, [&](const SafetensorsWriter::Entry& e, const TensorSink& sink) {
    const TensorSpec& s = *spec_of.at(e.name);
    const int64_t numel = s.numel();
    const uint64_t key = init_stream_key(seed, s.name);
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t start = 0; start < numel; start += (int64_t)opt.chunk_elems) {
      const int64_t cnt = std::min<int64_t>((int64_t)opt.chunk_elems, numel - start);
      if (s.is_norm) {
        for (int64_t i = 0; i < cnt; ++i) buf[i] = bf16::from_float(1.0f);
      } else {
        normal_bf16(buf.data(), start, cnt, cfg.initializer_range, key);
      }
      sink(buf.data(), (size_t)cnt * sizeof(bf16));
    }
    if (opt.verbose) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "  %-48s %12lld elems %7.2f s\n", s.name.c_str(), (long long)numel, sec);
    }
  });

  if (!opt.tokenizer.empty()) {
    std::ifstream in(opt.tokenizer, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) fail(opt.tokenizer, ": read failed");
    write_file_atomic((dir / "tokenizer.json").string(), content);
    const fs::path tc = fs::path(opt.tokenizer).parent_path() / "tokenizer_config.json";
    if (fs::exists(tc)) {
      std::ifstream tin(tc, std::ios::binary);
      std::string tcs((std::istreambuf_iterator<char>(tin)), std::istreambuf_iterator<char>());
      write_file_atomic((dir / "tokenizer_config.json").string(), tcs);
    } else {
      json tj = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"model_max_length", cfg.max_position_embeddings}};
      if (!t.bos_token.empty()) tj["bos_token"] = t.bos_token;
      if (!t.eos_token.empty()) tj["eos_token"] = t.eos_token;
      write_file_atomic((dir / "tokenizer_config.json").string(), tj.dump(2) + "\n");
    }
  }
  write_file_atomic((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
  return cfg;
}

}  // namespace frugal
