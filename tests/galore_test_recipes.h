// galore_test_recipes.h: the tiny-model GaLore fixture shared by test_galore_train and
// test_galore_per_layer (header only; each test_*.cpp is its own binary).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "src/model/init.h"
#include "src/train/recipe.h"
#include "tests/test_util.h"

namespace frugal::test_util {

// A suite with one `tiny` preset model, initialized once per suite with Derived::kInitSeed in a
// scratch directory named Derived::kTag (Derived: the fixture, so each suite has its own).
template <class Derived>
class TinyGaloreTest : public ::testing::Test {
 protected:
  static inline ScratchDir* dir_ = nullptr;
  static void SetUpTestSuite() {
    dir_ = new ScratchDir(Derived::kTag);
    init_model(LlamaConfig::preset("tiny"), dir_->path("model"), Derived::kInitSeed);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  // GaLore-AdamW rank 4, a refresh every 2 steps, on synthetic "patterns" data: 6 steps of
  // 2 micro-batches x 2 rows x 32 tokens, cosine lr 1e-3 with 1 warmup step; output in `run`
  static Recipe galore_base(const std::string& run) {
    Recipe r;
    r.path = "test";
    r.model_path = dir_->path("model");
    r.data_synthetic = "patterns";
    r.seq_len = 32;
    r.micro_batch = 2;
    r.grad_accum = 2;
    r.steps = 6;
    r.lr = 1e-3f;
    r.lr_schedule = "cosine";
    r.warmup_steps = 1;
    r.seed = 99;
    r.output_dir = dir_->path(run);
    r.optim_name = "galore_adamw";
    r.adamw.weight_decay = 0.01f;
    r.galore.rank = 4;
    r.galore.update_proj_gap = 2;
    r.galore.scale = 0.25f;
    return r;
  }
  // full fine-tuning of the bf16 base: every attention / MLP linear projected, the norms by AdamW
  static Recipe galore_full_ft(const std::string& run) {
    Recipe r = galore_base(run);
    r.quant_type = "none";
    r.train_mode = "full";
    r.train_trainable = {"norm"};  // 1-D tensors next to the projected linears: plain AdamW
    return r;
  }
};

}  // namespace frugal::test_util
