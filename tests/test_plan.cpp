// test_plan.cpp: the memory planner (src/train/plan.h).
// Checked against:
//  - LlamaModel::memory_report() after a real forward_backward: the activation bytes the planner
//    predicts must equal the model's exactly (several odd shapes, checkpointing on and off, with
//    and without LoRA), and the single-process frozen weights must equal the loaded model's;
//  - the measured peak RSS (getrusage ru_maxrss, metrics.jsonl peak_rss_bytes) of a real
//    `frugal train` run of the tiny preset in a subprocess, against `frugal plan --json` (also a
//    subprocess, so both figures come from a fresh process): within 10% (issue 5's acceptance).
//    The `frugal` binary is $FRUGAL_BIN, or `frugal` next to this test binary (same build dir).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/model/init.h"
#include "src/model/model.h"
#include "src/model/tensors.h"
#include "src/train/plan.h"
#include "src/train/recipe.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace frugal;

namespace {

// Odd sizes everywhere: hidden 72 (6 heads of 12, 2 kv heads), ffn 197, vocab 131, 3 layers.
LlamaConfig odd_config() {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 131;
  c.hidden_size = 72;
  c.intermediate_size = 197;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 12;
  c.rope.head_dim = 12;
  c.tie_word_embeddings = false;
  c.validate("odd_config");
  return c;
}

test_util::ScratchDir& scratch() {
  static test_util::ScratchDir d("plan");
  return d;
}

std::string odd_model_dir() {
  static const std::string dir = [] {
    const std::string d = scratch().path("odd_model");
    init_model(odd_config(), d, 7);
    return d;
  }();
  return dir;
}

std::vector<int32_t> ids_for(int B, int T, int V) {
  std::vector<int32_t> ids((size_t)B * T);
  for (size_t i = 0; i < ids.size(); i++) ids[i] = (int32_t)((i * 37 + 11) % (size_t)V);
  return ids;
}

}  // namespace

// The activation model against the model's own accounting, after a real forward_backward.
TEST(Plan, ActivationBytesEqualMemoryReport) {
  const LlamaConfig c = odd_config();
  struct Case { int B, T; bool ckpt; bool lora; };
  const Case cases[] = {{1, 7, false, false}, {3, 19, false, true}, {3, 19, true, true},
                        {2, 67, true, false}, {1, 131, false, true}, {5, 33, true, true}};
  LoraConfig lc;
  lc.rank = 5;
  lc.alpha = 10.f;
  lc.target_modules = {"q_proj", "v_proj", "down_proj"};
  for (const Case& k : cases) {
    ModelOptions mo;
    mo.quant = QuantMode::NF4;
    mo.checkpoint = k.ckpt;
    LlamaModel m = LlamaModel::load(odd_model_dir(), mo);
    if (k.lora) m.add_lora(lc, 3);
    const std::vector<int32_t> ids = ids_for(k.B, k.T, c.vocab_size);
    const std::vector<int32_t> tg = next_token_targets(ids.data(), k.B, k.T);
    Batch b;
    b.B = k.B;
    b.T = k.T;
    b.ids = ids.data();
    b.targets = tg.data();
    m.forward_backward(b);
    const size_t want = m.memory_report().activation_bytes;
    const size_t got = plan_activation_bytes(c, k.lora ? &lc : nullptr, k.B, k.T, k.ckpt);
    EXPECT_EQ(got, want) << "B=" << k.B << " T=" << k.T << " checkpoint=" << k.ckpt << " lora=" << k.lora;
  }
}

// Single process: the frozen weights the plan counts are the bytes LlamaModel::load stores.
TEST(Plan, FrozenWeightsEqualLoadedModel) {
  for (bool dq : {true, false}) {
    const std::string toml = "[model]\npath = \"" + odd_model_dir() +
                             "\"\n[quant]\ntype = \"nf4\"\nblocksize = 64\ndouble_quant = " + (dq ? "true" : "false") +
                             "\n[data]\nsynthetic = \"patterns\"\nseq_len = 17\n[lora]\nrank = 5\n";
    const Recipe r = Recipe::from_string(toml, "odd.toml");
    PlanOptions o;
    o.runtime_bytes = 0;  // not measured: only the model's categories matter here
    o.threads = 3;
    const Plan p = make_plan(r, o);
    ModelOptions mo = r.model_options();
    LlamaModel m = LlamaModel::load(odd_model_dir(), mo);
    const MemoryReport rep = m.memory_report();
    ASSERT_NE(p.row("frozen_shard"), nullptr);
    EXPECT_EQ(p.row("frozen_shard")->host, rep.frozen_linear_bytes + rep.embedding_bytes + rep.norm_bytes)
        << "double_quant=" << dq;
    EXPECT_EQ(p.row("gathered_units")->host, 0u);
    EXPECT_FALSE(p.fsdp);
  }
}

