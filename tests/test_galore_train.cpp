// test_galore_train.cpp: GaLore-AdamW (optim.name = "galore_adamw") in the training loop, one
// process, on the `tiny` preset with synthetic "patterns" data:
//   (a) full fine-tuning (bf16 base, every attention/MLP linear projected): a run resumed from a
//       checkpoint taken between two projector refreshes repeats the uninterrupted run bit for bit
//       (moments in the projected shape, the projector and the step counters are in the file);
//   (b) GaLore on the LoRA factors (galore.targets = ["lora"], a rank-16 adapter projected to rank
//       4): B = 0 makes A's first gradient zero, so A's refresh is deferred; a checkpoint taken
//       while it is pending must carry that, or the resumed run would use an all-zero projector;
//   (c) the [galore] recipe section: parsed, validated with the key named, dumped by to_toml;
//   (d) a checkpoint without GaLore state (an AdamW run) is refused naming the missing tensor;
//   (e) galore.moments = "int8": resume bit-exact, fp32 <-> int8 checkpoints interchangeable (the
//       file holds fp32 moments: int8 requantizes them exactly), loss within 1% of fp32's.
// Truth for (a), (b) and the int8 resume: the same Trainer run without interruption.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "quant/blockwise8.h"
#include "src/io/dataset.h"
#include "src/io/h5.h"
#include "src/model/init.h"
#include "src/train/galore.h"
#include "src/train/plan.h"
#include "src/train/recipe.h"
#include "src/train/trainer.h"
#include "tests/galore_test_recipes.h"
#include "tests/test_util.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

class GaloreTrainTest : public test_util::TinyGaloreTest<GaloreTrainTest> {
 public:
  static constexpr const char* kTag = "galore_train";
  static constexpr uint64_t kInitSeed = 11;

 protected:
  static Recipe base(const std::string& run) { return galore_base(run); }
  static Recipe full_ft(const std::string& run) { return galore_full_ft(run); }
  // rank 32: every projected moment tensor has >= 4096 elements ([128, 32] q/o_proj, [32, 128]
  // k/v_proj (Left), [352, 32] gate/up_proj, [32, 352] down_proj), so all of them are 8-bit; the
  // norms ([128]) stay fp32
  static Recipe int8_ft(const std::string& run, const std::string& moments = "int8") {
    Recipe r = full_ft(run);
    r.galore.rank = 32;
    r.galore.moments = moments;
    return r;
  }
  static Recipe lora_targets(const std::string& run) {
    Recipe r = base(run);
    r.quant_type = "nf4";
    r.lora.rank = 16;
    r.lora.alpha = 16.f;
    r.lora.target_modules = {"all-linear"};
    r.galore.targets = {"lora"};
    r.galore.proj_type = "std";
    return r;
  }
};

std::vector<std::vector<float>> weights(Trainer& t) {
  std::vector<std::vector<float>> w;
  for (auto& p : t.params()) w.emplace_back(p.w, p.w + p.numel);
  return w;
}

// Runs r for r.steps, checkpointing after step `at`; resumes a fresh trainer from it and checks
// that the remaining steps' losses and the final weights are bitwise those of the first run.
void expect_resume_exact(const Recipe& r, int at, const std::string& out2) {
  std::vector<double> full;
  const std::string ck = r.output_dir + "/mid.h5";
  std::vector<std::vector<float>> w_full, w_start;
  {
    Trainer t(r);
    t.verbose = false;
    w_start = weights(t);
    for (int s = 0; s < r.steps; s++) {
      full.push_back(t.train_step().loss);
      if (t.step() == at) t.save(ck);
    }
    w_full = weights(t);
  }
  Recipe r2 = r;
  r2.output_dir = out2;
  Trainer t2(r2);
  t2.verbose = false;
  t2.resume(ck);
  ASSERT_EQ(t2.step(), at);
  for (int s = at; s < r.steps; s++) EXPECT_EQ(t2.train_step().loss, full[s]) << "step " << s;
  const auto w2 = weights(t2);
  ASSERT_EQ(w2.size(), w_full.size());
  double moved = 0;
  for (size_t i = 0; i < w2.size(); i++) {
    EXPECT_EQ(0, std::memcmp(w2[i].data(), w_full[i].data(), w2[i].size() * sizeof(float))) << t2.params()[i].name;
    for (size_t e = 0; e < w2[i].size(); e++) moved += std::fabs((double)w2[i][e] - w_start[i][e]);
  }
  EXPECT_GT(moved, 0.0) << "training did not move the weights: the equality above would be trivial";
  EXPECT_TRUE(std::isfinite(full.back()));
}

