// test_config.cpp: LlamaConfig parsing/validation/serialization and `frugal init` (init_model).
// Checked against: config.json files as published on the Hugging Face Hub (tests/fixtures/config),
// the parameter counts of SPEC §8 (and the published counts of the fixture models), the tensor
// names/shapes of SPEC §2, and statistical bounds of N(0, initializer_range²) for the random init.
#include <gtest/gtest.h>
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "src/model/config.h"
#include "src/model/init.h"
#include "src/io/safetensors.h"

using namespace frugal;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fixture(const std::string& name) {
  return std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/config/" + name;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// A fresh empty temp dir per test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("frugal_test_config_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

// Loads j written to <dir>/<name> and returns the error message ("" when it parsed).
std::string load_error(const TempDir& d, const std::string& name, const json& j) {
  std::string p = (d.path / name).string();
  std::ofstream(p) << j.dump(2);
  try {
    LlamaConfig::load(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_same(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.initializer_range, b.initializer_range);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.head_dim, b.rope.head_dim);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.rope.max_position_embeddings, b.rope.max_position_embeddings);
  EXPECT_EQ(a.rope.beta_fast, b.rope.beta_fast);
  EXPECT_EQ(a.rope.beta_slow, b.rope.beta_slow);
  EXPECT_EQ(a.rope.attention_factor, b.rope.attention_factor);
  EXPECT_EQ(a.rope.truncate, b.rope.truncate);
  EXPECT_EQ(a.rope.mscale, b.rope.mscale);
  EXPECT_EQ(a.rope.mscale_all_dim, b.rope.mscale_all_dim);
}

const char* kValidFixtures[] = {"llama-3.1-8b.json",          "llama-3.2-1b.json",  "tinyllama-1.1b-chat-v1.0.json",
                                "smollm2-135m.json",          "llama-2-7b-hf.json", "vicuna-7b-v1.5-16k.json",
                                "mistral-7b-v0.3.json"};

}  // namespace

// ---- published configs ---------------------------------------------------------------------------
TEST(Config, Llama31_8B) {
  LlamaConfig c = LlamaConfig::load(fixture("llama-3.1-8b.json"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // absent: hidden / heads
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope.type, fm::ROPE_LLAMA3);
  EXPECT_EQ(c.rope.theta, 500000.f);
  EXPECT_EQ(c.rope.factor, 8.f);
  EXPECT_EQ(c.rope.low_freq_factor, 1.f);
  EXPECT_EQ(c.rope.high_freq_factor, 4.f);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.rope.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope.head_dim, 128);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{128001});
  EXPECT_EQ(c.num_parameters(), 8030261248LL);  // SPEC §8
}

TEST(Config, Llama32_1B_TiedFactor32) {
  LlamaConfig c = LlamaConfig::load(fixture("llama-3.2-1b.json"));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.rope.type, fm::ROPE_LLAMA3);
  EXPECT_EQ(c.rope.factor, 32.f);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.num_parameters(), 1235814400LL);  // published: 1.24B (model card / safetensors total)
}

TEST(Config, TinyLlama) {
  LlamaConfig c = LlamaConfig::load(fixture("tinyllama-1.1b-chat-v1.0.json"));
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 22);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.intermediate_size, 5632);
  EXPECT_EQ(c.rope.type, fm::ROPE_DEFAULT);  // rope_scaling null
  EXPECT_EQ(c.rope.theta, 10000.f);
  EXPECT_EQ(c.num_parameters(), 1100048384LL);  // published 1.1B
}

TEST(Config, SmolLM2_135M) {
  LlamaConfig c = LlamaConfig::load(fixture("smollm2-135m.json"));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope.theta, 100000.f);  // written as an integer in the file
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{0});
  EXPECT_EQ(c.initializer_range, (float)0.041666666666666664);
  EXPECT_EQ(c.num_parameters(), 134515008LL);  // published 135M
}

