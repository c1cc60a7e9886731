// test_export.cpp: PEFT adapter directories (write -> load round trip, peft-style variants, bad
// dirs), the streaming merged export (sharded safetensors + index, merged weights, logits) and the
// HDF5 evaluation of `frugal eval`.
//
// What each check is against:
//  - adapter round trip: the model the adapter came from (A, B and logits bit-identical: the same
//    fp32 values go through the same code);
//  - merged weights: W + s·B·A computed here in double from the base file and the adapter; the
//    export rounds to nearest bf16, |W' − ref| ≤ half an ulp ≤ 2^-8·|ref|, plus its fp32 summation
//    error (r = 5 terms, ~1e-6 relative): bound 2^-8·|ref|·(1 + 1e-4) per element;
//  - merged logits: the base model + LoRA adapters (fp32 LoRA path, lora.h). The only difference
//    is the bf16 rounding of the merged weights (unit roundoff u = 2^-9, RMS u/√3 per element):
//    per linear output ~u/√3 ≈ 1.1e-3 relative, 14 merged linears in 2 layers ≈ √14·1.1e-3 ≈ 4e-3
//    before softmax/SiLU amplification; bound 2e-2 relative L2 (and the LoRA effect itself, base
//    vs base+LoRA, must be far above it, so the check cannot pass by LoRA doing nothing);
//  - HDF5 eval: the per-position losses of forward() on each sample alone, summed over the
//    loss-mask targets here.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/model/checkpoint.h"
#include "src/io/dataset.h"
#include "src/train/export.h"
#include "src/model/init.h"
#include "src/model/lora.h"
#include "src/model/model.h"
#include "src/train/evaluate.h"
#include "src/model/optim.h"
#include "src/model/peft.h"
#include "src/io/safetensors.h"

