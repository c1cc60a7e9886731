// test_trainables.cpp: dense trainable tensors beyond LoRA (train.trainable, train.mode = "full")
// on one process, on the `tiny` preset (random init in a temp dir), synthetic "patterns" data:
//   (a) LoRA + trainable embed_tokens, norms and the untied lm_head: the optimizer sees them in
//       unit order with HF names, they move, the bf16 compute copies are round(master), and a
//       resumed run repeats the uninterrupted one bit for bit (masters + Adam state in the file);
//   (b) selection errors name the entry (unknown module, lm_head of a tied model, full + NF4);
//   (c) full fine-tuning: the gradient of a few decoder-linear weights against central finite
//       differences of the loss in the bf16 model;
//   (d) export: PEFT adapter with modules_to_save, merged model with the trained values.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fstream>
#include <nlohmann/json.hpp>

#include "src/io/safetensors.h"
#include "src/model/init.h"
#include "src/model/optim.h"
#include "src/model/tensors.h"
#include "src/train/export.h"
#include "src/train/recipe.h"
#include "src/train/trainer.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

fs::path g_dir;

class Trainables : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_dir = fs::temp_directory_path() / ("frugal-test-trainables-" + std::to_string(::getpid()));
    fs::remove_all(g_dir);
    LlamaConfig c = LlamaConfig::preset("tiny");
    c.initializer_range = 0.1f;
    init_model(c, (g_dir / "model").string(), 7);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  }
  static Recipe base(const std::string& run) {
    Recipe r;
    r.path = "test";
    r.model_path = (g_dir / "model").string();
    r.quant_type = "nf4";
    r.lora.rank = 4;
    r.lora.alpha = 8.f;
    r.lora.dropout = 0.1f;
    r.lora.target_modules = {"q_proj", "v_proj"};
    r.train_trainable = {"embed_tokens", "norm", "input_layernorm", "lm_head"};
    r.data_synthetic = "patterns";
    r.seq_len = 24;
    r.micro_batch = 2;
    r.grad_accum = 2;
    r.steps = 4;
    r.lr = 1e-3f;
    r.warmup_steps = 1;
    r.seed = 99;
    r.output_dir = (g_dir / run).string();
    return r;
  }
};

std::vector<std::vector<float>> weights(Trainer& t) {
  std::vector<std::vector<float>> w;
  for (auto& p : t.params()) w.emplace_back(p.w, p.w + p.numel);
  return w;
}

}  // namespace

