// test_checkpoint.cpp: HDF5 training checkpoints.
// Checks against: the exact bits that were saved (memcmp, including NaN payloads, -0, subnormals,
// inf); an uninterrupted AdamW run (continuing from a loaded optimizer state); files corrupted
// with the raw HDF5 API; a simulated crash that leaves a half-written "<path>.tmp".
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>

#include "src/model/checkpoint.h"
#include "src/common.h"
#include "tests/test_util.h"
#include "src/io/dataset.h"

using namespace frugal;
namespace fs = std::filesystem;

namespace {

test_util::ScratchDir scratch("ckpt");  // removed when the binary exits
std::string tmp_path(const std::string& name) { return scratch.path(name); }
using test_util::expect_error;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A set of trainable tensors with owned storage. Names deliberately not in alphabetical order
// (layers.10 before layers.2 alphabetically) to check that the list order is kept.
struct Params {
  std::vector<std::string> names = {
      "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight",
      "base_model.model.model.layers.10.mlp.down_proj.lora_A.weight",
      "base_model.model.model.layers.10.mlp.down_proj.lora_B.weight"};
  std::vector<std::vector<int64_t>> shapes = {{5, 59}, {111, 5}, {5, 37}, {59, 5}};
  std::vector<avector<float>> w, g;
  explicit Params(uint64_t seed, bool special = false) {
    uint64_t s = seed * 2654435761u + 1;
    for (auto& sh : shapes) {
      size_t n = size_t(sh[0] * sh[1]);
      avector<float> v(n), gg(n);
      for (size_t i = 0; i < n; ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = float(int64_t(s >> 33) % 2001 - 1000) / 997.f;
        gg[i] = float(int64_t(s >> 20) % 2001 - 1000) / 3001.f;
      }
      w.push_back(std::move(v));
      g.push_back(std::move(gg));
    }
    if (special) {  // values a lossy path would change
      w[0][0] = std::numeric_limits<float>::quiet_NaN();
      w[0][1] = from_bits(0x7fc12345u);  // NaN with a payload
      w[0][2] = -0.f;
      w[0][3] = std::numeric_limits<float>::denorm_min();
      w[0][4] = -std::numeric_limits<float>::infinity();
      w[0][5] = 1.f + std::numeric_limits<float>::epsilon();
    }
  }
  std::vector<ParamRef> refs() {
    std::vector<ParamRef> r;
    for (size_t i = 0; i < names.size(); ++i)
      r.push_back({names[i], shapes[i], w[i].data(), g[i].data(), w[i].size()});
    return r;
  }
};

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

const char* kRecipe =
    "[lora]\nrank = 5\nalpha = 10.0\ndropout = 0.05\nrslora = true\n"
    "target_modules = [\"down_proj\", \"q_proj\"]\n\n[train]\nsteps = 7\n";

TrainState make_state() {
  TrainState st;
  st.step = 41;
  st.adam_t = 41;
  st.seed = 0xfedcba9876543210ull;  // > 2^63: needs the unsigned attribute
  st.cursor = {3, 17, 9};
  st.tokens_seen = 123456789.5;
  st.recipe_toml = kRecipe;
  st.base_model = "/models/tiny";
  return st;
}

// An optimizer holding non-trivial moments for every param: one real AdamW step.
AdamW stepped_optimizer(Params& p) {
  AdamW opt(AdamWConfig{0.9f, 0.999f, 1e-8f, 0.01f});
  opt.step(p.refs(), 1e-3f);
  return opt;
}

}  // namespace

TEST(Checkpoint, RoundTripBitExact) {
  Params src(1, /*special=*/true);
  AdamW opt = stepped_optimizer(src);
  // step() turned the special values into NaN/inf updates; re-plant them after the step.
  Params special(1, true);
  std::memcpy(src.w[0].data(), special.w[0].data(), 6 * sizeof(float));
  opt.set_t(41);
  std::string p = tmp_path("roundtrip.h5");
  TrainState st = make_state();
  save_checkpoint(p, st, src.refs(), opt);
  EXPECT_TRUE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  Params dst(2);  // different values, overwritten by the load
  AdamW opt2(AdamWConfig{});
  TrainState r = load_checkpoint(p, dst.refs(), &opt2);
  for (size_t i = 0; i < src.names.size(); ++i) {
    SCOPED_TRACE(src.names[i]);
    EXPECT_TRUE(same_bits(dst.w[i].data(), src.w[i].data(), src.w[i].size()));
    ASSERT_EQ(opt2.m(src.names[i]).size(), src.w[i].size());
    EXPECT_TRUE(same_bits(opt2.m(src.names[i]).data(), opt.m(src.names[i]).data(), src.w[i].size()));
    EXPECT_TRUE(same_bits(opt2.v(src.names[i]).data(), opt.v(src.names[i]).data(), src.w[i].size()));
  }
  EXPECT_EQ(bits(dst.w[0][1]), 0x7fc12345u);
  EXPECT_EQ(opt2.t(), 41);
  EXPECT_EQ(r.step, 41);
  EXPECT_EQ(r.adam_t, 41);
  EXPECT_EQ(r.seed, 0xfedcba9876543210ull);
  EXPECT_EQ(r.cursor, (DataCursor{3, 17, 9}));
  EXPECT_EQ(r.tokens_seen, 123456789.5);
  EXPECT_EQ(r.recipe_toml, kRecipe);
  EXPECT_EQ(r.base_model, "/models/tiny");
  // [lora] of the recipe stored as attributes, targets expanded to the canonical order.
  ASSERT_TRUE(r.has_lora);
  EXPECT_EQ(r.lora.rank, 5);
  EXPECT_EQ(r.lora.alpha, 10.f);
  EXPECT_EQ(r.lora.dropout, 0.05f);
  EXPECT_TRUE(r.lora.rslora);
  EXPECT_EQ(r.lora.target_modules, (std::vector<std::string>{"q_proj", "down_proj"}));
}

