// mpi_train.cpp: sharded (FSDP) training against the single-process trainer, under mpirun.
// Truth: every rank also runs the single-process Trainer (self communicator, whole model) on the
// same recipe; the sharded run must give the same losses and the same final adapter up to fp32
// summation order (the reduce-scatter sums W partial gradients; each rank's GEMMs see B/W rows).
// Checkpoints: same-W resume is bit for bit; resuming a checkpoint written at another world size
// continues the run (CrossWorld.* run as a ctest fixture: saved at np 4, resumed at np 2 and 3).
// GaLore-AdamW (randomized projector on the sharded rows) is held to the same: sharded = single
// process, and a W = 4 checkpoint resumes at W = 2, 3; with galore.moments = "int8" too, within a
// bound measured against the single-process int8 and fp32 runs (compare_int8).
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>

#include "kernels/cpu/dnnl_matmul.h"
#include "sharding/fsdp.h"
#include "src/train/export.h"
#include "src/train/galore.h"
#include "src/io/safetensors.h"
#include "src/model/init.h"
#include "src/train/trainer.h"
#include "tests/mpi_util.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

// A directory every rank agrees on: rank 0's pid, broadcast.
std::string shared_dir(const std::string& tag) {
  Communicator& c = test::world();
  int64_t pid = (int64_t)getpid();
  c.broadcast(std::span<int64_t>(&pid, 1), 0);
  return "/tmp/frugal_mpi_train_" + std::to_string(pid) + "_" + tag;
}

// tiny preset (GQA 2:1, untied head), NF4 double quant, LoRA on all linears with dropout (the
// masks must follow the global row index), 2 micro-batches of 6 rows (uneven slices at W = 4),
// clipping active (tiny's grad norms are ~2.5).
Recipe test_recipe(const std::string& model_dir, const std::string& out) {
  Recipe r = Recipe::from_string(R"(
[model]
preset = "tiny"
[lora]
rank = 4
alpha = 8.0
dropout = 0.1
target_modules = ["all-linear"]
[optim]
lr = 2e-3
grad_clip = 1.0
warmup_steps = 1
[data]
synthetic = "patterns"
seq_len = 24
[train]
steps = 4
micro_batch = 6
grad_accum = 2
seed = 77
)", "<mpi_train>");
  r.model_path = model_dir;
  r.output_dir = out;
  return r;
}

// GaLore-AdamW (randomized projector, rank 2..4, refreshes at steps 0 and 3) on the test recipe:
// full fine-tuning of a bf16 base (every decoder linear projected, the norms plain AdamW), the
// LoRA factors of a rank-8 adapter projected to rank 2, or QLoRA with the embedding and the
// untied lm_head trained densely and projected (the adapters plain AdamW).
enum class GaloreCase { Full, LoraFactors, DenseNextToLora };
Recipe galore_recipe(const std::string& model_dir, const std::string& out, GaloreCase c) {
  Recipe r = test_recipe(model_dir, out);
  r.optim_name = "galore_adamw";
  r.galore.update_proj_gap = 3;
  r.galore.svd = "randomized";
  r.galore.oversample = 4;
  r.galore.power_iters = 1;
  if (c == GaloreCase::LoraFactors) {
    r.lora.rank = 8;
    r.lora.alpha = 16.f;
    r.galore.rank = 2;
    r.galore.targets = {"lora"};
  } else if (c == GaloreCase::DenseNextToLora) {
    r.train_trainable = {"embed_tokens", "lm_head"};
    r.galore.rank = 4;
    r.galore.targets = {"embed_tokens", "lm_head"};
  } else {
    r.quant_type = "none";
    r.train_mode = "full";
    r.train_trainable = {"norm"};
    r.galore.rank = 4;
  }
  return r;
}

// The model, created once by rank 0.
std::string make_model(const std::string& base) {
  Communicator& c = test::world();
  const std::string dir = base + "/model";
  if (c.rank() == 0 && !fs::exists(fs::path(dir) / "config.json")) init_model(LlamaConfig::preset("tiny"), dir, 5);
  c.barrier();
  return dir;
}

double rel_l2(const avector<float>& a, const avector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); i++) d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), n += (double)b[i] * b[i];
  return std::sqrt(d / std::max(n, 1e-300));
}

struct RunResult {
  std::vector<double> losses;
  std::vector<std::pair<std::string, avector<float>>> lora;
};

