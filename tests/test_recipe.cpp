// test_recipe.cpp: TOML recipes (src/train/recipe.h).
// Checked against: the recipes in recipes/ (globbed at test time, each must load and validate),
// field values written by hand in these tests (compared field by field, independently of the
// schema table), and the error contract: unknown/mistyped keys name the key and the file and
// suggest the nearest valid key; out-of-range values name the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "src/train/recipe.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

// Minimal valid recipe text: everything else at its default.
const char* kMinimal = "[model]\npreset = \"tiny\"\n[data]\nsynthetic = \"patterns\"\n";

std::string error_of(const std::string& text, const std::vector<std::string>& ov = {},
                     const std::string& where = "test.toml") {
  try {
    Recipe::from_string(text, where, ov);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// `text` completed to a valid recipe: the [model] / [data] sections of kMinimal are added unless
// the text has its own (a TOML table cannot be defined twice).
std::string complete(const std::string& text) {
  std::string out = text;
  if (!contains(text, "[model]")) out += "[model]\npreset = \"tiny\"\n";
  if (!contains(text, "[data]")) out += "[data]\nsynthetic = \"patterns\"\n";
  return out;
}

// Every field, compared explicitly (not through the schema, which is what is under test).
void expect_same(const Recipe& a, const Recipe& b) {
  EXPECT_EQ(a.model_path, b.model_path);
  EXPECT_EQ(a.model_preset, b.model_preset);
  EXPECT_EQ(a.model_init_seed, b.model_init_seed);
  EXPECT_EQ(a.quant_type, b.quant_type);
  EXPECT_EQ(a.quant_blocksize, b.quant_blocksize);
  EXPECT_EQ(a.quant_double, b.quant_double);
  EXPECT_EQ(a.lora.rank, b.lora.rank);
  EXPECT_EQ(a.lora.alpha, b.lora.alpha);
  EXPECT_EQ(a.lora.dropout, b.lora.dropout);
  EXPECT_EQ(a.lora.rslora, b.lora.rslora);
  EXPECT_EQ(a.lora.target_modules, b.lora.target_modules);
  EXPECT_EQ(a.optim_name, b.optim_name);
  EXPECT_EQ(a.adamw.beta1, b.adamw.beta1);
  EXPECT_EQ(a.adamw.beta2, b.adamw.beta2);
  EXPECT_EQ(a.adamw.eps, b.adamw.eps);
  EXPECT_EQ(a.adamw.weight_decay, b.adamw.weight_decay);
  EXPECT_EQ(a.lr, b.lr);
  EXPECT_EQ(a.grad_clip, b.grad_clip);
  EXPECT_EQ(a.lr_schedule, b.lr_schedule);
  EXPECT_EQ(a.warmup_steps, b.warmup_steps);
  EXPECT_EQ(a.min_lr_ratio, b.min_lr_ratio);
  EXPECT_EQ(a.data_path, b.data_path);
  EXPECT_EQ(a.data_synthetic, b.data_synthetic);
  EXPECT_EQ(a.seq_len, b.seq_len);
  EXPECT_EQ(a.pack, b.pack);
  EXPECT_EQ(a.shuffle, b.shuffle);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.micro_batch, b.micro_batch);
  EXPECT_EQ(a.grad_accum, b.grad_accum);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.activation_checkpointing, b.activation_checkpointing);
  EXPECT_EQ(a.log_every, b.log_every);
  EXPECT_EQ(a.output_dir, b.output_dir);
  EXPECT_EQ(a.checkpoint_every, b.checkpoint_every);
  EXPECT_EQ(a.checkpoint_keep, b.checkpoint_keep);
  EXPECT_TRUE(a == b);
}

const std::vector<std::string> kAll7 = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

}  // namespace

// Every recipe shipped in recipes/ loads, validates and survives the to_toml round trip.
TEST(Recipe, EveryRecipeInRepoLoads) {
  const fs::path dir = fs::path(FRUGAL_SOURCE_DIR) / "recipes";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".toml") continue;
    ++n;
    SCOPED_TRACE(e.path().string());
    Recipe r;
    ASSERT_NO_THROW(r = Recipe::load(e.path().string())) << error_of("", {}, "") << e.path();
    EXPECT_EQ(r.path, e.path().string());
    Recipe back = Recipe::from_string(r.to_toml(), "dump");
    expect_same(r, back);
  }
  EXPECT_GE(n, 3) << "recipes/ should hold tiny_qlora, small_qlora and llama3_1_8b_qlora";
}