TEST(Config, Llama2_7B_NoRopeTheta) {
  LlamaConfig c = LlamaConfig::load(fixture("llama-2-7b-hf.json"));
  EXPECT_EQ(c.rope.theta, 10000.f);  // key absent: default
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.num_parameters(), 6738415616LL);  // published 6.74B
}

TEST(Config, LegacyLinearRopeType) {
  LlamaConfig c = LlamaConfig::load(fixture("vicuna-7b-v1.5-16k.json"));
  EXPECT_EQ(c.rope.type, fm::ROPE_LINEAR);  // {"type": "linear"}: legacy key
  EXPECT_EQ(c.rope.factor, 4.f);
}

TEST(Config, MistralWithoutSlidingWindowAccepted) {
  LlamaConfig c = LlamaConfig::load(fixture("mistral-7b-v0.3.json"));
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.vocab_size, 32768);
  EXPECT_EQ(c.rope.theta, 1e6f);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.num_parameters(), 7248023552LL);  // published 7.25B
}

TEST(Config, MistralSlidingWindowRejected) {
  try {
    LlamaConfig::load(fixture("mistral-7b-v0.1.json"));
    FAIL() << "Mistral-7B-v0.1 (sliding_window 4096) must be rejected";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("mistral-7b-v0.1.json"), std::string::npos) << m;
    EXPECT_NE(m.find("sliding_window"), std::string::npos) << m;
  }
}

TEST(Config, LoadFromDirectory) {
  TempDir d("dir");
  fs::copy_file(fixture("llama-3.2-1b.json"), d.path / "config.json");
  LlamaConfig c = LlamaConfig::load(d.str());
  EXPECT_EQ(c.hidden_size, 2048);
}

TEST(Config, EosListAndRopeParametersForm) {
  // transformers 5 writes rope_parameters (with rope_theta inside) instead of rope_theta/rope_scaling;
  // Llama-3.1-Instruct lists three eos ids.
  json j = read_json(fixture("llama-3.1-8b.json"));
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                          {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  j["eos_token_id"] = {128001, 128008, 128009};
  LlamaConfig c = LlamaConfig::from_json(j, "v5.json");
  LlamaConfig ref = LlamaConfig::load(fixture("llama-3.1-8b.json"));
  ref.eos_token_ids = {128001, 128008, 128009};
  expect_same(c, ref);
}

TEST(Config, YarnAndDynamic) {
  json j = read_json(fixture("llama-2-7b-hf.json"));
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096}};
  LlamaConfig c = LlamaConfig::from_json(j, "yarn.json");
  EXPECT_EQ(c.rope.type, fm::ROPE_YARN);
  EXPECT_EQ(c.rope.factor, 4.f);
  EXPECT_EQ(c.rope.beta_fast, 32.f);  // defaults
  EXPECT_EQ(c.rope.beta_slow, 1.f);
  EXPECT_TRUE(c.rope.attention_factor < 0.f);  // derived later from factor
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  c = LlamaConfig::from_json(j, "dynamic.json");
  EXPECT_EQ(c.rope.type, fm::ROPE_DYNAMIC);
  EXPECT_EQ(c.rope.factor, 2.f);
}