TEST(Checkpoint, ReadParamsWithoutModelKeepsOrder) {
  Params src(3);
  AdamW opt = stepped_optimizer(src);
  std::string p = tmp_path("read_params.h5");
  TrainState st = make_state();
  st.recipe_toml = "";  // no recipe: no lora attributes
  save_checkpoint(p, st, src.refs(), opt);
  CheckpointContents c = read_checkpoint_params(p);
  EXPECT_EQ(c.names, src.names);
  EXPECT_EQ(c.shapes, src.shapes);
  ASSERT_EQ(c.data.size(), src.w.size());
  for (size_t i = 0; i < c.data.size(); ++i) {
    ASSERT_EQ(c.data[i].size(), src.w[i].size());
    EXPECT_TRUE(same_bits(c.data[i].data(), src.w[i].data(), src.w[i].size()));
  }
  EXPECT_EQ(c.state.step, 41);
  EXPECT_FALSE(c.state.has_lora);
}

TEST(Checkpoint, ResumedOptimizerContinuesExactly) {
  // Reference: two AdamW steps in one go. Resumed: one step, save, load into fresh objects, one step.
  Params ref(4), a(4);
  AdamW o_ref(AdamWConfig{0.9f, 0.95f, 1e-6f, 0.1f});
  o_ref.step(ref.refs(), 3e-3f);
  o_ref.step(ref.refs(), 2e-3f);

  AdamW o_a(AdamWConfig{0.9f, 0.95f, 1e-6f, 0.1f});
  o_a.step(a.refs(), 3e-3f);
  std::string p = tmp_path("resume.h5");
  TrainState st = make_state();
  st.adam_t = o_a.t();
  save_checkpoint(p, st, a.refs(), o_a);
  Params b(99);  // garbage weights; grads are the same as ref's (seed 4 below)
  Params grads(4);
  for (size_t i = 0; i < b.g.size(); ++i) b.g[i] = grads.g[i];
  AdamW o_b(AdamWConfig{0.9f, 0.95f, 1e-6f, 0.1f});
  load_checkpoint(p, b.refs(), &o_b);
  EXPECT_EQ(o_b.t(), 1);
  o_b.step(b.refs(), 2e-3f);
  for (size_t i = 0; i < ref.w.size(); ++i)
    EXPECT_TRUE(same_bits(b.w[i].data(), ref.w[i].data(), ref.w[i].size())) << ref.names[i];
}

TEST(Checkpoint, UnsteppedOptimizerSavesZeroMoments) {
  Params src(5);
  AdamW fresh(AdamWConfig{});
  std::string p = tmp_path("fresh.h5");
  save_checkpoint(p, make_state(), src.refs(), fresh);
  Params dst(6);
  AdamW o(AdamWConfig{});
  load_checkpoint(p, dst.refs(), &o);
  for (size_t i = 0; i < src.names.size(); ++i) {
    ASSERT_EQ(o.m(src.names[i]).size(), src.w[i].size());
    for (float x : o.m(src.names[i])) ASSERT_EQ(bits(x), 0u);
    for (float x : o.v(src.names[i])) ASSERT_EQ(bits(x), 0u);
  }
}