TEST(Recipe, TinyRecipeIsWhatTestsExpect) {
  Recipe r = Recipe::load(std::string(FRUGAL_SOURCE_DIR) + "/recipes/tiny_qlora.toml");
  EXPECT_EQ(r.model_preset, "tiny");
  EXPECT_EQ(r.model_path, "runs/tiny-model");
  EXPECT_EQ(r.data_synthetic, "patterns");
  EXPECT_EQ(r.quant_type, "nf4");
  EXPECT_EQ(r.lora.rank, 8);
  EXPECT_EQ(r.lora.target_modules, kAll7);  // "all-linear" expanded
  EXPECT_EQ(r.lr_schedule, "cosine");
  EXPECT_EQ(r.optim_name, "adamw");
  EXPECT_GE(r.checkpoint_every, 1);
  EXPECT_LE(r.checkpoint_every, r.steps);
  LRSchedule s = r.schedule();
  EXPECT_EQ(s.total_steps, r.steps);
  EXPECT_EQ(s.warmup_steps, r.warmup_steps);
  EXPECT_EQ(r.model_options().quant, QuantMode::NF4);
}

TEST(Recipe, DefaultsFromMinimalText) {
  Recipe r = Recipe::from_string(kMinimal, "min.toml");
  Recipe d;  // struct defaults
  d.model_preset = "tiny";
  d.data_synthetic = "patterns";
  expect_same(r, d);
  EXPECT_EQ(r.path, "min.toml");
  EXPECT_EQ(r.lora.rank, 16);
  EXPECT_EQ(r.lora.alpha, 32.f);
  EXPECT_EQ(r.lr, 2e-4f);
}

TEST(Recipe, OverridesParseByType) {
  Recipe r = Recipe::from_string(kMinimal, "min.toml",
                                 {"lora.rank=32", "optim.lr = 1e-4", "quant.double_quant=false", "lora.rslora=TRUE",
                                  "train.output_dir=\"runs/a b\"", "train.seed=7", "lora.alpha=64",
                                  "lora.target_modules=[\"v_proj\",\"q_proj\"]", "data.seq_len=128"});
  EXPECT_EQ(r.lora.rank, 32);
  EXPECT_EQ(r.lr, 1e-4f);
  EXPECT_FALSE(r.quant_double);
  EXPECT_TRUE(r.lora.rslora);
  EXPECT_EQ(r.output_dir, "runs/a b");
  EXPECT_EQ(r.seed, 7u);
  EXPECT_EQ(r.lora.alpha, 64.f);
  EXPECT_EQ(r.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));  // canonical order
  EXPECT_EQ(r.seq_len, 128);
  // comma form, and the last override of a key wins; overrides beat the file
  Recipe c = Recipe::from_string(std::string(kMinimal) + "[lora]\nrank = 4\n", "f.toml",
                                 {"lora.target_modules=down_proj, gate_proj", "lora.rank=5", "lora.rank=6"});
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"gate_proj", "down_proj"}));
  EXPECT_EQ(c.lora.rank, 6);
  Recipe a = Recipe::from_string(kMinimal, "f.toml", {"lora.target_modules=all-linear"});
  EXPECT_EQ(a.lora.target_modules, kAll7);
  // an invalid file value can be fixed by an override (validation runs after overrides)
  EXPECT_NO_THROW(Recipe::from_string(std::string(kMinimal) + "[lora]\nrank = 0\n", "f.toml", {"lora.rank=8"}));
}

TEST(Recipe, OverrideErrors) {
  std::string e = error_of(kMinimal, {"lora.rank=abc"});
  EXPECT_TRUE(contains(e, "lora.rank") && contains(e, "--set") && contains(e, "integer")) << e;
  e = error_of(kMinimal, {"lora.rnak=8"});
  EXPECT_TRUE(contains(e, "did you mean 'lora.rank'")) << e;
  e = error_of(kMinimal, {"lora.rank"});
  EXPECT_TRUE(contains(e, "section.key=value")) << e;
  e = error_of(kMinimal, {"quant.double_quant=maybe"});
  EXPECT_TRUE(contains(e, "quant.double_quant") && contains(e, "bool")) << e;
  e = error_of(kMinimal, {"optim.lr=1e-3x"});
  EXPECT_TRUE(contains(e, "optim.lr") && contains(e, "number")) << e;
  e = error_of(kMinimal, {"train.seed=-1"});
  EXPECT_TRUE(contains(e, "train.seed")) << e;
  e = error_of(kMinimal, {"lora.target_modules=[\"q_proj\", 3]"});
  EXPECT_TRUE(contains(e, "lora.target_modules")) << e;
}