// ---- errors name the file and the key ----------------------------------------------------------
TEST(Config, ErrorsNameFileAndKey) {
  TempDir d("err");
  const json base = read_json(fixture("tinyllama-1.1b-chat-v1.0.json"));
  ASSERT_EQ(load_error(d, "base.json", base), "");
  struct Case {
    const char* name;
    std::function<void(json&)> edit;
    const char* key;
  };
  std::vector<Case> cases = {
      {"arch", [](json& j) { j["architectures"] = {"GPT2LMHeadModel"}; }, "architectures"},
      {"model_type", [](json& j) { j["model_type"] = "gpt2"; }, "model_type"},
      {"attn_bias", [](json& j) { j["attention_bias"] = true; }, "attention_bias"},
      {"mlp_bias", [](json& j) { j["mlp_bias"] = true; }, "mlp_bias"},
      {"act", [](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act"},
      {"rope_unknown", [](json& j) { j["rope_scaling"] = {{"type", "longrope"}, {"factor", 2.0}}; }, "rope_scaling.type"},
      {"rope_unknown2", [](json& j) { j["rope_scaling"] = {{"rope_type", "su"}, {"factor", 2.0}}; }, "rope_scaling.rope_type"},
      {"rope_nofactor", [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}}; }, "rope_scaling.factor"},
      {"llama3_nolow",
       [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}}; },
       "rope_scaling.low_freq_factor"},
      {"rope_str", [](json& j) { j["rope_scaling"] = "linear"; }, "rope_scaling"},
      {"heads_div", [](json& j) { j["hidden_size"] = 2050; }, "num_attention_heads"},
      {"kv_div", [](json& j) { j["num_key_value_heads"] = 5; }, "num_key_value_heads"},
      {"hidden0", [](json& j) { j["hidden_size"] = 0; }, "hidden_size"},
      {"layers_neg", [](json& j) { j["num_hidden_layers"] = -1; }, "num_hidden_layers"},
      {"ffn0", [](json& j) { j["intermediate_size"] = 0; }, "intermediate_size"},
      {"vocab_str", [](json& j) { j["vocab_size"] = "32000"; }, "vocab_size"},
      {"vocab_float", [](json& j) { j["vocab_size"] = 32000.5; }, "vocab_size"},
      {"eps_str", [](json& j) { j["rms_norm_eps"] = "1e-5"; }, "rms_norm_eps"},
      {"eps_neg", [](json& j) { j["rms_norm_eps"] = -1e-5; }, "rms_norm_eps"},
      {"tie_int", [](json& j) { j["tie_word_embeddings"] = 1; }, "tie_word_embeddings"},
      {"eos_str", [](json& j) { j["eos_token_id"] = "2"; }, "eos_token_id"},
      {"eos_range", [](json& j) { j["eos_token_id"] = {2, 40000}; }, "eos_token_id"},
      {"head_dim_odd", [](json& j) { j["head_dim"] = 63; }, "head_dim"},
      {"theta_neg", [](json& j) { j["rope_theta"] = -1.0; }, "rope_theta"},
      {"llama_sw", [](json& j) { j["sliding_window"] = 4096; }, "sliding_window"},
      {"mistral_absent_sw",
       [](json& j) { j["architectures"] = {"MistralForCausalLM"}; j["model_type"] = "mistral"; },
       "sliding_window"},
  };
  for (const Case& c : cases) {
    json j = base;
    c.edit(j);
    std::string file = std::string("bad_") + c.name + ".json";
    std::string m = load_error(d, file, j);
    EXPECT_NE(m, "") << c.name << ": accepted";
    EXPECT_NE(m.find(file), std::string::npos) << c.name << ": message lacks the file: " << m;
    EXPECT_NE(m.find(std::string("'") + c.key), std::string::npos) << c.name << ": message lacks key " << c.key << ": " << m;
  }
  // unreadable / invalid JSON name the file
  std::string bad = (d.path / "broken.json").string();
  std::ofstream(bad) << "{\"vocab_size\": 12,";
  try {
    LlamaConfig::load(bad);
    ADD_FAILURE() << "invalid JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(LlamaConfig::load((d.path / "missing.json").string()), Error);
}