using namespace frugal;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("frugal_test_export_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

// A small GQA model with odd sizes (V 97, C 48, F 59), weights std 0.1 so LoRA and rounding matter.
LlamaConfig test_config() {
  LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 48;
  c.intermediate_size = 59;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 12;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5f;
  c.rope.theta = 10000.f;
  c.rope.head_dim = c.head_dim;
  c.rope.max_position_embeddings = c.max_position_embeddings;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.initializer_range = 0.1f;
  return c;
}

std::string make_base(const TempDir& d, const std::string& name = "base") {
  const std::string dir = d / name;
  init_model(test_config(), dir, 7);
  return dir;
}

LoraConfig test_lora() {
  LoraConfig lc;
  lc.rank = 5;
  lc.alpha = 7.f;
  return lc;  // all 7 targets
}

// B = 0 after PEFT init: give every adapter random B (and perturb A) so LoRA is non-trivial.
void randomize_lora(LlamaModel& m, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (ParamRef& p : m.trainable_params())
    for (size_t i = 0; i < p.numel; ++i) p.w[i] = p.name.find("lora_B") != std::string::npos ? u(g) : p.w[i] + 0.1f * u(g);
  m.sync_lora();
}

struct Tokens {
  int B = 2, T = 11;
  std::vector<int32_t> ids;
  Tokens() {
    std::mt19937 g(3);
    for (int i = 0; i < B * T; ++i) ids.push_back((int32_t)(g() % 97));
  }
  Batch batch() const {
    Batch b;
    b.B = B;
    b.T = T;
    b.ids = ids.data();
    return b;
  }
};

std::vector<float> logits_of(LlamaModel& m, const Tokens& t) {
  std::vector<float> out((size_t)t.B * t.T * m.config().vocab_size);
  m.logits(t.batch(), out.data());
  return out;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
    den += (double)ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

AdapterData adapter_of(LlamaModel& m, const std::string& base) {
  AdapterData a;
  const LoraConfig* lc = m.lora_config();
  a.cfg.base_model = base;
  a.cfg.r = lc->rank;
  a.cfg.alpha = lc->alpha;
  a.cfg.dropout = lc->dropout;
  a.cfg.rslora = lc->rslora;
  a.cfg.target_modules = lc->target_modules;
  for (const ParamRef& p : m.trainable_params()) {
    a.names.push_back(p.name);
    a.shapes.push_back(p.shape);
    a.data.emplace_back(p.w, p.w + p.numel);
  }
  return a;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void write_json(const std::string& path, const json& j) {
  std::ofstream(path) << j.dump(2);
}

}  // namespace

// ---- adapter round trip ---------------------------------------------------------------------------

TEST(PeftAdapter, RoundTripGivesIdenticalWeightsAndLogits) {
  TempDir d("rt");
  const std::string base = make_base(d);
  LlamaModel m = LlamaModel::load(base);
  m.add_lora(test_lora(), 11);
  randomize_lora(m, 5);
  const AdapterData ad = adapter_of(m, base);
  write_peft_adapter(d / "adapter", ad.cfg, ad.views());

  // The config holds exactly the SPEC §3 keys.
  json cfg = json::parse(std::ifstream(d / "adapter/adapter_config.json"));
  const std::set<std::string> keys = {"peft_type", "task_type", "base_model_name_or_path", "r", "lora_alpha",
                                      "lora_dropout", "target_modules", "bias", "use_rslora", "fan_in_fan_out",
                                      "init_lora_weights", "use_dora", "modules_to_save", "layers_to_transform",
                                      "rank_pattern", "alpha_pattern"};
  std::set<std::string> got;
  for (auto& [k, v] : cfg.items()) got.insert(k);
  EXPECT_EQ(got, keys);
  EXPECT_EQ(cfg["r"], 5);
  EXPECT_EQ(cfg["lora_alpha"], 7);
  EXPECT_EQ(cfg["target_modules"].size(), 7u);

  // Tensor names and shapes as PEFT saves them.
  SafetensorsFile st(d / "adapter/adapter_model.safetensors");
  EXPECT_EQ(st.tensors().size(), 2u * 7 * 2);
  const TensorView* qa = st.find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
  const TensorView* db = st.find("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
  ASSERT_TRUE(qa && db);
  EXPECT_EQ(qa->shape, (std::vector<int64_t>{5, 48}));
  EXPECT_EQ(db->shape, (std::vector<int64_t>{48, 5}));
  EXPECT_EQ(qa->dtype, DType::F32);

  LlamaModel m2 = LlamaModel::load(base);
  load_peft_adapter(m2, d / "adapter");
  ASSERT_NE(m2.lora_config(), nullptr);
  EXPECT_EQ(m2.lora_config()->rank, 5);
  EXPECT_FLOAT_EQ(m2.lora_config()->scale(), 7.f / 5.f);
  auto p1 = m.trainable_params(), p2 = m2.trainable_params();
  ASSERT_EQ(p1.size(), p2.size());
  for (size_t i = 0; i < p1.size(); ++i) {
    EXPECT_EQ(p1[i].name, p2[i].name);
    ASSERT_EQ(p1[i].numel, p2[i].numel);
    EXPECT_EQ(std::memcmp(p1[i].w, p2[i].w, p1[i].numel * sizeof(float)), 0) << p1[i].name;
  }
  Tokens t;
  const auto l1 = logits_of(m, t), l2 = logits_of(m2, t);
  EXPECT_EQ(std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)), 0);

  // BF16 storage: the loaded values are the bf16 roundings of the originals.
  write_peft_adapter(d / "adapter_bf16", ad.cfg, ad.views(), DType::BF16);
  LlamaModel m3 = LlamaModel::load(base);
  load_peft_adapter(m3, d / "adapter_bf16");
  auto p3 = m3.trainable_params();
  for (size_t i = 0; i < p1.size(); ++i)
    for (size_t k = 0; k < p1[i].numel; ++k)
      ASSERT_EQ(p3[i].w[k], bf16::from_float(p1[i].w[k]).to_float()) << p1[i].name << " " << k;
}

// A directory the way peft writes one: target_modules as a regex string, tensors for some layers
// only (".default" names accepted), extra config keys. Against: the same adapters on a model whose
// untargeted sites have B = 0.
TEST(PeftAdapter, LoadsPeftStyleRegexTargetsAndDefaultNames) {
  TempDir d("peftstyle");
  const std::string base = make_base(d);
  LoraConfig lc = test_lora();
  lc.target_modules = {"q_proj", "v_proj"};
  LlamaModel ref = LlamaModel::load(base);
  ref.add_lora(lc, 3);
  randomize_lora(ref, 9);
  std::fill(ref.blocks[0].q.lora->B.begin(), ref.blocks[0].q.lora->B.end(), 0.f);  // layer 0 untargeted
  std::fill(ref.blocks[0].v.lora->B.begin(), ref.blocks[0].v.lora->B.end(), 0.f);
  ref.sync_lora();

  SafetensorsWriter w;
  std::vector<std::string> names;
  for (LinearSite* s : {&ref.blocks[1].q, &ref.blocks[1].v}) {
    std::string a = peft_lora_name(s->name, 'A'), b = peft_lora_name(s->name, 'B');
    a.replace(a.size() - 7, 7, ".default.weight");  // lora_A.default.weight
    w.add(a, DType::F32, {s->lora->r, s->lora->in}, s->lora->A.data(), s->lora->A.size() * 4);
    w.add(b, DType::F32, {s->lora->out, s->lora->r}, s->lora->B.data(), s->lora->B.size() * 4);
  }
  fs::create_directories(d / "peft");
  w.write(d / "peft/adapter_model.safetensors");
  json cfg = {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", 5}, {"lora_alpha", 7},
              {"lora_dropout", 0.05}, {"target_modules", "model\\.layers\\.1\\.self_attn\\.(q|v)_proj"},
              {"bias", "none"}, {"use_dora", false}, {"rank_pattern", json::object()},
              {"alpha_pattern", json::object()}, {"lora_bias", false}, {"exclude_modules", nullptr},
              {"revision", nullptr}, {"megatron_config", nullptr}};
  write_json(d / "peft/adapter_config.json", cfg);

  LlamaModel m = LlamaModel::load(base);
  load_peft_adapter(m, d / "peft");
  Tokens t;
  const auto l1 = logits_of(ref, t), l2 = logits_of(m, t);
  EXPECT_EQ(std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)), 0);
  EXPECT_EQ(m.blocks[0].k.lora, nullptr);

  // The list form targets every layer: layer 0's tensors are then missing.
  cfg["target_modules"] = {"q_proj", "v_proj"};
  write_json(d / "peft/adapter_config.json", cfg);
  LlamaModel m2 = LlamaModel::load(base);
  const std::string e = error_of([&] { load_peft_adapter(m2, d / "peft"); });
  EXPECT_NE(e.find("model.layers.0.self_attn.q_proj.lora_A"), std::string::npos) << e;
  // ... unless layers_to_transform says so.
  cfg["layers_to_transform"] = {1};
  write_json(d / "peft/adapter_config.json", cfg);
  LlamaModel m3 = LlamaModel::load(base);
  load_peft_adapter(m3, d / "peft");
  const auto l3 = logits_of(m3, t);
  EXPECT_EQ(std::memcmp(l1.data(), l3.data(), l1.size() * sizeof(float)), 0);
}