RunResult run(Trainer& t, int64_t steps) {
  RunResult r;
  t.verbose = false;
  while (t.step() < steps) r.losses.push_back(t.train_step().loss);
  r.lora = t.gather_lora();
  return r;
}

// Same tensors (names, sizes) with the same bits.
bool same_bits(const std::vector<std::pair<std::string, avector<float>>>& a,
               const std::vector<std::pair<std::string, avector<float>>>& b) {
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); i++)
    same = a[i].first == b[i].first && a[i].second.size() == b[i].second.size() &&
           std::memcmp(a[i].second.data(), b[i].second.data(), 4 * b[i].second.size()) == 0;
  return same;
}

// A recipe for an output directory.
using RecipeFor = std::function<Recipe(const std::string& out)>;

// Single-process run on this rank (its own output dir under base).
RunResult single_process(const RecipeFor& recipe, const std::string& base, int64_t steps) {
  auto self = make_self_communicator();
  Trainer t(recipe(base + "/ref_rank" + std::to_string(test::world().rank())), self.get());
  return run(t, steps);
}

// Worst relative loss difference and worst per-tensor relative L2 of the adapters.
struct Diff {
  double loss = 0, lora = 0;
  bool same_shape = true;
};
Diff diff(const RunResult& got, const RunResult& want) {
  Diff d;
  // want.losses empty: compare the adapters only
  d.same_shape = (want.losses.empty() || got.losses.size() == want.losses.size()) && got.lora.size() == want.lora.size();
  if (!d.same_shape) return d;
  for (size_t i = 0; i < want.losses.size(); i++)
    d.loss = std::max(d.loss, std::fabs(got.losses[i] - want.losses[i]) / std::fabs(want.losses[i]));
  for (size_t i = 0; i < got.lora.size(); i++) {
    d.same_shape = d.same_shape && got.lora[i].first == want.lora[i].first &&
                   got.lora[i].second.size() == want.lora[i].second.size();
    if (d.same_shape) d.lora = std::max(d.lora, rel_l2(got.lora[i].second, want.lora[i].second));
  }
  return d;
}

// The reference run and its summation-order noise floor: the same single-process run again with
// every GEMM output moved one fp32 ulp (kernels/cpu/dnnl_matmul.h), the size of the change another
// kernel or another M per rank makes. `skip` drops the first losses (a resumed run starts later).
struct Reference {
  RunResult run;
  Diff floor;
};
Reference reference_with_floor(const RecipeFor& recipe, const std::string& base, int64_t steps, size_t skip = 0) {
  Reference ref;
  ref.run = single_process(recipe, base, steps);
  set_gemm_output_jitter(0x5eed);
  RunResult jittered = single_process(recipe, base + "/jitter", steps);
  set_gemm_output_jitter(0);
  ref.run.losses.erase(ref.run.losses.begin(), ref.run.losses.begin() + skip);
  jittered.losses.erase(jittered.losses.begin(), jittered.losses.begin() + skip);
  ref.floor = diff(jittered, ref.run);
  return ref;
}

// got against the reference: within 3x its noise floor (two independent summation orders differ
// by ~√2 of it), and the floor must be real (> 0) so the comparison cannot pass vacuously.
void compare(const RunResult& got, const Reference& want, const char* what) {
  const Diff d = diff(got, want.run), f = want.floor;
  EXPECT_ALL_RANKS(d.same_shape && f.same_shape, what << ": different number of steps or adapter tensors");
  EXPECT_ALL_RANKS(f.loss > 0 && f.lora > 0, what << ": the one-ulp GEMM jitter changed nothing");
  EXPECT_ALL_RANKS(d.loss <= 3 * f.loss, what << ": loss differs by " << d.loss << " (relative), floor " << f.loss);
  EXPECT_ALL_RANKS(d.lora <= 3 * f.lora, what << ": adapter differs by " << d.lora << " (relative L2), floor " << f.lora);
  if (test::world().rank() == 0)
    std::fprintf(stderr, "[W=%d] %s: max loss diff %.3g (floor %.3g), max adapter rel L2 %.3g (floor %.3g)\n",
                 test::world().world(), what, d.loss, f.loss, d.lora, f.lora);
}