// ---- presets, SPEC §8 counts, round trip ---------------------------------------------------------
TEST(Config, PresetsValidate) {
  for (const std::string& n : config_preset_names()) {
    LlamaConfig c = LlamaConfig::preset(n);
    EXPECT_NO_THROW(c.validate(n)) << n;
    EXPECT_EQ(c.head_dim * c.num_attention_heads, c.hidden_size) << n;
  }
  LlamaConfig s = LlamaConfig::preset("small");
  LlamaConfig smol = LlamaConfig::load(fixture("smollm2-135m.json"));
  smol.num_hidden_layers = s.num_hidden_layers;
  EXPECT_EQ(s.num_parameters(), smol.num_parameters());  // SmolLM2-135M shapes: 134,515,008
  EXPECT_EQ(s.num_parameters(), 134515008LL);
  EXPECT_THROW(LlamaConfig::preset("huge"), Error);
}

TEST(Config, NumParametersSpec8) {
  LlamaConfig c8 = LlamaConfig::preset("llama3-8b-2layers");
  c8.num_hidden_layers = 32;
  EXPECT_EQ(c8.num_parameters(), 8030261248LL);
  LlamaConfig c70 = LlamaConfig::preset("llama3-70b-2layers");
  EXPECT_EQ(c70.num_parameters(), 3812663296LL);  // 2 layers: 2·855,654,400 + 2·128256·8192 + 8192
  c70.num_hidden_layers = 80;
  EXPECT_EQ(c70.num_parameters(), 70553706496LL);
  LlamaConfig l2 = c70;  // Llama-2-70B: same widths, vocab 32000
  l2.vocab_size = 32000;
  EXPECT_EQ(l2.num_parameters(), 68976648192LL);
  EXPECT_EQ(LlamaConfig::preset("llama3.1-8b").num_parameters(), 8030261248LL);
  EXPECT_EQ(LlamaConfig::preset("llama3.1-70b").num_parameters(), 70553706496LL);
  // and num_parameters agrees with the tensor list init writes
  for (const std::string& n : config_preset_names()) {
    LlamaConfig c = LlamaConfig::preset(n);
    int64_t sum = 0;
    for (const TensorSpec& t : llama_tensor_specs(c)) sum += t.numel();
    EXPECT_EQ(sum, c.num_parameters()) << n;
  }
}

TEST(Config, ToJsonRoundTrip) {
  // The keys transformers 4.4x LlamaConfig.save_pretrained writes (minus transformers_version).
  const std::set<std::string> hf_keys = {
      "architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "head_dim",
      "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings",
      "mlp_bias", "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
      "pretraining_tp", "rms_norm_eps", "rope_scaling", "rope_theta", "tie_word_embeddings", "torch_dtype",
      "use_cache", "vocab_size"};
  std::vector<LlamaConfig> cs;
  for (const char* f : kValidFixtures) cs.push_back(LlamaConfig::load(fixture(f)));
  for (const std::string& n : config_preset_names()) cs.push_back(LlamaConfig::preset(n));
  json yarn = read_json(fixture("llama-2-7b-hf.json"));
  yarn["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                          {"beta_fast", 16.0}, {"attention_factor", 1.25}, {"truncate", false}};
  cs.push_back(LlamaConfig::from_json(yarn, "yarn"));
  for (const LlamaConfig& c : cs) {
    json j = c.to_json();
    std::set<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.insert(it.key());
    EXPECT_EQ(keys, hf_keys);
    EXPECT_EQ(j["model_type"], "llama");
    EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
    EXPECT_EQ(j["rope_scaling"].is_null(), c.rope.type == fm::ROPE_DEFAULT);
    LlamaConfig back = LlamaConfig::from_json(json::parse(j.dump()), "roundtrip");
    expect_same(back, c);
  }
  // numbers are written as the user reads them (no float->double noise)
  json j = LlamaConfig::preset("llama3-8b-2layers").to_json();
  EXPECT_EQ(j["rms_norm_eps"].dump(), "1e-05");
  EXPECT_EQ(j["initializer_range"].dump(), "0.02");
  EXPECT_EQ(j["rope_theta"].dump(), "500000.0");
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
}

// ---- init -------------------------------------------------------------------------------------
TEST(Init, NormalStreamIndependentOfThreadsAndChunks) {
  // The same samples whether generated with 1 or 2 threads, at once or in odd-sized pieces
  // (n and the 70001 piece are above normal_bf16's threshold for going parallel).
  const int64_t n = 3 * 65536 + 59;
  const uint64_t key = init_stream_key(5, "model.layers.0.mlp.up_proj.weight");
  std::vector<bf16> a(n), b(n), c(n);
  omp_set_num_threads(1);
  normal_bf16(a.data(), 0, n, 0.02f, key);
  omp_set_num_threads(2);
  normal_bf16(b.data(), 0, n, 0.02f, key);
  for (int64_t s = 0, k = 0; s < n; k++) {
    int64_t cnt = std::min<int64_t>(k % 3 == 0 ? 59 : k % 3 == 1 ? 111 : 70001, n - s);
    normal_bf16(c.data() + s, s, cnt, 0.02f, key);
    s += cnt;
  }
  EXPECT_EQ(std::memcmp(a.data(), b.data(), n * 2), 0);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), n * 2), 0);
  std::vector<bf16> d(n);  // another tensor's stream differs
  normal_bf16(d.data(), 0, n, 0.02f, init_stream_key(5, "model.layers.0.mlp.gate_proj.weight"));
  EXPECT_NE(std::memcmp(a.data(), d.data(), n * 2), 0);
}