// The learning run of the loss comparisons: 24 steps on 16 repeating pattern samples (`data`),
// 4 rows per step, constant lr 3e-3, refreshes every 4. Returns the first loss, the mean of the
// last 4 (one refresh period) and the optimizer's state bytes at the end.
struct LearnRun {
  double first = 0, tail = 0;
  size_t state_bytes = 0;
};
LearnRun learn_patterns(Recipe r, const std::string& data) {
  r.data_path = data;
  r.data_synthetic = "";
  r.steps = 24;
  r.micro_batch = 4;
  r.grad_accum = 1;
  r.lr = 3e-3f;
  r.lr_schedule = "constant";
  r.galore.update_proj_gap = 4;
  Trainer t(r);
  t.verbose = false;
  LearnRun out;
  for (int s = 0; s < r.steps; s++) {
    const double l = t.train_step().loss;
    if (s == 0) out.first = l;
    if (s >= r.steps - 4) out.tail += l / 4;  // mean of the last period
  }
  out.state_bytes = dynamic_cast<const GaloreAdamW&>(t.optimizer()).state_bytes();
  return out;
}

}  // namespace

// (a) refreshes at steps 0, 2, 4; the checkpoint after step 3 sits between two of them, so the
// resumed run uses the loaded projector for step 3 and refreshes at step 4.
TEST_F(GaloreTrainTest, FullFineTuningResumeIsExact) {
  Recipe r = full_ft("full");
  {
    Trainer t(r);
    const auto* g = dynamic_cast<const GaloreAdamW*>(&t.optimizer());
    ASSERT_NE(g, nullptr) << "optim.name = galore_adamw did not make a GaloreAdamW";
  }
  expect_resume_exact(r, 3, dir_->path("full2"));
}

// The planner's optimizer row is the state the optimizer holds after a step (GaLore formula), and
// far below AdamW's for the same recipe.
TEST_F(GaloreTrainTest, PlanOptimizerRowEqualsStateBytes) {
  for (const Recipe& r : {full_ft("plan_full"), lora_targets("plan_lora"), int8_ft("plan_int8")}) {
    Trainer t(r);
    t.verbose = false;
    t.train_step();
    const auto& g = dynamic_cast<const GaloreAdamW&>(t.optimizer());
    const Plan p = make_plan(r, 1);
    ASSERT_NE(p.row("optimizer_state"), nullptr);
    EXPECT_EQ(p.row("optimizer_state")->host, g.state_bytes()) << r.output_dir;
    Recipe ra = r;
    ra.optim_name = "adamw";
    const Plan pa = make_plan(ra, 1);
    size_t floats = 0;
    for (const ParamRef& q : t.params()) floats += q.numel;
    EXPECT_EQ(pa.row("optimizer_state")->host, 8 * floats);
    std::printf("%s (%s moments): GaLore state %zu B, AdamW %zu B (%.1f%%)\n", r.train_mode.c_str(),
                r.galore.moments.c_str(), g.state_bytes(), 8 * floats,
                100.0 * g.state_bytes() / (8.0 * floats));
    EXPECT_LT(p.row("optimizer_state")->host, pa.row("optimizer_state")->host);
  }
}

// (b) step 0 refreshes every lora_B; every lora_A has a zero gradient (B = 0) and defers. The
// checkpoint after that step holds A pending (and an all-zero stored projector): the resumed run
// must refresh A at step 1 (1 % update_proj_gap != 0, so only the saved flag makes it).
TEST_F(GaloreTrainTest, LoraTargetsResumeIsExactWithDeferredRefresh) {
  Recipe r = lora_targets("lora");
  r.steps = 4;
  expect_resume_exact(r, 1, dir_->path("lora2"));
}