TEST(PeftAdapter, BadDirectoriesGiveClearErrors) {
  TempDir d("bad");
  const std::string base = make_base(d);
  LlamaModel m0 = LlamaModel::load(base);
  m0.add_lora(test_lora(), 1);
  randomize_lora(m0, 2);
  const AdapterData ad = adapter_of(m0, base);
  write_peft_adapter(d / "good", ad.cfg, ad.views());
  const json good = json::parse(std::ifstream(d / "good/adapter_config.json"));

  auto load_err = [&](const std::string& dir) {
    LlamaModel m = LlamaModel::load(base);
    return error_of([&] { load_peft_adapter(m, dir); });
  };
  auto with_config = [&](const std::string& tag, const json& cfg) {
    fs::create_directories(d / tag);
    fs::copy_file(d / "good/adapter_model.safetensors", d / (tag + "/adapter_model.safetensors"),
                  fs::copy_options::overwrite_existing);
    write_json(d / (tag + "/adapter_config.json"), cfg);
    return load_err(d / tag);
  };
  EXPECT_EQ(load_err(d / "good"), "");

  // Missing config.
  fs::create_directories(d / "noconfig");
  fs::copy_file(d / "good/adapter_model.safetensors", d / "noconfig/adapter_model.safetensors");
  std::string e = load_err(d / "noconfig");
  EXPECT_NE(e.find("adapter_config.json"), std::string::npos) << e;
  // Missing weights.
  fs::create_directories(d / "noweights");
  fs::copy_file(d / "good/adapter_config.json", d / "noweights/adapter_config.json");
  e = load_err(d / "noweights");
  EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;

  json c = good;
  c["peft_type"] = "IA3";
  e = with_config("ia3", c);
  EXPECT_NE(e.find("peft_type 'IA3' is not supported"), std::string::npos) << e;
  c = good;
  c["use_dora"] = true;
  e = with_config("dora", c);
  EXPECT_NE(e.find("use_dora"), std::string::npos) << e;
  c = good;
  c["rank_pattern"] = {{"q_proj", 8}};
  e = with_config("rankpat", c);
  EXPECT_NE(e.find("rank_pattern"), std::string::npos) << e;
  EXPECT_NE(e.find("not supported"), std::string::npos) << e;
  c = good;
  c["r"] = 4;  // the tensors have rank 5
  e = with_config("rank", c);
  EXPECT_NE(e.find("has shape [5, 48], expected [4, 48]"), std::string::npos) << e;
  EXPECT_NE(e.find("lora_A.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;

  // Wrong shape / missing / unexpected tensors.
  auto with_tensors = [&](const std::string& tag, const std::function<void(SafetensorsWriter&)>& add) {
    fs::create_directories(d / tag);
    fs::copy_file(d / "good/adapter_config.json", d / (tag + "/adapter_config.json"));
    SafetensorsWriter w;
    add(w);
    w.write(d / (tag + "/adapter_model.safetensors"));
    return load_err(d / tag);
  };
  std::vector<float> buf(5 * 100, 0.5f);
  e = with_tensors("shape", [&](SafetensorsWriter& w) {
    for (size_t i = 0; i < ad.names.size(); ++i) {
      const bool bad = ad.names[i] == "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight";
      if (bad) w.add(ad.names[i], DType::F32, {58, 5}, buf.data(), 58 * 5 * 4);
      else w.add(ad.names[i], DType::F32, ad.shapes[i], ad.data[i].data(), ad.data[i].size() * 4);
    }
  });
  EXPECT_NE(e.find("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[58, 5]"), std::string::npos) << e;
  EXPECT_NE(e.find("[59, 5]"), std::string::npos) << e;
  e = with_tensors("missingB", [&](SafetensorsWriter& w) {
    for (size_t i = 0; i < ad.names.size(); ++i)
      if (ad.names[i] != "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")
        w.add(ad.names[i], DType::F32, ad.shapes[i], ad.data[i].data(), ad.data[i].size() * 4);
  });
  EXPECT_NE(e.find("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"), std::string::npos) << e;
  e = with_tensors("extra", [&](SafetensorsWriter& w) {
    for (size_t i = 0; i < ad.names.size(); ++i)
      w.add(ad.names[i], DType::F32, ad.shapes[i], ad.data[i].data(), ad.data[i].size() * 4);
    w.add("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", DType::F32, {5, 48}, buf.data(), 5 * 48 * 4);
  });
  EXPECT_NE(e.find("layers.7.self_attn.q_proj.lora_A.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("matches no decoder linear"), std::string::npos) << e;
  e = with_tensors("notlora", [&](SafetensorsWriter& w) {
    for (size_t i = 0; i < ad.names.size(); ++i)
      w.add(ad.names[i], DType::F32, ad.shapes[i], ad.data[i].data(), ad.data[i].size() * 4);
    w.add("base_model.model.lm_head.weight", DType::F32, {5, 48}, buf.data(), 5 * 48 * 4);
  });
  EXPECT_NE(e.find("base_model.model.lm_head.weight"), std::string::npos) << e;
}

// ---- merged export -----------------------------------------------------------------------------------

TEST(MergedExport, ShardedOutputEqualsBasePlusLora) {
  TempDir d("merged");
  const std::string base = make_base(d);
  // Tokenizer-side files beside the base: copied when present.
  std::ofstream(d / "base/tokenizer_config.json") << "{\"model_max_length\": 64}\n";
  std::ofstream(d / "base/generation_config.json") << "{\"bos_token_id\": 1}\n";

  LlamaModel m = LlamaModel::load(base);
  LoraConfig lc = test_lora();
  lc.rslora = true;  // s = 7/√5
  m.add_lora(lc, 4);
  randomize_lora(m, 6);
  const AdapterData ad = adapter_of(m, base);

  ExportOptions opt;
  opt.chunk_elems = 100;        // several chunks per tensor (1-2 rows)
  opt.max_shard_bytes = 20000;  // bf16 total ≈ 2·(2·97·48 + 2·(2·48·48 + 2·48·24 + 3·48·59)) B: several shards
  merge_adapter_into_base(base, ad, d / "merged", opt);

  // Valid sharded safetensors: the index names every tensor of the base exactly once, each in
  // the shard that holds it, and total_size is the sum of the data bytes.
  SafetensorsModel bst(base);
  const json index = json::parse(std::ifstream(d / "merged/model.safetensors.index.json"));
  const json& wm = index["weight_map"];
  EXPECT_EQ(wm.size(), bst.names().size());
  std::set<std::string> shard_files;
  size_t total = 0;
  for (const std::string& n : bst.names()) {
    ASSERT_TRUE(wm.contains(n)) << n;
    shard_files.insert(wm[n].get<std::string>());
  }
  EXPECT_GE(shard_files.size(), 3u);
  size_t tensors_in_shards = 0;
  for (const std::string& f : shard_files) {
    SafetensorsFile sf(d / ("merged/" + f));  // validates like the reference reader
    EXPECT_NE(f.find("-of-" + std::string(5 - std::to_string(shard_files.size()).size(), '0') +
                     std::to_string(shard_files.size())),
              std::string::npos)
        << f;
    for (const TensorView& t : sf.tensors()) {
      EXPECT_EQ(wm[t.name], f);
      EXPECT_EQ(t.dtype, DType::BF16);
      total += t.nbytes;
      tensors_in_shards++;
    }
  }
  EXPECT_EQ(tensors_in_shards, bst.names().size());
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), total);
  EXPECT_FALSE(fs::exists(d / "merged/model.safetensors"));
  EXPECT_TRUE(fs::exists(d / "merged/config.json"));
  EXPECT_TRUE(fs::exists(d / "merged/tokenizer_config.json"));
  EXPECT_TRUE(fs::exists(d / "merged/generation_config.json"));
  for (const auto& de : fs::directory_iterator(d / "merged"))
    EXPECT_EQ(de.path().string().find(".tmp"), std::string::npos) << de.path();

  // Merged weights: bf16(W + s·B·A) (double here), within one bf16 ulp; others copied bit-exactly.
  SafetensorsModel mst(d / "merged");
  const double s = 7.0 / std::sqrt(5.0);
  int merged = 0;
  for (const std::string& n : bst.names()) {
    const TensorView& bt = bst.get(n);
    const TensorView& mt = mst.get(n);
    ASSERT_EQ(bt.shape, mt.shape) << n;
    std::vector<float> w((size_t)bt.numel()), wm2((size_t)mt.numel());
    to_float(bt, w.data());
    to_float(mt, wm2.data());
    const LoraAdapter* a = nullptr;
    for (LlamaBlock& b : m.blocks)
      for (LinearSite* site : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down})
        if (site->name == n) a = site->lora.get();
    if (!a) {
      EXPECT_EQ(std::memcmp(w.data(), wm2.data(), w.size() * 4), 0) << n;
      continue;
    }
    merged++;
    double max_excess = 0, max_delta = 0;
    for (int64_t o = 0; o < a->out; ++o)
      for (int64_t i = 0; i < a->in; ++i) {
        double dw = 0;
        for (int k = 0; k < a->r; ++k) dw += (double)a->B[o * a->r + k] * a->A[k * a->in + i];
        const double ref = (double)w[o * a->in + i] + s * dw;
        const double err = std::fabs((double)wm2[o * a->in + i] - ref);
        max_excess = std::max(max_excess, err - std::ldexp(std::fabs(ref), -8) * (1 + 1e-4));
        max_delta = std::max(max_delta, std::fabs(s * dw));
      }
    EXPECT_TRUE(max_excess <= 0) << n << " exceeds bf16 rounding by " << max_excess;
    EXPECT_GT(max_delta, 0.01) << n << ": LoRA delta too small to test anything";
  }
  EXPECT_EQ(merged, 14);

  // Logits of the merged model vs base + LoRA.
  Tokens t;
  LlamaModel mm = LlamaModel::load(d / "merged");
  LlamaModel plain = LlamaModel::load(base);
  const auto lora_logits = logits_of(m, t), merged_logits = logits_of(mm, t), base_logits = logits_of(plain, t);
  const double err = rel_l2(merged_logits, lora_logits), effect = rel_l2(base_logits, lora_logits);
  std::printf("merged vs base+LoRA logits: rel L2 %.3g (LoRA effect %.3g)\n", err, effect);
  EXPECT_TRUE(err <= 2e-2) << err;
  EXPECT_TRUE(effect >= 0.1) << effect;

  // One shard when everything fits: model.safetensors and no index (stale files removed).
  merge_adapter_into_base(base, ad, d / "merged", ExportOptions{});
  EXPECT_TRUE(fs::exists(d / "merged/model.safetensors"));
  EXPECT_FALSE(fs::exists(d / "merged/model.safetensors.index.json"));
  int weight_files = 0;
  for (const auto& de : fs::directory_iterator(d / "merged"))
    weight_files += de.path().extension() == ".safetensors";
  EXPECT_EQ(weight_files, 1);
  LlamaModel mm1 = LlamaModel::load(d / "merged");
  const auto l1 = logits_of(mm1, t);
  EXPECT_EQ(std::memcmp(l1.data(), merged_logits.data(), l1.size() * 4), 0);
}

TEST(MergedExport, Errors) {
  TempDir d("mergeerr");
  const std::string base = make_base(d);
  LlamaModel m = LlamaModel::load(base);
  m.add_lora(test_lora(), 4);
  AdapterData ad = adapter_of(m, base);
  std::string e = error_of([&] { merge_adapter_into_base(base, ad, base); });
  EXPECT_NE(e.find("base model directory"), std::string::npos) << e;
  e = error_of([&] { merge_adapter_into_base(d / "nothere", ad, d / "out"); });
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  ad.shapes[0] = {5, 47};
  e = error_of([&] { merge_adapter_into_base(base, ad, d / "out"); });
  EXPECT_NE(e.find(ad.names[0]), std::string::npos) << e;
  EXPECT_NE(e.find("[5, 47]"), std::string::npos) << e;
}

// ---- HDF5 eval ------------------------------------------------------------------------------------

TEST(EvalSamples, LossMaskTargetsOfEachSampleAlone) {
  TempDir d("evalh5");
  const std::string base = make_base(d);
  LlamaModel m = LlamaModel::load(base);
  m.add_lora(test_lora(), 2);
  randomize_lora(m, 8);

  // 5 samples of lengths 9, 1, 14, 6, 23 (seq_len 17 truncates the last), random masks.
  TokenDataset ds;
  std::mt19937 g(12);
  ds.offsets = {0};
  for (int len : {9, 1, 14, 6, 23}) {
    for (int i = 0; i < len; ++i) {
      ds.tokens.push_back((int32_t)(g() % 97));
      ds.loss_mask.push_back((uint8_t)(g() % 3 != 0));
    }
    ds.offsets.push_back((int64_t)ds.tokens.size());
  }
  ds.vocab_size = 97;
  ds.pad_id = 0;
  const int seq_len = 17;

  // Reference: each sample alone, per-position CE from forward(), summed over mask targets.
  double ref_sum = 0;
  int64_t ref_n = 0;
  for (int64_t s = 0; s < ds.num_samples(); ++s) {
    const int64_t off = ds.offsets[s];
    const int T = (int)std::min<int64_t>(ds.offsets[s + 1] - off, seq_len);
    if (T < 2) continue;
    std::vector<int32_t> ids(ds.tokens.begin() + off, ds.tokens.begin() + off + T);
    std::vector<int32_t> tg = next_token_targets(ids.data(), 1, T);
    std::vector<float> losses(T);
    Batch b;
    b.B = 1;
    b.T = T;
    b.ids = ids.data();
    b.targets = tg.data();
    m.forward(b, losses.data());
    for (int t = 0; t + 1 < T; ++t)
      if (ds.loss_mask[off + t + 1]) {
        ref_sum += losses[t];
        ref_n++;
      }
  }
  for (int batch : {1, 3}) {
    EvalResult r = evaluate_samples(m, ds, seq_len, batch);
    EXPECT_EQ(r.stats.n_targets, ref_n) << batch;
    const double rel = std::fabs(r.stats.loss_sum - ref_sum) / ref_sum;
    EXPECT_TRUE(rel <= 1e-5) << "batch " << batch << ": " << r.stats.loss_sum << " vs " << ref_sum;
    EXPECT_EQ(r.tokens, 9 + 14 + 6 + 17);
  }
  ds.tokens[3] = 97;
  const std::string e = error_of([&] { evaluate_samples(m, ds, seq_len, 2, "x.h5"); });
  EXPECT_NE(e.find("x.h5: sample 0 token 3 id 97"), std::string::npos) << e;
}

// ---- from a training checkpoint ---------------------------------------------------------------------

TEST(CheckpointExport, AdapterAndMergedFromCheckpoint) {
  TempDir d("ckpt");
  const std::string base = make_base(d);
  LlamaModel m = LlamaModel::load(base);
  LoraConfig lc = test_lora();
  lc.target_modules = {"q_proj", "o_proj", "down_proj"};
  lc.dropout = 0.1f;
  m.add_lora(lc, 21);
  randomize_lora(m, 22);
  AdamW opt(AdamWConfig{});
  TrainState st;
  st.step = 3;
  st.base_model = base;
  st.has_lora = true;
  st.lora = *m.lora_config();
  const std::string ck = d / "ckpt.h5";
  save_checkpoint(ck, st, m.trainable_params(), opt);

  export_adapter(ck, d / "adapter");
  const json cfg = json::parse(std::ifstream(d / "adapter/adapter_config.json"));
  EXPECT_EQ(cfg["base_model_name_or_path"], base);
  EXPECT_EQ(cfg["target_modules"], json({"down_proj", "o_proj", "q_proj"}));
  EXPECT_FLOAT_EQ(cfg["lora_dropout"].get<float>(), 0.1f);
  LlamaModel m2 = LlamaModel::load(base);
  load_peft_adapter(m2, d / "adapter");
  Tokens t;
  const auto l1 = logits_of(m, t), l2 = logits_of(m2, t);
  EXPECT_EQ(std::memcmp(l1.data(), l2.data(), l1.size() * 4), 0);
  EXPECT_EQ(m2.blocks[1].k.lora, nullptr);

  // Merged, base dir taken from the checkpoint; equals merging the same tensors directly.
  export_merged(ck, d / "merged");
  merge_adapter_into_base(base, adapter_of(m, base), d / "direct");
  SafetensorsModel a(d / "merged"), b(d / "direct");
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    ASSERT_EQ(a.get(n).nbytes, b.get(n).nbytes);
    EXPECT_EQ(std::memcmp(a.get(n).data, b.get(n).data, a.get(n).nbytes), 0) << n;
  }
  const std::string e = error_of([&] { export_merged(ck, d / "m2", d / "nothere"); });
  EXPECT_NE(e.find("nothere"), std::string::npos) << e;
}