TEST(Init, NormalFastPathMatchesRef) {
  // AVX-512 blocks + scalar edges vs the scalar definition, bit for bit, at odd offsets/lengths.
  const uint64_t key = init_stream_key(11, "model.embed_tokens.weight");
  for (int64_t start : {0, 1, 59, 111, 1000003}) {
    for (int64_t n : {1, 15, 17, 59, 111, 70001}) {
      std::vector<bf16> a(n), b(n);
      normal_bf16(a.data(), start, n, 0.02f, key);
      normal_bf16_ref(b.data(), start, n, 0.02f, key);
      ASSERT_EQ(std::memcmp(a.data(), b.data(), n * 2), 0) << "start " << start << " n " << n;
    }
  }
}

TEST(Init, NormalDistributionQuality) {
  // 2,000,003 samples of N(0,1) (std 1, bf16-rounded) against the normal law: mean, variance,
  // kurtosis and P(|z| < k) = erf(k/√2), each within 5 standard errors of its estimator
  // (+ the bf16 rounding of each value, ≤ 2^-9 relative).
  const int64_t n = 2000003;
  std::vector<bf16> v(n);
  normal_bf16(v.data(), 0, n, 1.0f, init_stream_key(3, "quality"));
  double s1 = 0, s2 = 0, s4 = 0, maxabs = 0;
  const double ks[4] = {0.5, 1.0, 2.0, 3.0};
  double cnt[4] = {0, 0, 0, 0};
  for (const bf16& b : v) {
    double z = b.to_float();
    ASSERT_TRUE(std::isfinite(z));
    s1 += z;
    s2 += z * z;
    s4 += z * z * z * z;
    maxabs = std::max(maxabs, std::fabs(z));
    for (int i = 0; i < 4; ++i) cnt[i] += std::fabs(z) < ks[i];
  }
  const double mean = s1 / n, var = s2 / n, kurt = s4 / n;
  EXPECT_TRUE(std::fabs(mean) <= 5 / std::sqrt((double)n)) << mean;
  EXPECT_TRUE(std::fabs(var - 1) <= 5 * std::sqrt(2.0 / n) + 2.0 / 512) << var;  // Var(z²) = 2; bf16: z² moves ≤ 2·2^-9 relative
  EXPECT_TRUE(std::fabs(kurt - 3) <= 5 * std::sqrt(96.0 / n) + 3 * 4.0 / 512) << kurt;  // Var(z⁴) = 96; bf16: z⁴ moves ≤ 4·2^-9
  for (int i = 0; i < 4; ++i) {
    const double p = std::erf(ks[i] / std::sqrt(2.0)), got = cnt[i] / n;
    // bf16 rounding can move a value across k by < 2^-9·k: allow the mass of that band too
    const double band = 2 * ks[i] / 512 * std::exp(-ks[i] * ks[i] / 2) / std::sqrt(2 * M_PI);
    EXPECT_TRUE(std::fabs(got - p) <= 5 * std::sqrt(p * (1 - p) / n) + band) << "k " << ks[i] << " " << got << " vs " << p;
  }
  EXPECT_TRUE(maxabs > 4.0 && maxabs <= 6.7) << maxabs;  // tails present; radius bounded by u1 ≥ 2^-32
}