// (c)
TEST_F(GaloreTrainTest, RecipeSection) {
  Recipe r = Recipe::from_string(R"(
[model]
preset = "tiny"
[data]
synthetic = "patterns"
[optim]
name = "galore_adamw"
[galore]
rank = 64
update_proj_gap = 50
scale = 0.5
proj_type = "reverse_std"
targets = ["lora"]
svd = "randomized"
oversample = 4
power_iters = 1
)", "g.toml");
  EXPECT_EQ(r.optim_name, "galore_adamw");
  EXPECT_EQ(r.galore.rank, 64);
  EXPECT_EQ(r.galore.update_proj_gap, 50);
  EXPECT_EQ(r.galore.scale, 0.5f);
  EXPECT_EQ(r.galore.proj_type, "reverse_std");
  EXPECT_EQ(r.galore.targets, std::vector<std::string>{"lora"});
  EXPECT_EQ(r.galore.svd, "randomized");
  EXPECT_EQ(r.galore.oversample, 4);
  EXPECT_EQ(r.galore.power_iters, 1);
  EXPECT_TRUE(Recipe::from_string(r.to_toml(), "dump") == r);
  auto parse = [](const std::string& galore_keys, const std::string& optim = "galore_adamw") {
    return [=] {
      Recipe::from_string("[model]\npreset = \"tiny\"\n[data]\nsynthetic = \"patterns\"\n[optim]\nname = \"" + optim +
                              "\"\n[galore]\n" + galore_keys, "bad.toml");
    };
  };
  test_util::expect_error(parse("proj_type = \"diagonal\"\n"), {"bad.toml", "galore.proj_type", "diagonal"});
  test_util::expect_error(parse("rank = 0\n"), {"bad.toml", "galore.rank"});
  test_util::expect_error(parse("svd = \"qr\"\n"), {"bad.toml", "galore.svd"});
  test_util::expect_error(parse("moments = \"int4\"\n"), {"bad.toml", "galore.moments", "int4"});
  EXPECT_NO_THROW(parse("moments = \"int8\"\n")());
  test_util::expect_error(parse("", "lion"), {"bad.toml", "optim.name", "lion"});
}

// (d)
TEST_F(GaloreTrainTest, AdamWCheckpointIsRefused) {
  Recipe ra = full_ft("adamw");
  ra.optim_name = "adamw";
  ra.steps = 1;
  const std::string ck = ra.output_dir + "/a.h5";
  {
    Trainer t(ra);
    t.verbose = false;
    t.train_step();
    t.save(ck);
  }
  Recipe rg = full_ft("adamw_as_galore");
  Trainer t(rg);
  t.verbose = false;
  test_util::expect_error([&] { t.resume(ck); }, {"a.h5", "/optim/"});
}

// The shipped GaLore recipes fit what their headers say, and the same recipes with AdamW do not:
// the optimizer row is what makes the difference (planner figures, no weights read).
TEST_F(GaloreTrainTest, ShippedRecipesFitAndAdamWDoesNot) {
  struct Case {
    const char* file;
    const char* preset;
    double device;
  };
  for (const Case& c : {Case{"llama3_1_70b_qlora_galore_2x24gb.toml", "llama3.1-70b", 24.0 * (1 << 30)},
                        Case{"llama3_1_8b_full_galore.toml", "llama3.1-8b", 48.0 * (1 << 30)}}) {
    Recipe r = Recipe::load(std::string(FRUGAL_SOURCE_DIR) + "/recipes/" + c.file, {std::string("model.preset=") + c.preset});
    ASSERT_EQ(r.optim_name, "galore_adamw") << c.file;
    PlanOptions o;
    o.world = 2;
    o.device_memory = c.device;
    o.host_memory = 64.0 * (1 << 30);
    o.runtime_bytes = 32 << 20;
    const Plan g = make_plan(r, o);
    r.optim_name = "adamw";
    const Plan a = make_plan(r, o);
    std::printf("%s: GaLore %.2f GiB per rank (optimizer %.2f GiB), AdamW %.2f GiB (optimizer %.2f GiB)\n", c.file,
                g.device_total / 1073741824.0, g.row("optimizer_state")->device / 1073741824.0,
                a.device_total / 1073741824.0, a.row("optimizer_state")->device / 1073741824.0);
    EXPECT_TRUE(g.fits) << c.file;
    EXPECT_FALSE(a.fits) << c.file;
    EXPECT_LE(g.row("optimizer_state")->device, 0.35 * a.row("optimizer_state")->device) << c.file;  // >= 65% smaller
  }
}