// (a)
TEST_F(Trainables, DenseTensorsTrainAndResumeExactly) {
  Recipe r = base("run");
  const std::string ck = r.output_dir + "/step2.h5";
  std::vector<double> full;
  std::vector<std::vector<float>> w_full, w0;
  std::vector<std::string> names;
  {
    Trainer t(r);
    t.verbose = false;
    w0 = weights(t);
    for (auto& p : t.params()) names.push_back(p.name);
    for (int s = 0; s < 4; s++) {
      full.push_back(t.train_step().loss);
      if (t.step() == 2) t.save(ck);
    }
    w_full = weights(t);
    // the bf16 compute copies follow the masters
    LlamaModel& m = t.model();
    size_t bad = 0;
    for (size_t i = 0; i < m.embed_master.size(); i++)
      bad += m.embed[i].bits != bf16::from_float(m.embed_master[i]).bits;
    for (size_t i = 0; i < m.lm_head_master.size(); i++)
      bad += m.lm_head_w[i].bits != bf16::from_float(m.lm_head_master[i]).bits;
    EXPECT_EQ(bad, 0u);
    EXPECT_FALSE(m.embed_master.empty());
    EXPECT_FALSE(m.lm_head_master.empty());
  }
  // unit order, HF names for the dense tensors
  const int L = LlamaConfig::preset("tiny").num_hidden_layers;
  ASSERT_EQ(names.size(), 1 + (size_t)L * (4 + 1) + 2);
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names[1], "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(names[5], "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(names[names.size() - 2], "model.norm.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  // every dense tensor moved
  for (size_t i = 0; i < names.size(); i++) {
    if (names[i].find("lora_") != std::string::npos) continue;
    double d = 0;
    for (size_t k = 0; k < w0[i].size(); k++) d += std::fabs(w_full[i][k] - w0[i][k]);
    EXPECT_GT(d, 0.0) << names[i] << " did not move";
  }
  // resume: bit for bit
  Recipe r2 = r;
  r2.output_dir = (g_dir / "run2").string();
  Trainer t2(r2);
  t2.verbose = false;
  t2.resume(ck);
  for (int s = 2; s < 4; s++) EXPECT_EQ(t2.train_step().loss, full[s]) << "step " << s;
  const auto w2 = weights(t2);
  ASSERT_EQ(w2.size(), w_full.size());
  for (size_t i = 0; i < w2.size(); i++)
    EXPECT_EQ(0, std::memcmp(w2[i].data(), w_full[i].data(), w2[i].size() * 4)) << t2.params()[i].name;
}

// (b)
TEST_F(Trainables, SelectionErrorsNameTheEntry) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  auto err = [&](const LlamaConfig& cfg, const std::string& mode, std::vector<std::string> mods) {
    try {
      select_trainable(cfg, mode, mods);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err(c, "lora", {"embeddings"}).find("\"embeddings\""), std::string::npos);
  EXPECT_NE(err(c, "qlora", {}).find("train.mode"), std::string::npos);
  LlamaConfig tied = c;
  tied.tie_word_embeddings = true;
  EXPECT_NE(err(tied, "lora", {"lm_head"}).find("lm_head"), std::string::npos);
  // module names match at a dot boundary: "norm" is the final norm only
  auto n = select_trainable(c, "lora", {"norm"});
  ASSERT_EQ(n.size(), 1u);
  EXPECT_EQ(n[0].name, "model.norm.weight");
  EXPECT_EQ(select_trainable(c, "full", {}).size(), 7u * c.num_hidden_layers);
  // full fine-tuning of an NF4 base: the recipe says why
  Recipe r = base("nf4full");
  r.train_mode = "full";
  try {
    r.validate("test");
    ADD_FAILURE() << "no error for train.mode = full with quant nf4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quant.type"), std::string::npos) << e.what();
  }
}

// (d) export of a checkpoint with dense trainables. Adapter: PEFT's saved modules_to_save form,
// base_model.model.<module>.weight fp32 = the trained master, the modules listed in
// adapter_config.json. Merged: those tensors replaced by bf16(master) (LoRA merged as before).
TEST_F(Trainables, ExportModulesToSaveAndMerged) {
  Recipe r = base("export");
  Trainer t(r);
  t.verbose = false;
  t.train_step();
  t.train_step();
  const std::string ck = r.output_dir + "/ck.h5";
  t.save(ck);
  const fs::path out = g_dir / "export";
  export_adapter(ck, (out / "adapter").string());
  const nlohmann::json cfg = nlohmann::json::parse(std::ifstream(out / "adapter/adapter_config.json"));
  std::vector<std::string> mods = cfg["modules_to_save"].get<std::vector<std::string>>();
  std::sort(mods.begin(), mods.end());
  const int L = LlamaConfig::preset("tiny").num_hidden_layers;
  ASSERT_EQ(mods.size(), (size_t)L + 3);
  EXPECT_EQ(mods.front(), "lm_head");
  EXPECT_TRUE(std::find(mods.begin(), mods.end(), "model.embed_tokens") != mods.end());
  EXPECT_TRUE(std::find(mods.begin(), mods.end(), "model.layers.0.input_layernorm") != mods.end());
  SafetensorsFile f((out / "adapter/adapter_model.safetensors").string());
  export_merged(ck, (out / "merged").string());
  SafetensorsModel merged((out / "merged").string());
  size_t checked = 0;
  for (const ParamRef& p : t.params()) {
    if (p.name.find("lora_") != std::string::npos) continue;
    const TensorView* v = f.find("base_model.model." + p.name);
    ASSERT_TRUE(v != nullptr) << p.name;
    ASSERT_EQ(v->dtype, DType::F32);
    ASSERT_EQ(v->nbytes, p.numel * 4);
    EXPECT_EQ(std::memcmp(v->data, p.w, v->nbytes), 0) << p.name;
    const TensorView& mv = merged.get(p.name);
    ASSERT_EQ(mv.dtype, DType::BF16);
    std::vector<bf16> mb(p.numel);
    std::memcpy(mb.data(), mv.data, p.numel * 2);
    size_t bad = 0;
    for (size_t i = 0; i < p.numel; i++) bad += mb[i].bits != bf16::from_float(p.w[i]).bits;
    EXPECT_EQ(bad, 0u) << p.name;
    checked++;
  }
  EXPECT_EQ(checked, (size_t)L + 3);
}