// Full fine-tuning, one process: the bf16 compute copies of the trained linears are model bytes
// too (frozen row), and masters + grads (trainables row) are the model's.
TEST(Plan, FullFineTuningEqualsLoadedModel) {
  const std::string toml = "[model]\npath = \"" + odd_model_dir() +
                           "\"\n[quant]\ntype = \"none\"\n[train]\nmode = \"full\"\ntrainable = [\"norm\"]\n"
                           "[data]\nsynthetic = \"patterns\"\nseq_len = 17\n";
  const Recipe r = Recipe::from_string(toml, "odd.toml");
  PlanOptions o;
  o.runtime_bytes = 0;
  o.threads = 3;
  const Plan p = make_plan(r, o);
  LlamaModel m = LlamaModel::load(odd_model_dir(), r.model_options());
  for (const ModelTensor& t : select_trainable(m.config(), r.train_mode, r.train_trainable)) {
    m.set_trainable(t.name);
    if (!t.fp32()) m.add_master(t.name);
  }
  const MemoryReport rep = m.memory_report();
  EXPECT_EQ(p.row("frozen_shard")->host, rep.frozen_linear_bytes + rep.embedding_bytes + rep.norm_bytes);
  EXPECT_EQ(p.row("trainables")->host, rep.grad_bytes + rep.master_bytes);
}

TEST(Plan, ByteSizesAndErrors) {
  EXPECT_EQ(parse_byte_size("24GiB"), 24.0 * (1ull << 30));
  EXPECT_EQ(parse_byte_size("80 GB"), 80e9);
  EXPECT_EQ(parse_byte_size("1.5MiB"), 1.5 * (1 << 20));
  EXPECT_EQ(parse_byte_size("4097"), 4097.0);
  test_util::expect_error([] { parse_byte_size("24 parsecs"); }, {"24 parsecs", "unit"});
  test_util::expect_error([] { parse_byte_size("lots"); }, {"lots"});
  const Recipe r = Recipe::from_string("[model]\npreset = \"tiny\"\n[data]\nsynthetic = \"patterns\"\n", "t.toml");
  test_util::expect_error([&] { make_plan(r, 0); }, {"world"});
}

// GPU target: with offload_params the frozen shard moves from the device column to the host one.
TEST(Plan, OffloadMovesFrozenShardToHost) {
  const Recipe base = Recipe::from_string("[model]\npreset = \"llama3-70b-2layers\"\n[data]\nsynthetic = \"patterns\"\n"
                                          "seq_len = 31\n[train]\nmicro_batch = 3\n", "g.toml");
  PlanOptions o;
  o.world = 3;
  o.device_memory = 24.0 * (1ull << 30);
  o.runtime_bytes = 0;
  Recipe off = base;
  off.fsdp_offload = true;
  const Plan a = make_plan(base, o), b = make_plan(off, o);
  const size_t shard = a.row("frozen_shard")->device;
  EXPECT_GT(shard, 0u);
  EXPECT_EQ(a.row("frozen_shard")->host, 0u);
  EXPECT_EQ(b.row("frozen_shard")->device, 0u);
  EXPECT_EQ(b.row("frozen_shard")->host, shard);
  EXPECT_EQ(a.step_device - b.step_device, shard);
  EXPECT_EQ(a.rows, 1);  // micro_batch 3 over 3 ranks
}

// ---- the acceptance check: plan vs measured peak RSS of the tiny preset (single process) ----

namespace {
std::string frugal_bin() {
  if (const char* e = std::getenv("FRUGAL_BIN")) return e;
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return (fs::path(buf).parent_path() / "frugal").string();
}
int run(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
}  // namespace

TEST(Plan, TinyPredictionWithinTenPercentOfMeasuredPeakRss) {
  const std::string bin = frugal_bin();
  ASSERT_TRUE(fs::exists(bin)) << "the frugal binary '" << bin << "' does not exist: build the `frugal` target or set FRUGAL_BIN";
  const std::string dir = scratch().path("tiny_rss");
  const std::string model = dir + "/model", out = dir + "/run", recipe = std::string(FRUGAL_SOURCE_DIR) + "/recipes/tiny_qlora.toml";
  ASSERT_EQ(run("'" + bin + "' init --preset tiny --out '" + model + "' > /dev/null"), 0);
  const std::string sets = " --set model.path=" + model + " --set train.output_dir=" + out +
                           " --set train.steps=3 --set checkpoint.every=0";
  ASSERT_EQ(run("'" + bin + "' train '" + recipe + "'" + sets + " -q"), 0);
  ASSERT_EQ(run("'" + bin + "' plan '" + recipe + "'" + sets + " --json > '" + dir + "/plan.json'"), 0);
  size_t measured = 0;
  std::ifstream mf(out + "/metrics.jsonl");
  for (std::string line; std::getline(mf, line);)
    measured = std::max(measured, nlohmann::json::parse(line).at("peak_rss_bytes").get<size_t>());
  std::ifstream pf(dir + "/plan.json");
  const nlohmann::json pj = nlohmann::json::parse(pf);
  const double predicted = pj.at("total").at("host").get<double>();
  ASSERT_GT(measured, 0u);
  const double rel = (predicted - (double)measured) / (double)measured;
  std::printf("tiny W=1: predicted %.0f B, measured peak RSS %zu B, %+.1f%%\n", predicted, measured, 100 * rel);
  EXPECT_TRUE(std::fabs(rel) <= 0.10) << "predicted " << predicted << " vs measured " << measured;
}
