// test_galore_per_layer.cpp: per-layer GaLore-AdamW updates (galore.per_layer, src/train/
// galore_per_layer.h) in the training loop, full fine-tuning of the `tiny` preset (bf16 base).
// Truth: the same recipe with galore.per_layer = false (GaloreAdamW::step after the whole backward).
//   (a) grad_accum = 1: per-layer equals the whole-model step bit for bit (the same per-tensor math
//       on the same gradient), and only one block's linears ever hold a gradient;
//   (b) grad_accum = 2: refresh steps are bitwise the same; between refreshes the projected
//       gradients are summed over the micro-batches, which equals the projection of the summed
//       gradient up to fp32 rounding (measured 5e-6 of the weights' movement after 6 steps; using
//       only the last micro-batch's projection instead gives 6e-1): bound 1e-4 of the movement;
//       between refreshes one block's linears hold a gradient at a time, on refresh steps all;
//   (c) a per-layer run resumed from a checkpoint repeats the uninterrupted one bit for bit;
//   (d) the recipe refuses per_layer with grad_clip > 0, LoRA mode or AdamW, naming the key.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "src/model/init.h"
#include "src/train/galore_per_layer.h"
#include "src/train/plan.h"
#include "src/train/recipe.h"
#include "src/train/trainer.h"
#include "tests/galore_test_recipes.h"
#include "tests/test_util.h"

using namespace frugal;

namespace {

class GaloreLayerTest : public test_util::TinyGaloreTest<GaloreLayerTest> {
 public:
  static constexpr const char* kTag = "galore_per_layer";
  static constexpr uint64_t kInitSeed = 23;