// ---- (c) full fine-tuning ------------------------------------------------------------------------

namespace {

const std::string kFullFt = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/full_ft";

// The fixture model (bf16 base) with every decoder linear trainable and an fp32 master each.
LlamaModel full_ft_model() {
  LlamaModel m = LlamaModel::load(kFullFt);
  for (const ModelTensor& t : select_trainable(m.config(), "full", {})) {
    m.set_trainable(t.name);
    m.add_master(t.name);
  }
  return m;
}

std::vector<int32_t> fixture_ints(const SafetensorsFile& f, const std::string& n) {
  const TensorView* v = f.find(n);
  if (!v || v->dtype != DType::I32) fail("fixture tensor ", n, " missing or not int32");
  std::vector<int32_t> r((size_t)v->numel());
  std::memcpy(r.data(), v->data, v->nbytes);
  return r;
}

std::vector<float> fixture_floats(const SafetensorsFile& f, const std::string& n) {
  const TensorView* v = f.find(n);
  if (!v) fail("fixture tensor ", n, " missing");
  std::vector<float> r((size_t)v->numel());
  to_float(*v, r.data());
  return r;
}

}  // namespace

// Gradient of the mean loss w.r.t. two whole linears against central finite differences along
// the gradient: W± = bf16(W ± ε·g) (the compute copy is bf16, so the step actually taken is the
// rounded one), FD = L(W+) − L(W−) against the first-order prediction Σ g·(W+ − W−). Single
// elements do not work here: one weight moves the loss by less than the bf16 rounding noise of the
// activations; along g with ε·|g|² = 2e-2 the loss moves by ~4e-2. Measured: 2.7e-2 (q_proj)
// and 1.0e-2 (down_proj) relative; at ε·|g|² = 5e-3 the q_proj figure grows to 1.5e-1 (the loss's
// bf16 rounding noise, ~1e-3 absolute, then dominates), so the bound is 5e-2 at 2e-2: this check
// catches a wrong sign, scale or missing term, the PyTorch comparison below the precision. The tensor also matches the fixture's PyTorch gradient (fp32 torch
// vs bf16 GEMM operands) within 2e-2 relative L2.
TEST(FullFineTuning, GradientMatchesFiniteDifferences) {
  LlamaModel m = full_ft_model();
  SafetensorsFile ref(kFullFt + "/reference.safetensors");
  std::vector<int32_t> ids = fixture_ints(ref, "input_ids");
  const int B = 2, T = (int)ids.size() / 2;
  std::vector<int32_t> targets = next_token_targets(ids.data(), B, T);
  Batch b{B, T, ids.data(), nullptr, targets.data()};
  m.zero_grad();
  m.forward_backward(b);
  for (const std::string name : {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}) {
    const std::vector<float> g(m.grad(name).begin(), m.grad(name).end());
    LinearSite* site = nullptr;
    for (auto& blk : m.blocks)
      for (LinearSite* s : blk.sites())
        if (s->name == name) site = s;
    ASSERT_TRUE(site != nullptr);
    double g2 = 0;
    for (float v : g) g2 += (double)v * v;
    const double eps = 2e-2 / g2;
    const std::vector<bf16> w0(site->W.w.data(), site->W.w.data() + g.size());
    std::vector<bf16> wp(g.size()), wm(g.size());
    double predicted = 0;
    for (size_t i = 0; i < g.size(); i++) {
      wp[i] = bf16::from_float((float)(w0[i].to_float() + eps * g[i]));
      wm[i] = bf16::from_float((float)(w0[i].to_float() - eps * g[i]));
      predicted += (double)g[i] * ((double)wp[i].to_float() - (double)wm[i].to_float());
    }
    std::copy(wp.begin(), wp.end(), site->W.w.data());
    const double lp = m.forward(b).mean();
    std::copy(wm.begin(), wm.end(), site->W.w.data());
    const double lm = m.forward(b).mean();
    std::copy(w0.begin(), w0.end(), site->W.w.data());
    const double rel = std::fabs((lp - lm) - predicted) / std::fabs(predicted);
    std::printf("  %s: FD %.6e  predicted %.6e  rel %.2e\n", name.c_str(), lp - lm, predicted, rel);
    EXPECT_TRUE(rel <= 5e-2) << name;
    const std::vector<float> tg = fixture_floats(ref, "grad." + name);
    ASSERT_EQ(tg.size(), g.size());
    double d = 0, n = 0;
    for (size_t i = 0; i < g.size(); i++) d += ((double)g[i] - tg[i]) * ((double)g[i] - tg[i]), n += (double)tg[i] * tg[i];
    std::printf("  %s: rel L2 vs torch %.3e\n", name.c_str(), std::sqrt(d / n));
    EXPECT_TRUE(std::sqrt(d / n) <= 2e-2) << name;
  }
}