TEST(Checkpoint, MissingExtraAndMismatchedTensors) {
  Params src(7);
  AdamW opt = stepped_optimizer(src);
  std::string p = tmp_path("mismatch.h5");
  save_checkpoint(p, make_state(), src.refs(), opt);

  // Model has a tensor the checkpoint lacks.
  {
    Params dst(8);
    std::vector<ParamRef> refs = dst.refs();
    avector<float> extra(4 * 3);
    refs.push_back({"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", {4, 3}, extra.data(), nullptr, 12});
    avector<float> before = dst.w[0];
    expect_error([&] { load_checkpoint(p, refs, nullptr); }, {p, "missing tensor", "layers.0.self_attn.v_proj.lora_A"});
    EXPECT_TRUE(same_bits(dst.w[0].data(), before.data(), before.size()));  // nothing overwritten
  }
  // Checkpoint has a tensor the model lacks.
  {
    Params dst(8);
    std::vector<ParamRef> refs = dst.refs();
    refs.pop_back();
    expect_error([&] { load_checkpoint(p, refs, nullptr); }, {p, "unexpected tensor", "layers.10.mlp.down_proj.lora_B"});
  }
  // Shape mismatch (rank 5 saved, model built with rank 4).
  {
    Params dst(8);
    std::vector<ParamRef> refs = dst.refs();
    refs[1].shape = {111, 4};
    refs[1].numel = 444;
    avector<float> before = dst.w[0];
    AdamW o(AdamWConfig{});
    expect_error([&] { load_checkpoint(p, refs, &o); }, {p, "layers.2.self_attn.q_proj.lora_B", "[111, 5]", "[111, 4]"});
    EXPECT_TRUE(same_bits(dst.w[0].data(), before.data(), before.size()));
  }
}

TEST(Checkpoint, WrongDtypeAndFormat) {
  Params src(9);
  AdamW opt = stepped_optimizer(src);
  std::string p = tmp_path("dtype.h5");
  save_checkpoint(p, make_state(), src.refs(), opt);
  // Replace one moment tensor with float64 data of the same shape, with the raw API.
  const std::string ds = "/optim/v/" + src.names[2];
  {
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, ds.c_str(), H5P_DEFAULT), 0);
    hsize_t dims[2] = {5, 37};
    std::vector<double> d(5 * 37, 0.5);
    hid_t sp = H5Screate_simple(2, dims, nullptr);
    hid_t dset = H5Dcreate2(f, ds.c_str(), H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.data()), 0);
    H5Dclose(dset);
    H5Sclose(sp);
    H5Fclose(f);
  }
  Params dst(10);
  AdamW o(AdamWConfig{});
  expect_error([&] { load_checkpoint(p, dst.refs(), &o); }, {p, ds, "wrong dtype float64"});
  // Without an optimizer the moments are not read: the params load fine.
  load_checkpoint(p, dst.refs(), nullptr);
  EXPECT_TRUE(same_bits(dst.w[2].data(), src.w[2].data(), src.w[2].size()));

  // A token dataset is an HDF5 file but not a checkpoint.
  std::string data = tmp_path("not_a_ckpt.h5");
  make_synthetic_patterns(16, 3, 8, 1).save(data);
  expect_error([&] { load_checkpoint(data, dst.refs(), nullptr); }, {data, "not a frugal checkpoint"});
  expect_error([&] { read_checkpoint_params(data); }, {data, "not a frugal checkpoint"});
}

TEST(Checkpoint, CrashMidWriteKeepsPreviousCheckpoint) {
  Params v1(11), v2(12);
  AdamW o1 = stepped_optimizer(v1), o2 = stepped_optimizer(v2);
  std::string p = tmp_path("crash.h5");
  TrainState s1 = make_state(), s2 = make_state();
  s2.step = 42;
  save_checkpoint(p, s1, v1.refs(), o1);

  // Crash while writing the next one: the temp file exists, half written, never renamed.
  write_checkpoint_file(p + ".tmp", s2, v2.refs(), o2);
  fs::resize_file(p + ".tmp", fs::file_size(p + ".tmp") / 2);
  expect_error([&] { read_checkpoint_params(p + ".tmp"); }, {p + ".tmp"});

  Params dst(13);
  AdamW o(AdamWConfig{});
  TrainState r = load_checkpoint(p, dst.refs(), &o);
  EXPECT_EQ(r.step, 41);
  for (size_t i = 0; i < v1.w.size(); ++i) EXPECT_TRUE(same_bits(dst.w[i].data(), v1.w[i].data(), v1.w[i].size()));

  // The next save replaces the stale temp file and the checkpoint.
  save_checkpoint(p, s2, v2.refs(), o2);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  r = load_checkpoint(p, dst.refs(), &o);
  EXPECT_EQ(r.step, 42);
  for (size_t i = 0; i < v2.w.size(); ++i) EXPECT_TRUE(same_bits(dst.w[i].data(), v2.w[i].data(), v2.w[i].size()));
}

TEST(Checkpoint, RejectsBadInputsOnSave) {
  Params src(14);
  AdamW opt(AdamWConfig{});
  std::string p = tmp_path("bad_save.h5");
  std::vector<ParamRef> refs = src.refs();
  refs[1].name = refs[0].name;
  expect_error([&] { save_checkpoint(p, make_state(), refs, opt); }, {"duplicate parameter name"});
  refs = src.refs();
  refs[0].name = "a/b";
  expect_error([&] { save_checkpoint(p, make_state(), refs, opt); }, {"'a/b'"});
  TrainState st = make_state();
  st.recipe_toml = "[lora\nrank = ";
  expect_error([&] { save_checkpoint(p, st, src.refs(), opt); }, {"'recipe'", "TOML"});
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}