TEST(Recipe, UnknownKeysSuggestNearest) {
  struct Case {
    std::string text, expect;
  } cases[] = {
      {"[lora]\nrnak = 8\n", "did you mean 'lora.rank'"},
      {"[optim]\nlerning_rate = 1e-3\n", "did you mean 'optim.lr'"},
      {"[optim]\nlearning_rate = 1e-3\n", "did you mean 'optim.lr'"},
      {"[train]\ngradient_accumulation_steps = 4\n", "did you mean 'train.grad_accum'"},
      {"[train]\nlr = 1e-3\n", "did you mean 'optim.lr'"},          // right key, wrong section
      {"[data]\nseqlen = 128\n", "did you mean 'data.seq_len'"},
      {"[trian]\nsteps = 3\n", "did you mean [train]"},
      {"steps = 3\n", "did you mean 'train.steps'"},                // key outside any section
      {"[lora.extra]\nx = 1\n", "unknown key 'lora.extra'"},       // nested table
  };
  for (const Case& c : cases) {
    std::string e = error_of(complete(c.text), {}, "recipes/mine.toml");
    EXPECT_TRUE(contains(e, c.expect)) << c.text << " -> " << e;
    EXPECT_TRUE(contains(e, "recipes/mine.toml")) << e;
  }
}

TEST(Recipe, TypeErrorsNameKeyAndFile) {
  const char* cases[][2] = {
      {"[lora]\nrank = \"8\"\n", "lora.rank"},
      {"[lora]\nrank = 1.5\n", "lora.rank"},
      {"[optim]\nlr = \"fast\"\n", "optim.lr"},
      {"[data]\npack = 1\n", "data.pack"},
      {"[lora]\ntarget_modules = [1, 2]\n", "lora.target_modules"},
      {"[train]\nsteps = 99999999999\n", "train.steps"},
      {"[train]\noutput_dir = 3\n", "train.output_dir"},
      {"[lora]\nalpha = 1e300\n", "lora.alpha"},
      {"lora = 3\n", "lora"},
  };
  for (auto& c : cases) {
    std::string e = error_of(complete(c[0]), {}, "bad.toml");
    EXPECT_TRUE(contains(e, c[1]) && contains(e, "bad.toml")) << c[0] << " -> " << e;
  }
}

TEST(Recipe, RangeErrorsNameKey) {
  const char* cases[][2] = {
      {"[lora]\nrank = 0\n", "lora.rank"},
      {"[lora]\ndropout = 1.0\n", "lora.dropout"},
      {"[lora]\nalpha = -1\n", "lora.alpha"},
      {"[lora]\ntarget_modules = [\"qproj\"]\n", "qproj"},
      {"[lora]\ntarget_modules = []\n", "lora.target_modules"},
      {"[optim]\nlr = 0\n", "optim.lr"},
      {"[optim]\nlr = -1e-3\n", "optim.lr"},
      {"[optim]\nbeta2 = 1.0\n", "optim.beta2"},
      {"[optim]\nlr_schedule = \"cosin\"\n", "optim.lr_schedule"},
      {"[optim]\nname = \"sgd\"\n", "optim.name"},
      {"[optim]\nmin_lr_ratio = 2\n", "optim.min_lr_ratio"},
      {"[optim]\nwarmup_steps = -1\n", "optim.warmup_steps"},
      {"[quant]\ntype = \"int8\"\n", "quant.type"},
      {"[quant]\nblocksize = 48\n", "quant.blocksize"},
      {"[data]\nsynthetic = \"patterns\"\nseq_len = 1\n", "data.seq_len"},
      {"[data]\nsynthetic = \"random\"\n", "data.synthetic"},
      {"[train]\nmicro_batch = 0\n", "train.micro_batch"},
      {"[train]\ngrad_accum = 0\n", "train.grad_accum"},
      {"[train]\nsteps = 0\n", "train.steps"},
      {"[checkpoint]\nevery = -5\n", "checkpoint.every"},
  };
  for (auto& c : cases) {
    std::string e = error_of(complete(c[0]), {}, "bad.toml");
    EXPECT_TRUE(contains(e, c[1]) && contains(e, "bad.toml")) << c[0] << " -> " << e;
  }
  std::string e = error_of("[model]\npreset = \"huge\"\n[data]\nsynthetic = \"patterns\"\n");
  EXPECT_TRUE(contains(e, "model.preset") && contains(e, "huge")) << e;
  e = error_of("[data]\nsynthetic = \"patterns\"\n");
  EXPECT_TRUE(contains(e, "model.path")) << e;
  e = error_of("[model]\npreset = \"tiny\"\n");
  EXPECT_TRUE(contains(e, "data.path")) << e;
}