namespace {
std::vector<float> read_tensor(const SafetensorsModel& m, const std::string& name) {
  const TensorView& t = m.get(name);
  std::vector<float> v((size_t)t.numel());
  to_float(t, v.data());
  return v;
}
std::vector<std::string> expected_names(const LlamaConfig& c) {
  std::vector<std::string> n = {"model.embed_tokens.weight", "model.norm.weight"};
  if (!c.tie_word_embeddings) n.push_back("lm_head.weight");
  for (int i = 0; i < c.num_hidden_layers; ++i)
    for (const char* s : {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                          "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      n.push_back("model.layers." + std::to_string(i) + "." + s + ".weight");
  std::sort(n.begin(), n.end());
  return n;
}
}  // namespace

TEST(Init, TinyModelNamesShapesStatistics) {
  TempDir d("init");
  const LlamaConfig cfg = LlamaConfig::preset("tiny");
  const std::string out = (d.path / "m").string();
  init_model(cfg, out, 1234);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  expect_same(LlamaConfig::load(out), cfg);  // config.json round trip

  SafetensorsModel m(out);
  EXPECT_EQ(m.names(), expected_names(cfg));  // SPEC §2 names
  const int64_t V = 512, D = 128, F = 352, Q = 128, KV = 64;
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {V, D}}, {"lm_head.weight", {V, D}}, {"model.norm.weight", {D}},
      {"model.layers.1.input_layernorm.weight", {D}}, {"model.layers.1.post_attention_layernorm.weight", {D}},
      {"model.layers.1.self_attn.q_proj.weight", {Q, D}}, {"model.layers.1.self_attn.k_proj.weight", {KV, D}},
      {"model.layers.1.self_attn.v_proj.weight", {KV, D}}, {"model.layers.1.self_attn.o_proj.weight", {D, Q}},
      {"model.layers.1.mlp.gate_proj.weight", {F, D}}, {"model.layers.1.mlp.up_proj.weight", {F, D}},
      {"model.layers.1.mlp.down_proj.weight", {D, F}}};
  for (auto& [name, shape] : shapes) {
    EXPECT_EQ(m.get(name).shape, shape) << name;
    EXPECT_EQ(m.get(name).dtype, DType::BF16) << name;
  }
  // Statistics of N(0, σ²), σ = the preset's initializer_range, over n samples (5-sigma bounds of the estimators):
  //   mean: |m| <= 5σ/√n;  std: |s/σ − 1| <= 5/√(2n) + 2^-9 (bf16 rounds each value by <= 2^-9
  //   relative, which moves s by at most that much);  P(|x| < σ) = 0.6827 ± 5·√(p(1−p)/n).
  const float sigma = cfg.initializer_range;
  double all_s1 = 0, all_s2 = 0;
  int64_t all_n = 0;
  for (const std::string& name : m.names()) {
    std::vector<float> v = read_tensor(m, name);
    const double n = (double)v.size();
    if (name.find("norm") != std::string::npos) {
      for (float x : v) ASSERT_EQ(x, 1.0f) << name;
      continue;
    }
    double s1 = 0, s2 = 0, within = 0;
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x)) << name;
      s1 += x;
      s2 += (double)x * x;
      within += std::fabs(x) < sigma;
    }
    double mean = s1 / n, sd = std::sqrt(s2 / n - mean * mean), p = within / n;
    EXPECT_TRUE(std::fabs(mean) <= 5 * sigma / std::sqrt(n)) << name << " mean " << mean;
    EXPECT_TRUE(std::fabs(sd / sigma - 1) <= 5 / std::sqrt(2 * n) + 1.0 / 512) << name << " std " << sd;
    EXPECT_TRUE(std::fabs(p - 0.682689) <= 5 * std::sqrt(0.682689 * 0.317311 / n)) << name << " P(|x|<σ) " << p;
    all_s1 += s1;
    all_s2 += s2;
    all_n += (int64_t)n;
  }
  // over all ~560k weights the bounds are tight: std within ~0.5% + bf16 effect
  double mean = all_s1 / all_n, sd = std::sqrt(all_s2 / all_n - mean * mean);
  EXPECT_TRUE(std::fabs(sd / sigma - 1) <= 5 / std::sqrt(2.0 * all_n) + 1.0 / 512) << sd;
  // q_proj and k_proj are different streams (not the same numbers reused)
  std::vector<float> q = read_tensor(m, "model.layers.0.self_attn.q_proj.weight");
  std::vector<float> k = read_tensor(m, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_NE(std::memcmp(q.data(), k.data(), k.size() * 4), 0);
}

