// test_shard_load.cpp: sharded loading (sharding/shard_load.h), single process.
// W ranks are simulated with W threads whose all_gather meets at a std::barrier; the ranks'
// shards, concatenated, must equal BYTE FOR BYTE the unit buffers packed from the whole-model
// loader (LlamaModel::load + pack_unit_frozen, i.e. quant::nf4_quantize of each whole bf16
// tensor). Also checked against quant::nf4_quantize directly, on a hand-built layout of odd-sized
// tensors.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>

#include "quant/nf4.h"
#include "sharding/shard_load.h"
#include "src/model/init.h"
#include "src/io/safetensors.h"
#include "tests/shard_load_util.h"
#include "tests/test_util.h"

using namespace frugal;
using test_util::nf4_opts;
using test_util::shard_load_odd_config;

namespace {

test_util::ScratchDir& scratch() {
  static test_util::ScratchDir d("shard_load");
  return d;
}

// Runs load_frozen_shards for ranks 0..W-1 on W threads; all_gather = a barrier-synchronized
// exchange through shared memory (what an MPI all_gather delivers).
std::vector<std::vector<avector<uint8_t>>> load_simulated(const std::string& dir, const ModelLayout& L,
                                                          int64_t scratch_elems = kShardLoadScratchElems,
                                                          int* gathers = nullptr) {
  const int W = L.world;
  std::vector<std::vector<avector<uint8_t>>> out(W);
  std::vector<std::span<const float>> parts(W);
  std::barrier sync(W);
  std::vector<int> calls(W, 0);
  std::vector<std::string> errors(W);
  std::vector<std::thread> th;
  for (int r = 0; r < W; ++r)
    th.emplace_back([&, r] {
      auto gather = [&](std::span<const float> mine, std::span<float> all) {
        calls[r]++;
        parts[r] = mine;
        sync.arrive_and_wait();  // every rank's part published
        for (int q = 0; q < W; ++q) {
          if (parts[q].size() * W != all.size()) errors[r] = "all_gather: part sizes differ between ranks";
          std::copy(parts[q].begin(), parts[q].begin() + std::min(parts[q].size(), all.size() / W),
                    all.begin() + q * (all.size() / W));
        }
        sync.arrive_and_wait();  // everyone has read the parts
      };
      try {
        out[r] = load_frozen_shards(dir, L, r, gather, scratch_elems);
      } catch (const std::exception& e) {
        errors[r] = e.what();
        sync.arrive_and_drop();  // do not leave the others waiting (only the error matters then)
      }
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < W; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  for (int r = 1; r < W; ++r) EXPECT_EQ(calls[r], calls[0]) << "ranks made different numbers of all_gathers";
  if (gathers) *gathers = calls[0];
  return out;
}

// Compares the concatenated shards with the packed units of LlamaModel::load. Returns the number
// of differing bytes (reports the first few).
size_t compare_with_reference(const std::string& dir, const ModelLayout& L,
                              const std::vector<std::vector<avector<uint8_t>>>& shards) {
  LlamaModel m = LlamaModel::load(dir, L.opt);
  size_t bad = 0;
  for (size_t u = 0; u < L.units.size(); ++u) {
    const UnitLayout& U = L.units[u];
    avector<uint8_t> ref(U.frozen_padded);
    pack_unit_frozen(m, U, ref.data());
    for (int r = 0; r < L.world; ++r) {
      if (shards[r].size() != L.units.size() || shards[r][u].size() != U.frozen_shard) {
        ADD_FAILURE() << "rank " << r << " unit " << U.name << ": wrong shard size";
        return 1;
      }
      for (size_t i = 0; i < U.frozen_shard; ++i) {
        const size_t at = (size_t)r * U.frozen_shard + i;
        if (shards[r][u][i] != ref[at] && bad++ < 5) {
          std::string what = "padding";
          for (const auto& e : U.frozen)
            if (at >= e.offset && at < e.offset + e.bytes) what = e.tensor + " " + frozen_part_name(e.part);
          ADD_FAILURE() << "W " << L.world << " rank " << r << " unit " << U.name << " byte " << at << " ("
                        << what << "): " << (int)shards[r][u][i] << " vs " << (int)ref[at];
        }
      }
    }
  }
  return bad;
}

const std::string& tiny_dir() {
  static const std::string dir = [] {
    const std::string d = scratch().path("tiny");
    init_model(LlamaConfig::preset("tiny"), d, 7);
    return d;
  }();
  return dir;
}

uint16_t f16_bits(float f) {
  _Float16 h = (_Float16)f;
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

// A model of shard_load_odd_config's odd shapes (tests/shard_load_util.h): source dtypes mixed
// (F32, BF16, F16); rows of very different magnitude (block absmax spread), one all-zero row
// range; several safetensors files with an index.
std::string write_odd_model(const std::string& name, bool tied) {
  const LlamaConfig cfg = shard_load_odd_config(tied);
  const std::string dir = scratch().path(name);
  std::vector<std::vector<uint8_t>> keep;
  SafetensorsWriter w;
  int k = 0;
  for (const TensorSpec& s : llama_tensor_specs(cfg)) {
    const int64_t n = s.numel();
    std::vector<float> v(n);
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1);
    for (int64_t i = 0; i < n; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      const float u = (float)((x >> 40) & 0xffffff) / 16777216.f - 0.5f;
      const int64_t row = i / s.shape.back();
      const float scale = s.is_norm ? 1.f : std::ldexp(1.f, (int)(row % 7) - 3);  // 1/8 .. 8
      v[i] = s.is_norm ? 1.f + 0.25f * u : (row % 11 == 5 ? 0.f : scale * u);
    }
    const int kind = k % 3;  // 0 F32, 1 BF16, 2 F16
    std::vector<uint8_t> bytes;
    DType dt;
    if (kind == 0) {
      dt = DType::F32;
      bytes.resize(n * 4);
      std::memcpy(bytes.data(), v.data(), n * 4);
    } else {
      dt = kind == 1 ? DType::BF16 : DType::F16;
      bytes.resize(n * 2);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = kind == 1 ? fm::float_to_bf16_bits(v[i]) : f16_bits(v[i]);
        std::memcpy(bytes.data() + 2 * i, &b, 2);
      }
    }
    keep.push_back(std::move(bytes));
    w.add(s.name, dt, s.shape, keep.back().data(), keep.back().size());
    ++k;
  }
  write_sharded(dir, w, 40000);  // several files + model.safetensors.index.json
  std::ofstream(dir + "/config.json") << cfg.to_json().dump(2);
  return dir;
}

const std::string& odd_dir() {
  static const std::string d = write_odd_model("odd", false);
  return d;
}

struct Case {
  ModelOptions opt;
  const char* what;
};
std::vector<Case> all_cases() {
  return {{nf4_opts(64, true), "nf4 bs64 dq"},
          {nf4_opts(64, false), "nf4 bs64 no-dq"},
          {nf4_opts(4096, true), "nf4 bs4096 dq"},
          {nf4_opts(4096, false), "nf4 bs4096 no-dq"},
          {ModelOptions{}, "bf16"}};
}

}  // namespace

TEST(ShardLoad, TinyPresetMatchesWholeModelLoader) {
  // W = 1 against LlamaModel::load + pack_unit_frozen, then W = 2, 3, 4.
  for (const Case& c : all_cases()) {
    for (int W : {1, 2, 3, 4}) {
      SCOPED_TRACE(std::string(c.what) + " W " + std::to_string(W));
      const ModelLayout L = make_model_layout(LlamaConfig::preset("tiny"), c.opt, nullptr, W);
      int gathers = 0;
      const auto shards = load_simulated(tiny_dir(), L, kShardLoadScratchElems, &gathers);
      EXPECT_EQ(compare_with_reference(tiny_dir(), L, shards), 0u);
      // one all_gather per NF4 tensor (7 per layer), none for bf16
      EXPECT_EQ(gathers, c.opt.quant == QuantMode::NF4 ? 7 * 2 : 0);
    }
  }
}

TEST(ShardLoad, OddShapesMixedDtypesShardedFilesMatchWholeModelLoader) {
  for (const Case& c : all_cases()) {
    for (int W : {1, 2, 3, 4}) {
      SCOPED_TRACE(std::string(c.what) + " W " + std::to_string(W));
      const ModelLayout L = make_model_layout(shard_load_odd_config(false), c.opt, nullptr, W);
      // a tiny scratch (37 elements -> one NF4 block per slice) exercises the slicing
      const auto shards = load_simulated(odd_dir(), L, 37);
      EXPECT_EQ(compare_with_reference(odd_dir(), L, shards), 0u);
    }
  }
}

TEST(ShardLoad, TiedEmbeddingsHaveNoLmHeadEntry) {
  const std::string dir = write_odd_model("odd_tied", true);
  for (int W : {1, 3}) {
    const ModelLayout L = make_model_layout(shard_load_odd_config(true), nf4_opts(64, true), nullptr, W);
    EXPECT_EQ(L.units.back().find("lm_head.weight", FrozenPart::BF16), nullptr);
    const auto shards = load_simulated(dir, L, 1000);
    EXPECT_EQ(compare_with_reference(dir, L, shards), 0u);
  }
}

// The per-tensor pieces on a hand-built unit: NF4 tensors of odd numel (791 = 7·113: 13 blocks
// of 64, the last partial and odd; 37037 = 37·1001: 579 blocks of 64 -> 3 nested blocks, or 10
// of 4096), against quant::nf4_quantize of the whole tensor, for W = 1..5 and both blocksizes.
TEST(ShardLoad, PerTensorPiecesMatchNf4Quantize) {
  for (int bs : {64, 4096})
    for (bool dq : {true, false})
      for (std::vector<int64_t> shape : {std::vector<int64_t>{7, 113}, std::vector<int64_t>{37, 1001}})
        for (int W = 1; W <= 5; ++W) {
          SCOPED_TRACE("bs " + std::to_string(bs) + (dq ? " dq" : " no-dq") + " numel " +
                       std::to_string(shape[0] * shape[1]) + " W " + std::to_string(W));
          const int64_t n = shape[0] * shape[1], nb = (n + bs - 1) / bs;
          avector<float> x(n);
          for (int64_t i = 0; i < n; ++i) x[i] = std::sin(0.37f * (float)i) * (float)(1 + (i / bs) % 5);
          // the file holds fp32; the loader quantizes its bf16 rounding, as LlamaModel::load
          avector<bf16> xb(n);
          for (int64_t i = 0; i < n; ++i) xb[i].bits = fm::float_to_bf16_bits(x[i]);
          const quant::NF4Tensor ref = quant::nf4_quantize(xb.data(), shape, bs, dq);

          ModelLayout L;
          L.opt = nf4_opts(bs, dq);
          L.world = W;
          L.align = std::max<size_t>(64, bs / 2);
          UnitLayout u;
          auto add = [&](FrozenPart p, size_t bytes) {
            const size_t off = (u.frozen_bytes + L.align - 1) / L.align * L.align;
            u.frozen.push_back({"t", p, shape, off, bytes});
            u.frozen_bytes = off + bytes;
          };
          add(FrozenPart::NF4Codes, (n + 1) / 2);
          if (dq) {
            add(FrozenPart::NF4AbsmaxQ, nb);
            add(FrozenPart::NF4Nested, (nb + 255) / 256 * 4);
            add(FrozenPart::NF4Offset, 4);
          } else {
            add(FrozenPart::NF4Absmax, nb * 4);
          }
          u.frozen_padded = (u.frozen_bytes + W * L.align - 1) / (W * L.align) * (W * L.align);
          u.frozen_shard = u.frozen_padded / W;

          // from a real file: the loader drops the pages it read (madvise), which only a file
          // mapping survives
          SafetensorsWriter w;
          w.add("t", DType::F32, shape, x.data(), (size_t)n * 4);
          const std::string path = scratch().path("t.safetensors");
          w.write(path);
          SafetensorsFile file(path);
          const TensorView& t = *file.find("t");
          // phase 1 on every rank, then the "all_gather", then phase 2
          avector<uint8_t> whole(u.frozen_padded, 0xAB);
          avector<float> absmax(nb, NAN);
          for (int r = 0; r < W; ++r) {
            const auto [lo, hi] = shard_range(u.frozen_padded, W, r);
            std::fill(whole.begin() + lo, whole.begin() + hi, 0);
            avector<float> mine = shard_tensor_local(t, u, L, lo, hi, whole.data() + lo, 100);
            const auto [b0, b1] = nf4_owned_blocks(u.frozen[0], bs, lo, hi);
            ASSERT_EQ((int64_t)mine.size(), b1 - b0);
            std::copy(mine.begin(), mine.end(), absmax.begin() + b0);
          }
          for (int r = 0; r < W; ++r) {
            const auto [lo, hi] = shard_range(u.frozen_padded, W, r);
            shard_nf4_stats(u, L, "t", absmax.data(), nb, lo, hi, whole.data() + lo);
          }
          avector<uint8_t> expect(u.frozen_padded, 0);
          std::memcpy(expect.data() + u.frozen[0].offset, ref.packed.data(), ref.packed.size());
          if (dq) {
            std::memcpy(expect.data() + u.frozen[1].offset, ref.absmax_q.data(), ref.absmax_q.size());
            std::memcpy(expect.data() + u.frozen[2].offset, ref.nested_absmax.data(), ref.nested_absmax.size() * 4);
            std::memcpy(expect.data() + u.frozen[3].offset, &ref.offset, 4);
          } else {
            std::memcpy(expect.data() + u.frozen[1].offset, ref.absmax.data(), ref.absmax.size() * 4);
          }
          size_t bad = 0;
          for (size_t i = 0; i < expect.size(); ++i) bad += whole[i] != expect[i];
          EXPECT_EQ(bad, 0u);
        }
}

TEST(ShardLoad, MissingTensorAndWrongShapeNameTensorAndFile) {
  const LlamaConfig cfg = shard_load_odd_config(false);
  // wrong shape: load the odd model with a layout whose ffn is 331 wide
  LlamaConfig wrong = cfg;
  wrong.intermediate_size = 331;
  const ModelLayout Lw = make_model_layout(wrong, nf4_opts(64, true), nullptr, 2);
  auto noop = [](std::span<const float>, std::span<float>) { FAIL() << "no collective expected"; };
  test_util::expect_error([&] { load_frozen_shards(odd_dir(), Lw, 1, noop); },
                          {"model.layers.0.mlp.gate_proj.weight", ".safetensors", "[333, 59]"});
  // missing tensor: a model dir without lm_head.weight (written tied, read untied)
  const std::string tied = write_odd_model("odd_tied_missing", true);
  const ModelLayout Lm = make_model_layout(cfg, nf4_opts(64, true), nullptr, 2);
  test_util::expect_error([&] { load_frozen_shards(tied, Lm, 0, noop); }, {"missing tensor lm_head.weight", tied});
  // rank outside the world
  test_util::expect_error([&] { load_frozen_shards(odd_dir(), Lm, 2, noop); }, {"rank 2 of 2"});
}

TEST(ShardLoad, PackUnitFrozenRejectsAModelOfOtherOptions) {
  // a bf16 model packed into an NF4 layout (and the reverse) must fail, naming the tensor
  LlamaModel m = LlamaModel::load(tiny_dir(), ModelOptions{});
  const ModelLayout L = make_model_layout(LlamaConfig::preset("tiny"), nf4_opts(64, true), nullptr, 1);
  avector<uint8_t> buf(L.units[1].frozen_padded);
  test_util::expect_error([&] { pack_unit_frozen(m, L.units[1], buf.data()); },
                          {"model.layers.0.self_attn.q_proj.weight", "not NF4"});
  LlamaModel q = LlamaModel::load(tiny_dir(), nf4_opts(64, false));
  test_util::expect_error([&] { pack_unit_frozen(q, L.units[1], buf.data()); },
                          {"model.layers.0.self_attn.q_proj.weight", "not double-quantized"});
}