// 3 AdamW steps of full fine-tuning against transformers + torch.optim.AdamW (fixture made by
// scripts/gen_full_ft_fixture.py): the loss before each step and after the last. torch runs fp32;
// frugal keeps fp32 masters and computes with their bf16 copies (GEMM operands rounded, u = 2^-9),
// so the losses differ by ~1e-3 relative (test_model.cpp's HF parity: <= 3.5e-4 for the forward;
// the updates add the bf16 rounding of the new weights). Bound 3e-3 relative, against a training
// effect of 25% over the 3 steps (4.11 -> 3.09), which a wrong update would miss by far.
TEST(FullFineTuning, ThreeAdamWStepsMatchPyTorch) {
  LlamaModel m = full_ft_model();
  SafetensorsFile ref(kFullFt + "/reference.safetensors");
  std::vector<int32_t> ids = fixture_ints(ref, "input_ids");
  const std::vector<float> hyper = fixture_floats(ref, "hyper"), want = fixture_floats(ref, "loss");
  const int B = 2, T = (int)ids.size() / 2;
  std::vector<int32_t> targets = next_token_targets(ids.data(), B, T);
  Batch b{B, T, ids.data(), nullptr, targets.data()};
  std::unique_ptr<Optimizer> opt = make_optimizer("adamw", AdamWConfig{hyper[1], hyper[2], hyper[3], hyper[4]});
  std::vector<ParamRef> ps = m.trainable_params();
  ASSERT_EQ(ps.size(), 7u * m.config().num_hidden_layers);
  std::vector<double> got;
  for (int s = 0; s < 3; s++) {
    zero_grads(ps);
    got.push_back(m.forward_backward(b).mean());
    opt->step(ps, hyper[0]);
    m.sync_trainables();
  }
  got.push_back(m.forward(b).mean());
  for (size_t s = 0; s < got.size(); s++) {
    const double rel = std::fabs(got[s] - want[s]) / want[s];
    std::printf("  loss %zu: frugal %.6f  torch %.6f  rel %.2e\n", s, got[s], (double)want[s], rel);
    EXPECT_TRUE(rel <= 3e-3) << "step " << s;
  }
}