TEST(Recipe, SyntaxErrorAndMissingFile) {
  std::string e = error_of(std::string(kMinimal) + "[lora]\nrank = = 3\n", {}, "broken.toml");  // line 6
  EXPECT_TRUE(contains(e, "broken.toml:6") && contains(e, "syntax")) << e;
  try {
    Recipe::load("/nonexistent/dir/r.toml");
    FAIL() << "no error";
  } catch (const Error& ex) {
    EXPECT_TRUE(contains(ex.what(), "/nonexistent/dir/r.toml")) << ex.what();
  }
}

// Every key at a non-default value (awkward strings and floats included) survives
// to_toml -> from_string, compared field by field.
TEST(Recipe, RoundTripAllKeysNonDefault) {
  Recipe r = Recipe::from_string(
      kMinimal, "min.toml",
      {"model.path=models/we\"ird\\path ü", "model.preset=small", "model.init_seed=9223372036854775807",
       "quant.type=none", "quant.blocksize=128", "quant.double_quant=false", "lora.rank=7",
       "lora.alpha=0.1", "lora.dropout=0.05", "lora.rslora=true", "lora.target_modules=o_proj,k_proj",
       "optim.lr=3.3e-5", "optim.beta1=0.8", "optim.beta2=0.95", "optim.eps=1e-7", "optim.weight_decay=0.01",
       "optim.grad_clip=0", "optim.lr_schedule=linear", "optim.warmup_steps=11", "optim.min_lr_ratio=0.1",
       "data.path=d\tata.h5", "data.synthetic=", "data.seq_len=2", "data.pack=false", "data.shuffle=false",
       "train.steps=3", "train.micro_batch=5", "train.grad_accum=6", "train.seed=0",
       "train.activation_checkpointing=true", "train.log_every=4", "train.output_dir=out", "checkpoint.every=2",
       "checkpoint.keep=0"});
  EXPECT_EQ(r.model_path, "models/we\"ird\\path ü");
  EXPECT_EQ(r.model_init_seed, 9223372036854775807ull);
  EXPECT_EQ(r.lora.alpha, 0.1f);
  EXPECT_EQ(r.lora.target_modules, (std::vector<std::string>{"k_proj", "o_proj"}));
  EXPECT_EQ(r.data_synthetic, "");
  EXPECT_EQ(r.data_path, "d\tata.h5");
  const std::string text = r.to_toml();
  Recipe back = Recipe::from_string(text, "dump.toml");
  expect_same(r, back);
  EXPECT_EQ(back.to_toml().substr(back.to_toml().find('\n')), text.substr(text.find('\n')));  // stable dump
  // and a default recipe differs from it in every compared way the operator sees
  EXPECT_FALSE(r == Recipe::from_string(kMinimal, "min.toml"));
}

TEST(Recipe, SchemaHasHelpAndParsableDefaults) {
  std::vector<RecipeKeyInfo> keys = recipe_schema();
  EXPECT_GE(keys.size(), 30u);
  const std::string help = recipe_help();
  std::string text;
  std::string sec;
  for (const RecipeKeyInfo& k : keys) {
    EXPECT_FALSE(k.help.empty()) << k.name;
    EXPECT_TRUE(contains(help, k.name)) << k.name;
    const std::string s = k.name.substr(0, k.name.find('.'));
    if (s != sec) text += "[" + (sec = s) + "]\n";
    text += k.name.substr(k.name.find('.') + 1) + " = " + k.default_str + "\n";
  }
  // the defaults as TOML text, plus the two keys a valid recipe needs
  Recipe r = Recipe::from_string(text, "defaults.toml", {"model.preset=tiny", "data.synthetic=patterns"});
  Recipe d;
  d.model_preset = "tiny";
  d.data_synthetic = "patterns";
  expect_same(r, d);
}

TEST(Recipe, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0);
  EXPECT_EQ(edit_distance("rank", "rank"), 0);
  EXPECT_EQ(edit_distance("rnak", "rank"), 2);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
  EXPECT_EQ(edit_distance("", "abc"), 3);
  EXPECT_EQ(edit_distance("lerning_rate", "learning_rate"), 1);
}