// Under FSDP each rank holds 1/W of the masters and grads (flat shards) and of the GaLore state:
// moments are flat 1/W chunks of the projected shape (reduce-scattered), both projectors 1/W
// slices all-gathered while used. The busiest rank's trainables + optimizer state, and its GaLore
// state alone, stay within 5% of the single-process total / W (planner
// figures = the optimizer's own state_bytes, mpi_train checks that on every rank).
TEST_F(GaloreTrainTest, ShardedStateIsOneWth) {
  Recipe r = Recipe::load(std::string(FRUGAL_SOURCE_DIR) + "/recipes/llama3_1_8b_full_galore.toml",
                          {"model.preset=llama3.1-8b"});
  auto per_rank = [&](int W, size_t* optim) {
    PlanOptions o;
    o.world = W;
    o.fsdp = W > 1 ? 1 : 0;
    o.runtime_bytes = 0;
    const Plan p = make_plan(r, o);
    *optim = p.row("optimizer_state")->host;
    return p.row("trainables")->host + *optim;
  };
  size_t o1 = 0;
  const double one = (double)per_rank(1, &o1);
  for (int W : {2, 4, 8}) {
    size_t ow = 0;
    const double w = (double)per_rank(W, &ow);
    std::printf("W=%d: trainables + GaLore state %.2f GiB per rank = %.4f x (W=1 total)/W; state alone %.4f x\n", W,
                w / 1073741824.0, w * W / one, (double)ow * W / (double)o1);
    EXPECT_LE(w * W, 1.05 * one) << "W=" << W;
    EXPECT_LE((double)ow * W, 1.05 * (double)o1) << "W=" << W << ": GaLore state alone";
  }
}

// The randomized projector trains like the exact one: the same recipe with svd = "randomized"
// (l = r + 8, 2 subspace iterations) ends within 1% of the exact run's loss after 24 steps with
// refreshes every 4 (its subspaces match the SVD's to the angle bounds of test_galore). Data: 16
// repeating pattern samples, so the loss must fall (real learning, not batch-to-batch noise).
TEST_F(GaloreTrainTest, RandomizedLossWithinOnePercentOfExact) {
  const std::string data = dir_->path("patterns16.h5");
  make_synthetic_patterns(256, 16, 33, 5).save(data);
  double last[2] = {0, 0}, first = 0;
  for (int k = 0; k < 2; k++) {
    Recipe r = full_ft(k ? "rand" : "exact");
    r.galore.svd = k ? "randomized" : "exact";
    const LearnRun lr = learn_patterns(r, data);
    first = lr.first, last[k] = lr.tail;
  }
  std::printf("loss %.5f at step 0; mean of steps 20-23: exact %.5f, randomized %.5f (%.3f%%)\n", first, last[0], last[1],
              100.0 * std::fabs(last[1] - last[0]) / last[0]);
  EXPECT_LT(last[0], 0.9 * first) << "the exact run did not learn";
  EXPECT_LE(std::fabs(last[1] - last[0]), 0.01 * last[0]);
}

// (e) int8 moments: the resumed run repeats the uninterrupted one bit for bit (refreshes at 0, 2,
// 4; the checkpoint after step 3 holds the dequantized moments, which requantize to the same codes).
TEST_F(GaloreTrainTest, Int8ResumeIsExact) {
  Recipe r = int8_ft("int8");
  expect_resume_exact(r, 3, dir_->path("int8_2"));
}