namespace {
std::string file_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST(Init, ReproducibleAndRefusesNonEmptyDir) {
  TempDir d("repro");
  const LlamaConfig cfg = LlamaConfig::preset("tiny");
  const std::string a = (d.path / "a").string(), b = (d.path / "b").string(), c = (d.path / "c").string();
  InitOptions o1;
  init_model(cfg, a, 42, o1);
  InitOptions o2;
  o2.chunk_elems = 1001;  // different chunking, same bytes
  init_model(cfg, b, 42, o2);
  init_model(cfg, c, 43);
  EXPECT_EQ(file_bytes(a + "/model.safetensors"), file_bytes(b + "/model.safetensors"));
  EXPECT_NE(file_bytes(a + "/model.safetensors"), file_bytes(c + "/model.safetensors"));
  try {
    init_model(cfg, a, 1);
    ADD_FAILURE() << "overwrote a non-empty dir";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(a), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  EXPECT_EQ(file_bytes(a + "/model.safetensors"), file_bytes(b + "/model.safetensors"));  // untouched
  InitOptions f;
  f.force = true;
  init_model(cfg, a, 43, f);
  EXPECT_EQ(file_bytes(a + "/model.safetensors"), file_bytes(c + "/model.safetensors"));
  for (const auto& e : fs::directory_iterator(a))  // no temp files left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Init, ShardedMatchesSingleFile) {
  TempDir d("shard");
  const LlamaConfig cfg = LlamaConfig::preset("tiny");
  const std::string one = (d.path / "one").string(), sh = (d.path / "sh").string();
  init_model(cfg, one, 9);
  InitOptions o;
  o.max_shard_bytes = 300'000;  // ~1.3 MB of weights -> several shards
  init_model(cfg, sh, 9, o);
  EXPECT_FALSE(fs::exists(sh + "/model.safetensors"));
  json index = read_json(sh + "/model.safetensors.index.json");
  std::set<std::string> files;
  int64_t total = 0;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) files.insert(it.value());
  EXPECT_GE(files.size(), 4u);
  SafetensorsModel a(one), b(sh);
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const TensorView &x = a.get(n), &y = b.get(n);
    total += (int64_t)y.nbytes;
    ASSERT_EQ(x.nbytes, y.nbytes);
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << n;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  // re-init with --force into the sharded dir as a single file: the stale shards and index go away
  InitOptions f;
  f.force = true;
  init_model(cfg, sh, 9, f);
  EXPECT_FALSE(fs::exists(sh + "/model.safetensors.index.json"));
  for (const std::string& fn : files) EXPECT_FALSE(fs::exists(sh + "/" + fn)) << fn;
  EXPECT_EQ(file_bytes(one + "/model.safetensors"), file_bytes(sh + "/model.safetensors"));
}

TEST(Init, TokenizerSetsVocabAndSpecialIds) {
  TempDir d("tok");
  // A small tokenizer.json in the HF layout: vocab ids 0..699, added tokens up to id 703.
  json vocab = json::object();
  for (int i = 0; i < 700; ++i) vocab["t" + std::to_string(i)] = i;
  json tok = {{"version", "1.0"},
              {"added_tokens",
               {{{"id", 700}, {"content", "<|begin_of_text|>"}, {"special", true}},
                {{"id", 703}, {"content", "<|end_of_text|>"}, {"special", true}},
                {{"id", 701}, {"content", "<|eot_id|>"}, {"special", true}}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  const std::string tp = (d.path / "tok.json").string();
  std::ofstream(tp) << tok.dump();
  TokenizerInfo ti = read_tokenizer_info(tp);
  EXPECT_EQ(ti.vocab_size, 704);  // max id + 1, exact (no rounding)
  EXPECT_EQ(ti.bos_token_id, 700);
  EXPECT_EQ(ti.eos_token_ids, std::vector<int>{703});

  InitOptions o;
  o.tokenizer = tp;
  const std::string out = (d.path / "m").string();
  LlamaConfig got = init_model(LlamaConfig::preset("tiny"), out, 3, o);
  EXPECT_EQ(got.vocab_size, 704);
  LlamaConfig disk = LlamaConfig::load(out);
  EXPECT_EQ(disk.vocab_size, 704);
  EXPECT_EQ(disk.bos_token_id, 700);
  EXPECT_EQ(disk.eos_token_ids, std::vector<int>{703});
  EXPECT_EQ(file_bytes(out + "/tokenizer.json"), file_bytes(tp));
  json tc = read_json(out + "/tokenizer_config.json");  // none beside tok.json: a minimal one
  EXPECT_EQ(tc["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(tc["eos_token"], "<|end_of_text|>");
  SafetensorsModel m(out);
  EXPECT_EQ(m.get("model.embed_tokens.weight").shape, (std::vector<int64_t>{704, 128}));
  EXPECT_EQ(m.get("lm_head.weight").shape, (std::vector<int64_t>{704, 128}));

  // sentencepiece-style names
  tok["added_tokens"] = {{{"id", 1}, {"content", "<s>"}}, {{"id", 2}, {"content", "</s>"}}};
  std::ofstream(tp) << tok.dump();
  ti = read_tokenizer_info(tp);
  EXPECT_EQ(ti.vocab_size, 700);
  EXPECT_EQ(ti.bos_token_id, 1);
  EXPECT_EQ(ti.eos_token_ids, std::vector<int>{2});
}

TEST(Init, RealTokenizers) {
  // The shared tokenizer files (not part of the repo; skipped where absent).
  const std::string l3 = "/work/shared/data/tokenizers/llama3/tokenizer.json";
  const std::string g2 = "/work/shared/data/tokenizers/gpt2/tokenizer.json";
  if (!fs::exists(l3) || !fs::exists(g2)) GTEST_SKIP() << "shared tokenizers not present";
  TokenizerInfo a = read_tokenizer_info(l3);  // SPEC §7: 128000 + 256 specials
  EXPECT_EQ(a.vocab_size, 128256);
  EXPECT_EQ(a.bos_token_id, 128000);
  EXPECT_EQ(a.eos_token_ids, std::vector<int>{128001});
  TokenizerInfo b = read_tokenizer_info(g2);  // GPT-2: bos = eos = <|endoftext|> 50256
  EXPECT_EQ(b.vocab_size, 50257);
  EXPECT_EQ(b.bos_token_id, 50256);
  EXPECT_EQ(b.eos_token_ids, std::vector<int>{50256});
}