// GaLore full fine-tuning at rank 32 with the given moment storage: every projected moment tensor
// has >= 4096 elements, so with "int8" all of them are 8-bit.
Recipe galore_int8_recipe(const std::string& model_dir, const std::string& out, const std::string& moments) {
  Recipe r = galore_recipe(model_dir, out, GaloreCase::Full);
  r.galore.rank = 32;
  r.galore.moments = moments;
  return r;
}

// got against a single-process int8 reference: within 3x the larger of the reference's noise floor
// and q, the single-process int8-vs-fp32 difference (the quantization of all blocks), which must be
// real (> 0). A sharded int8 run keeps the ragged ends of each rank's moment range in fp32, so it
// differs from the single-process one by the quantization of those blocks plus summation order.
void compare_int8(const RunResult& got, const Reference& want, const Diff& q, const char* what) {
  const Diff d = diff(got, want.run);
  const double bl = 3 * std::max(want.floor.loss, q.loss), ba = 3 * std::max(want.floor.lora, q.lora);
  EXPECT_ALL_RANKS(q.same_shape && q.loss > 0 && q.lora > 0, what << ": int8 moments changed nothing against fp32");
  EXPECT_ALL_RANKS(d.same_shape, what << ": different number of steps or tensors");
  EXPECT_ALL_RANKS(d.loss <= bl, what << ": loss differs by " << d.loss << ", bound " << bl);
  EXPECT_ALL_RANKS(d.lora <= ba, what << ": tensors differ by " << d.lora << " (relative L2), bound " << ba);
  if (test::world().rank() == 0)
    std::fprintf(stderr, "[W=%d] %s: loss %.3g, tensors %.3g; bounds from floor %.3g / %.3g and int8-vs-fp32 %.3g / %.3g\n",
                 test::world().world(), what, d.loss, d.lora, want.floor.loss, want.floor.lora, q.loss, q.lora);
}

}  // namespace