 protected:
  // full fine-tuning (galore_full_ft) without clipping, which per-layer updates cannot do
  static Recipe recipe(const std::string& run, int accum, int gap, bool per_layer) {
    Recipe r = galore_full_ft(run);
    r.grad_accum = accum;
    r.grad_clip = 0.f;
    r.seed = 7;
    r.galore.update_proj_gap = gap;
    r.galore.per_layer = per_layer;
    return r;
  }
};

struct TrainRun {
  std::vector<double> loss;
  std::vector<std::vector<float>> w;  // final masters, trainable_params() order
  std::vector<std::string> names;
};

TrainRun run(const Recipe& r) {
  Trainer t(r);
  t.verbose = false;
  TrainRun out;
  for (int s = 0; s < r.steps; s++) out.loss.push_back(t.train_step().loss);
  for (const ParamRef& p : t.params()) out.w.emplace_back(p.w, p.w + p.numel), out.names.push_back(p.name);
  return out;
}

// max over tensors of ||a - b|| / ||b - w0||: the difference relative to how far training moved it
double weight_diff(const TrainRun& a, const TrainRun& b, const TrainRun& start) {
  double worst = 0;
  for (size_t i = 0; i < a.w.size(); i++) {
    double d = 0, moved = 0;
    for (size_t e = 0; e < a.w[i].size(); e++) {
      d += std::pow((double)a.w[i][e] - b.w[i][e], 2);
      moved += std::pow((double)b.w[i][e] - start.w[i][e], 2);
    }
    worst = std::max(worst, std::sqrt(d / std::max(moved, 1e-300)));
  }
  return worst;
}

size_t block_linear_floats(const LlamaConfig& c) {
  const size_t C = c.hidden_size;  // q, o: [q_dim, C]; k, v: [kv_dim, C]; gate, up, down: [I, C]
  return 2 * C * c.q_dim() + 2 * C * c.kv_dim() + 3 * C * c.intermediate_size;
}

TEST_F(GaloreLayerTest, OneMicroBatchIsBitwiseTheWholeModelStep) {
  const Recipe whole = recipe("a_whole", 1, 2, false), layer = recipe("a_layer", 1, 2, true);
  const TrainRun a = run(whole);
  Trainer t(layer);
  t.verbose = false;
  TrainRun b;
  for (int s = 0; s < layer.steps; s++) b.loss.push_back(t.train_step().loss);
  for (const ParamRef& p : t.params()) b.w.emplace_back(p.w, p.w + p.numel);
  for (int s = 0; s < layer.steps; s++) EXPECT_EQ(a.loss[s], b.loss[s]) << "step " << s;
  ASSERT_EQ(a.w.size(), b.w.size());
  for (size_t i = 0; i < a.w.size(); i++)
    EXPECT_EQ(0, std::memcmp(a.w[i].data(), b.w[i].data(), a.w[i].size() * sizeof(float))) << a.names[i];
  // at most one block's linears held a gradient at any time (the whole model has num_hidden_layers)
  const LlamaConfig c = LlamaConfig::load(dir_->path("model"));
  ASSERT_GE(c.num_hidden_layers, 2);
  EXPECT_EQ(t.layer_step()->peak_linear_grad_floats(), block_linear_floats(c));
  for (const ParamRef& p : t.params())
    if (p.shape.size() == 2) {
      EXPECT_EQ(p.g, nullptr) << p.name << " holds a gradient between steps";
    }
}

TEST_F(GaloreLayerTest, AccumulatedProjectionsMatchTheWholeModelStep) {
  // gap 3: steps 0 and 3 refresh (full gradients), steps 1, 2, 4, 5 sum projections
  const Recipe whole = recipe("b_whole", 2, 3, false), layer = recipe("b_layer", 2, 3, true);
  TrainRun start;
  {
    Trainer t(whole);
    for (const ParamRef& p : t.params()) start.w.emplace_back(p.w, p.w + p.numel);
  }
  const TrainRun a = run(whole);

  Trainer t(layer);
  t.verbose = false;
  TrainRun b;
  const LlamaConfig c = LlamaConfig::load(dir_->path("model"));
  for (int s = 0; s < layer.steps; s++) {
    if (s == 1 || s == 4) t.layer_step()->reset_peak();  // after a refresh step
    b.loss.push_back(t.train_step().loss);
    if (s == 2 || s == 5) {  // two steps between refreshes: one block at a time
      EXPECT_EQ(t.layer_step()->peak_linear_grad_floats(), block_linear_floats(c)) << "steps to " << s;
    }
    if (s == 3) {  // the refresh step: every block's full gradient is accumulated over 2 micro-batches
      EXPECT_EQ(t.layer_step()->peak_linear_grad_floats(), c.num_hidden_layers * block_linear_floats(c));
    }
  }
  for (const ParamRef& p : t.params()) b.w.emplace_back(p.w, p.w + p.numel);
  // step 0 refreshes: the loss after it (step 1's) is bitwise the whole-model one
  EXPECT_EQ(a.loss[0], b.loss[0]);
  EXPECT_EQ(a.loss[1], b.loss[1]);
  double loss_diff = 0;
  for (int s = 0; s < layer.steps; s++) loss_diff = std::max(loss_diff, std::fabs(b.loss[s] - a.loss[s]) / a.loss[s]);
  const double w_diff = weight_diff(b, a, start);
  std::printf("per-layer grad_accum 2 vs whole-model step: loss %.3e, weights %.3e (of their movement)\n",
              loss_diff, w_diff);
  EXPECT_LE(loss_diff, 1e-5);
  EXPECT_LE(w_diff, 1e-4);
  EXPECT_GT(w_diff, 0.0);  // a sum of projections is not bitwise the projection of the sum
}

TEST_F(GaloreLayerTest, ResumeIsExact) {
  const Recipe r = recipe("c_run", 2, 3, true);
  const std::string ck = r.output_dir + "/mid.h5";
  TrainRun a;
  {
    Trainer t(r);
    t.verbose = false;
    for (int s = 0; s < r.steps; s++) {
      a.loss.push_back(t.train_step().loss);
      if (t.step() == 2) t.save(ck);  // between refreshes (steps 0 and 3)
    }
    for (const ParamRef& p : t.params()) a.w.emplace_back(p.w, p.w + p.numel);
  }
  Recipe r2 = r;
  r2.output_dir = dir_->path("c_resumed");
  Trainer t2(r2);
  t2.verbose = false;
  t2.resume(ck);
  for (int s = 2; s < r.steps; s++) EXPECT_EQ(t2.train_step().loss, a.loss[s]) << "step " << s;
  for (size_t i = 0; i < a.w.size(); i++)
    EXPECT_EQ(0, std::memcmp(t2.params()[i].w, a.w[i].data(), a.w[i].size() * sizeof(float))) << t2.params()[i].name;
}

// The planner's "trainables + grads" row counts, for per-layer updates, the peak the runs above
// measured: one block's linear gradients (grad_accum 1), every one's (grad_accum 2: refresh steps).
TEST_F(GaloreLayerTest, PlanGradsRowIsTheMeasuredPeak) {
  const LlamaConfig c = LlamaConfig::load(dir_->path("model"));
  const size_t all = c.num_hidden_layers * block_linear_floats(c);
  for (int accum : {1, 2}) {
    const Plan whole = make_plan(recipe("e", accum, 2, false), 1), layer = make_plan(recipe("e", accum, 2, true), 1);
    const size_t held = accum == 1 ? block_linear_floats(c) : all;
    EXPECT_EQ(whole.row("trainables")->host - layer.row("trainables")->host, 4 * (all - held)) << "grad_accum " << accum;
  }
}

// The shipped one-GPU recipe: Llama-3.1-8B full fine-tuning fits one 80 GB card with per-layer
// updates and not without (the planner; its grads row is the measured peak above).
TEST_F(GaloreLayerTest, ShippedRecipeFitsOneCardOnlyPerLayer) {
  Recipe r = Recipe::load(std::string(FRUGAL_SOURCE_DIR) + "/recipes/llama3_1_8b_full_galore_per_layer_1x80gb.toml",
                          {"model.preset=llama3.1-8b"});
  ASSERT_TRUE(r.galore.per_layer);
  PlanOptions o;
  o.world = 1;
  o.device_memory = 80.0 * (1 << 30);
  o.host_memory = 64.0 * (1 << 30);
  o.runtime_bytes = 32 << 20;
  const Plan layer = make_plan(r, o);
  r.galore.per_layer = false;
  const Plan whole = make_plan(r, o);
  std::printf("8B full GaLore on one card: per-layer %.2f GiB, whole-model step %.2f GiB\n",
              layer.device_total / 1073741824.0, whole.device_total / 1073741824.0);
  EXPECT_TRUE(layer.fits);
  EXPECT_FALSE(whole.fits);
}

TEST_F(GaloreLayerTest, RecipeRefusesWhatPerLayerCannotDo) {
  auto error = [](Recipe r) {
    try {
      r.validate("test.toml");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Recipe r = recipe("d", 1, 2, true);
  EXPECT_EQ(error(r), "no error");
  r.grad_clip = 1.f;
  EXPECT_NE(error(r).find("optim.grad_clip = 0"), std::string::npos) << error(r);
  r = recipe("d", 1, 2, true);
  r.train_mode = "lora";
  r.quant_type = "nf4";
  EXPECT_NE(error(r).find("galore.per_layer needs train.mode = \"full\""), std::string::npos) << error(r);
  r = recipe("d", 1, 2, true);
  r.optim_name = "adamw";
  EXPECT_NE(error(r).find("galore.per_layer needs optim.name = \"galore_adamw\""), std::string::npos) << error(r);
}

}  // namespace