// (e) A checkpoint of one moment storage resumes with the other: fp32 -> int8 and int8 -> fp32.
// Truth for the loaded state: the file's fp32 moments, requantized here with Blockwise8Vector,
// equal bit for bit what the resumed int8 optimizer holds (read back from a checkpoint it saves
// right after the resume); the fp32 resume of an int8 file holds the file's values exactly. Then
// both continue to step 6 with losses within 1% of the uninterrupted fp32 run's.
TEST_F(GaloreTrainTest, Fp32AndInt8CheckpointsAreInterchangeable) {
  std::vector<double> full;
  const std::string ck32 = dir_->path("x32") + "/mid.h5", ck8 = dir_->path("x8") + "/mid.h5";
  {
    Trainer t(int8_ft("x32", "fp32"));
    t.verbose = false;
    for (int s = 0; s < 6; s++) {
      full.push_back(t.train_step().loss);
      if (t.step() == 3) t.save(ck32);
    }
  }
  {
    Trainer t(int8_ft("x8"));
    t.verbose = false;
    for (int s = 0; s < 3; s++) t.train_step();
    t.save(ck8);
  }
  for (const std::string& to : {std::string("int8"), std::string("fp32")}) {
    const std::string& from = to == "int8" ? ck32 : ck8;
    Trainer t(int8_ft("x_" + to, to));
    t.verbose = false;
    t.resume(from);
    const std::string back = dir_->path("x_" + to) + "/back.h5";
    t.save(back);
    h5::H5File a = h5::H5File::open(from), b = h5::H5File::open(back);
    size_t quantized = 0;
    for (const ParamRef& p : t.params())
      for (const char* st : {"m", "v"}) {
        const std::string ds = std::string("/optim/") + st + "/" + p.name;
        std::vector<int64_t> shape;
        const std::vector<float> want_in = a.read<float>(ds, &shape), got = b.read<float>(ds);
        std::vector<float> want = want_in;
        const bool q = to == "int8" && want.size() >= quant::kBlockwise8MinNumel;
        if (q) {
          quant::Blockwise8Vector bv;
          bv.reset(0, want.size(), true, st[0] == 'm');
          bv.set(want_in.data(), ds);
          bv.get(want.data());
          quantized += want.size();
        }
        ASSERT_EQ(got.size(), want.size()) << ds;
        EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << ds << " resumed with " << to;
      }
    if (to == "int8") {
      EXPECT_GT(quantized, 0u) << "no 8-bit moments: the check above would be fp32 only";
    }
    for (int s = 3; s < 6; s++) {
      const double l = t.train_step().loss;
      EXPECT_LE(std::fabs(l - full[s]), 0.01 * full[s]) << "step " << s << " resumed with " << to;
    }
  }
}

// (e) int8 trains like fp32: the same 24-step run as RandomizedLossWithinOnePercentOfExact (rank
// 32, refreshes every 4, 16 repeating patterns) with both moment storages; the mean loss of the
// last 4 steps within 1% of the fp32 run's (the reference, run here). Memory: the moments of the
// projected tensors (all >= 4096 elements) take <= 30% of their fp32 bytes (1 B per element + 4 B
// per 256-block absmax + the fp32 ragged tail vs 8 B per element for m and v together).
TEST_F(GaloreTrainTest, Int8LossWithinOnePercentOfFp32) {
  const std::string data = dir_->path("patterns16_int8.h5");
  make_synthetic_patterns(256, 16, 33, 5).save(data);
  double last[2] = {0, 0}, first = 0;
  size_t bytes[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    const LearnRun lr = learn_patterns(int8_ft(k ? "loss8" : "loss32", k ? "int8" : "fp32"), data);
    first = lr.first, last[k] = lr.tail, bytes[k] = lr.state_bytes;
  }
  // the moments of the targets: formula per tensor minus its (fp32) projector
  GaloreConfig c32 = int8_ft("").galore, c8 = c32;
  c32.moments = "fp32", c8.moments = "int8";
  size_t m32 = 0, m8 = 0;
  {
    Trainer t(int8_ft("loss_shapes"));
    for (const ParamRef& p : t.params()) {
      if (!galore_is_target(c32, p.name, p.shape)) continue;
      const ProjSide side = galore_side(c32.proj_type, p.shape[0], p.shape[1]);
      const int r = galore_effective_rank(c32.rank, p.shape[0], p.shape[1]);
      const size_t nmom = galore_low_rank_part(side, r, MatrixSplit::whole(p.shape[0], p.shape[1]), 1).size();
      ASSERT_GE(nmom, quant::kBlockwise8MinNumel) << p.name;
      const size_t proj = galore_state_bytes(c32, p.name, p.shape) - 8 * nmom;
      m32 += 8 * nmom;
      m8 += galore_state_bytes(c8, p.name, p.shape) - proj;
    }
  }
  std::printf("loss %.5f at step 0; mean of steps 20-23: fp32 %.5f, int8 %.5f (%.3f%%); optimizer state fp32 %zu B, "
              "int8 %zu B (%.1f%%); target moments fp32 %zu B, int8 %zu B (%.1f%%)\n",
              first, last[0], last[1], 100.0 * std::fabs(last[1] - last[0]) / last[0], bytes[0], bytes[1],
              100.0 * bytes[1] / bytes[0], m32, m8, 100.0 * m8 / m32);
  EXPECT_LT(last[0], 0.9 * first) << "the fp32 run did not learn";
  EXPECT_LE(std::fabs(last[1] - last[0]), 0.01 * last[0]);
  EXPECT_LE(m8, 0.30 * m32);
  EXPECT_LT(bytes[1], bytes[0]);
}