// Tolerances: the sharded and single-process runs differ only in fp32 summation order (per-rank
// GEMMs over B/W rows, W-way reduce-scatter sums), so each test bounds them by 3x the noise floor
// its reference measures (reference_with_floor). A fixed bound cannot: the size of the order
// change depends on which oneDNN kernels run. With avx512 gemm:jit for every M the runs agreed to
// 1.5e-6..2.3e-6 (losses) and 0.9e-4..2.0e-4 (adapter); on an AMX CPU, where the full-batch and
// per-rank GEMMs take different kernels, the same runs differ by 5.3e-5 and 1.6e-3 — and by as
// much from a run with fp64 GEMMs. Adam divides each gradient by sqrt(v), so elements whose
// gradient is at the rounding-noise level move by ~lr in either run.
TEST(ShardedTraining, MatchesSingleProcess) {
  const std::string base = shared_dir("match");
  const std::string model = make_model(base);
  auto recipe = [&](const std::string& out) { return test_recipe(model, out); };
  Reference want = reference_with_floor(recipe, base, 4);
  Trainer t(test_recipe(model, base + "/sharded"), &test::world());
  EXPECT_ALL_RANKS(t.sharded() == (test::world().world() > 1), "sharded() " << t.sharded());
  RunResult got = run(t, 4);
  compare(got, want, "sharded vs single-process");
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

TEST(ShardedTraining, ResumeSameWorldIsExact) {
  const std::string base = shared_dir("resume");
  const std::string model = make_model(base);
  Recipe r = test_recipe(model, base + "/run");
  r.checkpoint_every = 2;
  RunResult full;
  {
    Trainer t(r, &test::world());
    t.verbose = false;
    t.run();  // writes step-2.h5 and step-4.h5
    full.lora = t.gather_lora();
  }
  std::vector<double> losses_full;
  if (test::world().rank() == 0) {  // metrics.jsonl has the global losses
    std::ifstream f(base + "/run/metrics.jsonl");
    for (std::string line; std::getline(f, line);) losses_full.push_back(std::stod(line.substr(line.find("\"loss\":") + 7)));
  }
  Recipe r2 = r;
  r2.output_dir = base + "/run2";
  Trainer t2(r2, &test::world());
  t2.resume(base + "/run/checkpoints/step-2.h5");
  RunResult part = run(t2, 4);
  const bool bitwise = same_bits(part.lora, full.lora);
  EXPECT_ALL_RANKS(bitwise, "resumed adapter is not bitwise equal to the uninterrupted run's");
  bool losses_ok = true;
  if (test::world().rank() == 0)
    losses_ok = losses_full.size() == 4 && part.losses.size() == 2 && part.losses[0] == losses_full[2] &&
                part.losses[1] == losses_full[3];
  EXPECT_ALL_RANKS(losses_ok, "resumed losses differ from the uninterrupted run's");
  // the sharded checkpoint is the single-process format: the single-process trainer resumes it
  {
    auto self = make_self_communicator();
    Recipe r3 = r;
    r3.output_dir = base + "/single_rank" + std::to_string(test::world().rank());
    Trainer t3(r3, self.get());
    t3.resume(base + "/run/checkpoints/step-2.h5");
    RunResult single = run(t3, 4);
    Reference want = reference_with_floor([&](const std::string& out) { return test_recipe(model, out); }, base + "/floor", 4);
    want.run = RunResult{{}, full.lora};  // the uninterrupted sharded run, its floor from the reference
    compare(single, want, "single-process resume of a sharded checkpoint");
  }
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

// Dense trainables beyond LoRA (train.trainable): embeddings, every norm and the untied lm_head,
// with LoRA on all linears. Their fp32 masters, grads and Adam state are sharded like the LoRA
// tensors (1/W each), their grads reduce-scattered. Truth: the single-process trainer on the same
// recipe. Measured at W = 2, 3, 4 (avx512 kernels): steps 0-1 bitwise equal (step 0 has lr 0),
// then losses within 2.8e-6..4.0e-5 (relative) and tensors within 0.8e-4..3.5e-4 (relative L2)
// after 4 steps: the summation-order noise of MatchesSingleProcess, amplified because Adam moves
// every element of the [V,C] embedding and lm_head whose gradient is at the noise level by ~lr
// (and a bf16 compute copy flips an ulp when its master crosses a rounding boundary). Bound: 3x
// the reference's noise floor. Then a same-W resume of a sharded checkpoint holding them is exact.
Recipe dense_recipe(const std::string& model, const std::string& out) {
  Recipe r = test_recipe(model, out);
  r.train_trainable = {"embed_tokens", "norm", "input_layernorm", "post_attention_layernorm", "lm_head"};
  return r;
}

TEST(ShardedTraining, DenseTrainablesMatchSingleProcess) {
  const std::string base = shared_dir("dense");
  const std::string model = make_model(base);
  Reference want = reference_with_floor([&](const std::string& out) { return dense_recipe(model, out); }, base, 4);
  Recipe r = dense_recipe(model, base + "/sharded");
  r.checkpoint_every = 2;
  RunResult got;
  {
    Trainer t(r, &test::world());
    t.verbose = false;
    while (t.step() < 4) {
      got.losses.push_back(t.train_step().loss);
      if (t.step() == 2) t.save(base + "/sharded/step-2.h5");
    }
    got.lora = t.gather_lora();
  }
  bool has_dense = false;
  for (const auto& [name, w] : got.lora) has_dense = has_dense || name == "model.embed_tokens.weight";
  EXPECT_ALL_RANKS(has_dense, "the trainable tensors do not include model.embed_tokens.weight");
  compare(got, want, "dense trainables: sharded vs single-process");
  // same-W resume: exact
  Recipe r2 = dense_recipe(model, base + "/resumed");
  Trainer t2(r2, &test::world());
  t2.resume(base + "/sharded/step-2.h5");
  RunResult part = run(t2, 4);
  const bool bitwise = same_bits(part.lora, got.lora);
  EXPECT_ALL_RANKS(bitwise, "resumed dense trainables are not bitwise equal to the uninterrupted run's");
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

// Full fine-tuning (train.mode = "full", bf16 base): every decoder linear's fp32 master, grad and
// Adam state sharded 1/W, its bf16 compute copy made from the gathered master. Truth: the
// single-process trainer. Measured at W = 2, 3, 4 over 3 steps: losses within 1.3e-7 (relative),
// tensors within 2.6e-5 (relative L2) with avx512 kernels; bound: 3x the reference's noise floor.
TEST(ShardedTraining, FullFineTuningMatchesSingleProcess) {
  const std::string base = shared_dir("full");
  const std::string model = make_model(base);
  auto full_recipe = [&](const std::string& out) {
    Recipe r = test_recipe(model, out);
    r.quant_type = "none";
    r.train_mode = "full";
    r.train_trainable = {"norm"};
    return r;
  };
  Reference want = reference_with_floor(full_recipe, base, 3);
  Trainer t(full_recipe(base + "/sharded"), &test::world());
  RunResult got = run(t, 3);
  EXPECT_ALL_RANKS(got.lora.size() == 7u * 2 + 1, "expected 15 trainable tensors, got " << got.lora.size());
  compare(got, want, "full fine-tuning: sharded vs single-process");
  // the comparison means something: training moved the loss
  EXPECT_ALL_RANKS(want.run.losses.size() == 3 && std::fabs(want.run.losses[2] - want.run.losses[0]) > 1e-3 * want.run.losses[0],
                   "full fine-tuning did not move the loss: " << want.run.losses[0] << " -> " << want.run.losses.back());
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

// Cross-world resume, as a ctest fixture (FRUGAL_XW_DIR set by CMake): Save runs at np 4 and
// writes step-2.h5; Resume runs at np 2 and np 3 and continues it. Truth: the single-process run.
// GaLore-AdamW under FSDP: each rank projects only the gradient rows its shard holds (split rows
// and all), the range finder's small products are all-reduced; the run equals the single-process
// one within the noise floor. Each rank's optimizer state is what galore_held_state_bytes (the
// planner's formula) says for its pieces.
TEST(ShardedTraining, GaloreMatchesSingleProcess) {
  const std::string base = shared_dir("galore");
  const std::string model = make_model(base);
  const char* names[] = {"GaLore full fine-tuning", "GaLore on the LoRA factors", "GaLore on embed_tokens + lm_head next to LoRA"};
  for (GaloreCase c : {GaloreCase::Full, GaloreCase::LoraFactors, GaloreCase::DenseNextToLora}) {
    const std::string sub = base + "/case" + std::to_string((int)c);
    auto recipe = [&](const std::string& out) { return galore_recipe(model, out, c); };
    Reference want = reference_with_floor(recipe, sub, 4);
    Trainer t(recipe(sub + "/sharded"), &test::world());
    RunResult got = run(t, 4);
    compare(got, want, (std::string(names[(int)c]) + ": sharded vs single-process").c_str());
    const auto* g = dynamic_cast<const GaloreAdamW*>(&t.optimizer());
    size_t formula = 0;
    for (const ParamRef& p : t.params())
      for (const ParamPiece& pc : param_pieces(p))  // one process: the whole param is one piece
        formula += galore_held_state_bytes(t.recipe().galore, pc, test::world().world(), test::world().rank());
    EXPECT_ALL_RANKS(g && g->state_bytes() == formula,
                     "GaLore state bytes " << (g ? g->state_bytes() : 0) << ", formula " << formula);
    EXPECT_ALL_RANKS(g && g->stats().refreshes > 0, "no projector refresh ran");
  }
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

// GaLore with galore.moments = "int8" under FSDP (galore_int8_recipe). Truth: the single-process
// int8 run, within compare_int8's measured bound. Then a same-W resume of the sharded int8 run is
// bit for bit, and each rank's state is the planner's formula.
TEST(ShardedTraining, GaloreInt8MatchesSingleProcessAndResumesExactly) {
  const std::string base = shared_dir("galore_int8");
  const std::string model = make_model(base);
  auto recipe = [&](const std::string& out, const std::string& moments) { return galore_int8_recipe(model, out, moments); };
  Reference want = reference_with_floor([&](const std::string& out) { return recipe(out, "int8"); }, base + "/ref8", 4);
  const RunResult fp32 = single_process([&](const std::string& out) { return recipe(out, "fp32"); }, base + "/ref32", 4);
  const std::string ck = base + "/sharded/mid.h5";
  Trainer t(recipe(base + "/sharded", "int8"), &test::world());
  t.verbose = false;
  RunResult got;
  while (t.step() < 4) {
    got.losses.push_back(t.train_step().loss);
    if (t.step() == 2) t.save(ck);
  }
  got.lora = t.gather_lora();
  compare_int8(got, want, diff(fp32, want.run), "GaLore int8: sharded vs single-process int8");
  const auto* g = dynamic_cast<const GaloreAdamW*>(&t.optimizer());
  size_t formula = 0;
  for (const ParamRef& p : t.params())
    for (const ParamPiece& pc : param_pieces(p))
      formula += galore_held_state_bytes(t.recipe().galore, pc, test::world().world(), test::world().rank());
  EXPECT_ALL_RANKS(g && g->state_bytes() == formula,
                   "GaLore int8 state bytes " << (g ? g->state_bytes() : 0) << ", formula " << formula);
  // same-W resume from the checkpoint after step 2 (refreshes at 0 and 3: step 2 uses the loaded
  // projector and moments, step 3 refreshes)
  Trainer t2(recipe(base + "/resumed", "int8"), &test::world());
  t2.verbose = false;
  t2.resume(ck);
  const RunResult part = run(t2, 4);
  EXPECT_ALL_RANKS(same_bits(part.lora, got.lora), "int8 resumed tensors are not bitwise those of the uninterrupted run");
  EXPECT_ALL_RANKS(part.losses.size() == 2 && part.losses[0] == got.losses[2] && part.losses[1] == got.losses[3],
                   "int8 resumed losses differ from the uninterrupted run's");
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}

TEST(CrossWorld, Save) {
  const char* d = std::getenv("FRUGAL_XW_DIR");
  if (!d) GTEST_SKIP() << "FRUGAL_XW_DIR not set (run by ctest as a fixture)";
  const std::string base = d;
  if (test::world().rank() == 0) fs::remove_all(base);
  test::world().barrier();
  const std::string model = make_model(base);
  Recipe r = test_recipe(model, base + "/run");
  r.checkpoint_every = 2;
  Trainer t(r, &test::world());
  t.verbose = false;
  t.run(2);
  // and a GaLore full fine-tuning run: moments in projected shapes, projectors, pending flags
  Recipe rg = galore_recipe(model, base + "/galore", GaloreCase::Full);
  rg.checkpoint_every = 2;
  Trainer tg(rg, &test::world());
  tg.verbose = false;
  tg.run(2);
  // and the same with 8-bit moments (the file holds them dequantized, in fp32)
  Recipe r8 = galore_int8_recipe(model, base + "/galore_int8", "int8");
  r8.checkpoint_every = 2;
  Trainer t8(r8, &test::world());
  t8.verbose = false;
  t8.run(2);
  test::world().barrier();
  EXPECT_ALL_RANKS(fs::exists(base + "/galore_int8/checkpoints/step-2.h5"), "no GaLore int8 checkpoint written");
  EXPECT_ALL_RANKS(fs::exists(base + "/run/checkpoints/step-2.h5"), "no checkpoint written");
  EXPECT_ALL_RANKS(fs::exists(base + "/galore/checkpoints/step-2.h5"), "no GaLore checkpoint written");
}

TEST(CrossWorld, Resume) {
  const char* d = std::getenv("FRUGAL_XW_DIR");
  if (!d) GTEST_SKIP() << "FRUGAL_XW_DIR not set (run by ctest as a fixture)";
  const std::string base = d;
  const std::string ckpt = base + "/run/checkpoints/step-2.h5";
  EXPECT_ALL_RANKS(fs::exists(ckpt), ckpt << " missing (the np4 Save fixture did not run)");
  if (!fs::exists(ckpt)) return;
  const std::string model = base + "/model";
  Reference want = reference_with_floor([&](const std::string& out) { return test_recipe(model, out); },
                                        base + "/xw_w" + std::to_string(test::world().world()), 4, 2);
  Recipe r = test_recipe(model, base + "/resume_w" + std::to_string(test::world().world()));
  Trainer t(r, &test::world());
  t.resume(ckpt);
  RunResult got = run(t, 4);
  compare(got, want, "resume at this W of a checkpoint saved at W=4");
  // GaLore: the step after the checkpoint uses the loaded projector, the next one refreshes
  const std::string gck = base + "/galore/checkpoints/step-2.h5";
  EXPECT_ALL_RANKS(fs::exists(gck), gck << " missing");
  if (!fs::exists(gck)) return;
  const std::string tag = std::to_string(test::world().world());
  auto grecipe = [&](const std::string& out) { return galore_recipe(model, out, GaloreCase::Full); };
  Reference gwant = reference_with_floor(grecipe, base + "/xw_galore_w" + tag, 4, 2);
  Trainer tg(grecipe(base + "/resume_galore_w" + tag), &test::world());
  tg.resume(gck);
  compare(run(tg, 4), gwant, "GaLore: resume at this W of a checkpoint saved at W=4");
  // GaLore int8: at this W the moments are requantized over this W's ranges (the ragged fp32 ends
  // move with the cuts), so the bound is compare_int8's
  const std::string g8ck = base + "/galore_int8/checkpoints/step-2.h5";
  EXPECT_ALL_RANKS(fs::exists(g8ck), g8ck << " missing");
  if (!fs::exists(g8ck)) return;
  auto g8 = [&](const std::string& moments) {
    return [&model, moments](const std::string& out) { return galore_int8_recipe(model, out, moments); };
  };
  Reference w8 = reference_with_floor(g8("int8"), base + "/xw_galore8_w" + tag, 4, 2);
  RunResult r32 = single_process(g8("fp32"), base + "/xw_galore32_w" + tag, 4);
  r32.losses.erase(r32.losses.begin(), r32.losses.begin() + 2);
  Trainer t8(g8("int8")(base + "/resume_galore8_w" + tag), &test::world());
  t8.resume(g8ck);
  compare_int8(run(t8, 4), w8, diff(r32, w8.run), "GaLore int8: resume at this W of a checkpoint saved at W=4");
}

// Export from a sharded checkpoint: the file is the single-process format, so `frugal export`
// (adapter, merged) works on it as is, streaming the base one row-chunk at a time (no rank holds
// the model). Truth: the adapter the sharded trainer holds (gathered) and bf16(W + s·B·A) from the
// base file.
TEST(ShardedTraining, ExportFromShardedCheckpoint) {
  const std::string base = shared_dir("export");
  const std::string model = make_model(base);
  Recipe r = test_recipe(model, base + "/run");
  Trainer t(r, &test::world());
  t.verbose = false;
  t.run(2);
  const auto lora = t.gather_lora();
  const std::string ckpt = base + "/run/checkpoints/step-2.h5";
  bool adapter_ok = true, merged_ok = true;
  double merged_err = -1;  // max over elements of |W' - ref| - bound
  if (test::world().rank() == 0) {
    export_adapter(ckpt, base + "/adapter");
    SafetensorsFile f(base + "/adapter/adapter_model.safetensors");
    for (const auto& [name, w] : lora) {
      const TensorView* v = f.find(name);
      adapter_ok = adapter_ok && v && v->dtype == DType::F32 && v->nbytes == 4 * w.size() &&
                   std::memcmp(v->data, w.data(), v->nbytes) == 0;
    }
    adapter_ok = adapter_ok && f.tensors().size() == lora.size();
    export_merged(ckpt, base + "/merged", model);
    // layer 1 q_proj: W' = bf16(W + s·B·A)
    const std::string wn = "model.layers.1.self_attn.q_proj.weight";
    SafetensorsModel in(model), out(base + "/merged");
    const TensorView &w0 = in.get(wn), &w1 = out.get(wn);
    const int64_t O = w0.shape[0], I = w0.shape[1];
    std::vector<float> W(O * I), M(O * I);
    to_float(w0, W.data());
    to_float(w1, M.data());
    const avector<float>* A = nullptr;
    const avector<float>* B = nullptr;
    for (const auto& [name, w] : lora) {
      if (name == peft_lora_name(wn, 'A')) A = &w;
      if (name == peft_lora_name(wn, 'B')) B = &w;
    }
    merged_ok = A && B;
    const int rk = r.lora.rank;
    const float s = r.lora.scale();
    for (int64_t o = 0; merged_ok && o < O; o++)
      for (int64_t i = 0; i < I; i++) {
        double d = 0;
        for (int k = 0; k < rk; k++) d += (double)(*B)[o * rk + k] * (*A)[k * I + i];
        // ref in fp64; the exporter sums W + s·B·A in fp32 and rounds to nearest bf16: within half
        // a bf16 ulp, 2^-8·|ref|, plus its fp32 summation error (r terms, ~1e-6 relative), as
        // test_export.cpp bounds it
        const double ref = (double)W[o * I + i] + (double)s * d;
        merged_err = std::max(merged_err, std::fabs(M[o * I + i] - ref) - std::ldexp(std::fabs(ref), -8) * (1 + 1e-4));
      }
    merged_ok = merged_ok && merged_err <= 0;
  }
  EXPECT_ALL_RANKS(adapter_ok, "exported adapter differs from the sharded trainer's LoRA");
  EXPECT_ALL_RANKS(merged_ok, "merged q_proj exceeds 2^-8·|ref| by " << merged_err);
  test::world().barrier();
  if (test::world().rank() == 0) fs::remove_all(base);
}
