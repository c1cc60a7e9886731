// test_blockwise8.cpp: the 8-bit blockwise dynamic codec of galore.moments = "int8"
// (quant/blockwise8.h). Truths: bitsandbytes' maps (fm::dyn8_code, checked against bnb by
// test_nf4, and the fixture from scripts/gen_blockwise8_fixture.py), the linear-scan _ref for the
// fast path, the map's gaps for the round-trip error, and the input itself for idempotence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/shared_math.h"
#include "quant/blockwise8.h"
#include "src/io/safetensors.h"
#include "tests/test_util.h"

using namespace frugal;
using namespace frugal::quant;
using frugal::test_util::fixture_f32;

namespace {

constexpr size_t B = kBlockwise8Block;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Blocks of many kinds, for both maps (v-like blocks are made non-negative for the unsigned one):
// Gaussian, heavy-tailed (Cauchy), 10^U(-12, 0) magnitudes in one block, and adversarial blocks:
// all zeros, one huge value among tiny ones, a negative maximum, denormals only (flushed), an
// absmax just above the flush threshold, values exactly on map entries and on their midpoints.
std::vector<float> make_blocks(bool is_signed, size_t random_blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::cauchy_distribution<float> cd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  std::vector<float> x;
  auto push = [&](float v) { x.push_back(is_signed ? v : std::fabs(v)); };
  for (size_t b = 0; b < random_blocks; ++b)
    for (size_t i = 0; i < B; ++i) {
      const int kind = (int)(b % 3);
      const float sign = nd(rng) < 0 ? -1.f : 1.f;
      push(kind == 0 ? nd(rng) : kind == 1 ? cd(rng) : sign * std::pow(10.f, -12.f * ud(rng)));
    }
  const float* map = blockwise8_map(is_signed);
  for (size_t i = 0; i < B; ++i) push(0.f);                                     // zeros
  for (size_t i = 0; i < B; ++i) push(i == 100 ? 3e30f : 1e-20f * nd(rng));     // one huge value
  for (size_t i = 0; i < B; ++i) push(i == 5 ? -7.f : 6.f * ud(rng) - 3.f);      // negative max
  for (size_t i = 0; i < B; ++i) push(1e-40f * nd(rng));                         // denormals
  for (size_t i = 0; i < B; ++i) push(0x1.8p-100f * (i == 0 ? 1.f : ud(rng) - 0.5f));  // just above flush
  for (size_t i = 0; i < B; ++i) push(2.5f * map[i]);                            // map entries (absmax 2.5)
  for (size_t i = 0; i < B; ++i) push(i == 255 ? 1.f : 0.5f * (map[i] + map[i + 1]));  // midpoints
  return x;
}

}  // namespace

// Our create_dynamic_map is bnb's bit for bit: the signed one equals fm::dyn8_code (the table
// test_nf4 checks against bitsandbytes 0.50) and the fixture's; the unsigned one the fixture's.
// The signed map we use is bnb's with its entry nearest 0 on the negative side replaced by -1.
TEST(Blockwise8, MapsMatchBitsandbytes) {
  const std::vector<float> s = bnb_dynamic_map(true), u = bnb_dynamic_map(false);
  SafetensorsFile f(std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/blockwise8/blockwise8.safetensors");
  const std::vector<float> fs = fixture_f32(f, "map_signed"), fu = fixture_f32(f, "map_unsigned");
  ASSERT_EQ(fs.size(), 256u);
  ASSERT_EQ(fu.size(), 256u);
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(bits(s[i]), bits(fm::dyn8_code(i))) << "signed " << i;
    EXPECT_EQ(bits(s[i]), bits(fs[i])) << "signed " << i;
    EXPECT_EQ(bits(u[i]), bits(fu[i])) << "unsigned " << i;
    EXPECT_EQ(bits(blockwise8_map(false)[i]), bits(u[i])) << "unsigned " << i;
  }
  const float* m = blockwise8_map(true);
  EXPECT_EQ(m[0], -1.f);
  EXPECT_EQ(m[127], 0.f);
  EXPECT_EQ(m[255], 1.f);
  for (int i = 1; i < 256; ++i) EXPECT_LT(m[i - 1], m[i]) << i;
  for (int i = 0; i < 126; ++i) EXPECT_EQ(bits(m[i + 1]), bits(s[i])) << i;  // bnb's negatives but -5.5e-7
  for (int i = 127; i < 256; ++i) EXPECT_EQ(bits(m[i]), bits(s[i])) << i;
}

// Both ends of every bucket of the fast path's table (the floats whose top 16 bits are k) with
// |value| <= 1, in blocks that start with 1.0 (absmax 1, so the scaled value is the value itself).
std::vector<float> bucket_edges(bool is_signed) {
  std::vector<float> x;
  for (uint32_t k = 0; k <= 0x3f80u; ++k)
    for (uint32_t low : {0u, 0xffffu}) {
      const uint32_t u = (k << 16) | low;
      float f;
      std::memcpy(&f, &u, 4);
      if (!(f <= 1.f)) continue;
      for (float v : {f, -f}) {
        if (v < 0 && !is_signed) continue;
        if (x.size() % B == 0) x.push_back(1.f);
        x.push_back(v);
      }
    }
  while (x.size() % B != 0) x.push_back(0.f);
  return x;
}

// The fast path (bucketed binary search) gives the _ref's (linear scan) codes and absmax, bit for
// bit: on random and adversarial blocks and on both ends of every bucket.
TEST(Blockwise8, FastMatchesRef) {
  for (bool sg : {true, false}) {
    std::vector<float> x = bucket_edges(sg);
    const std::vector<float> more = make_blocks(sg, 300, sg ? 1 : 2);
    x.insert(x.end(), more.begin(), more.end());
    const size_t nb = x.size() / B;
    std::vector<uint8_t> c(x.size()), cr(x.size());
    std::vector<float> a(nb), ar(nb);
    quantize_blockwise8(x.data(), nb, sg, c.data(), a.data(), "x");
    quantize_blockwise8_ref(x.data(), nb, sg, cr.data(), ar.data(), "x");
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) bad += c[i] != cr[i];
    for (size_t b = 0; b < nb; ++b) bad += bits(a[b]) != bits(ar[b]);
    EXPECT_EQ(bad, 0u) << (sg ? "signed" : "unsigned");
    // the adversarial blocks (the last seven): zeros and denormals flush to absmax 0, code of 0.0
    const uint8_t zc = sg ? 127 : 0;
    for (size_t blk : {nb - 7, nb - 4}) {
      EXPECT_EQ(a[blk], 0.f);
      for (size_t i = 0; i < B; ++i) EXPECT_EQ(c[blk * B + i], zc);
    }
    EXPECT_EQ(a[nb - 6], 3e30f);
    EXPECT_EQ(c[(nb - 6) * B + 100], 255);
    if (sg) {
      EXPECT_EQ(c[(nb - 5) * B + 5], 0) << "the negative maximum must take the -1.0 code";
    }
    EXPECT_EQ(a[nb - 3], 0x1.8p-100f) << "just above the flush threshold: quantized";
    for (size_t i = 0; i < B; ++i) EXPECT_EQ(c[(nb - 2) * B + i], i) << "map entry " << i;
  }
}

// Round trip: |x - x'| <= absmax·gap/2 + 3·2^-24·absmax, where gap is the distance between the two
// map entries around x / absmax (the nearest entry is at most half of it away; the fp32 roundings
// of 1/absmax, of x·(1/absmax) and of the product map·absmax add at most 2^-24·absmax each).
// Flushed blocks: |x| < 2^-100.
TEST(Blockwise8, RoundTripErrorBound) {
  for (bool sg : {true, false}) {
    const std::vector<float> x = make_blocks(sg, 300, sg ? 3 : 4);
    const size_t nb = x.size() / B;
    std::vector<uint8_t> c(x.size());
    std::vector<float> a(nb), y(x.size());
    quantize_blockwise8(x.data(), nb, sg, c.data(), a.data(), "x");
    dequantize_blockwise8(c.data(), a.data(), nb, sg, y.data());
    const float* map = blockwise8_map(sg);
    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double am = a[i / B];
      if (am == 0) {
        bad += !(std::fabs(x[i]) < 0x1p-100 && y[i] == 0.f);
        continue;
      }
      const double s = x[i] / am;
      const int hi = (int)(std::upper_bound(map, map + 256, (float)s) - map);
      const double gap = hi == 0 || hi == 256 ? 0.0 : (double)map[hi] - map[hi - 1];
      const double err = std::fabs((double)x[i] - y[i]), bound = am * gap / 2 + 3 * 0x1p-24 * am;
      bad += !(err <= bound);
      worst = std::max(worst, err / am);
    }
    EXPECT_EQ(bad, 0u) << (sg ? "signed" : "unsigned");
    std::printf("%s map: worst |x - x'| / absmax = %.3g\n", sg ? "signed" : "unsigned", worst);
  }
}

// quantize(dequantize(codes, absmax)) == (codes, absmax) bit for bit: what makes a checkpoint of
// dequantized fp32 moments resume exactly.
TEST(Blockwise8, RequantizingTheDequantizedIsExact) {
  for (bool sg : {true, false}) {
    const std::vector<float> x = make_blocks(sg, 3000, sg ? 5 : 6);
    const size_t nb = x.size() / B;
    std::vector<uint8_t> c(x.size()), c2(x.size());
    std::vector<float> a(nb), a2(nb), y(x.size());
    quantize_blockwise8(x.data(), nb, sg, c.data(), a.data(), "x");
    dequantize_blockwise8(c.data(), a.data(), nb, sg, y.data());
    quantize_blockwise8(y.data(), nb, sg, c2.data(), a2.data(), "x'");
    EXPECT_EQ(0, std::memcmp(c.data(), c2.data(), c.size())) << (sg ? "signed" : "unsigned");
    EXPECT_EQ(0, std::memcmp(a.data(), a2.data(), a.size() * 4)) << (sg ? "signed" : "unsigned");
  }
}

// bitsandbytes 0.50's CPU quantize_blockwise (the fixture) does not pick the nearest entry of the
// scaled value s itself: it looks up the entry nearest to the grid point
// v = -1 + 2·trunc(fma((s + 1)/2, 65535, 0.5))/65535 in a 65536-entry table (csrc/cpu_ops.cpp;
// quant/nf4.cpp quantize_blockwise_dyn8 is the same for the signed map). So the exact check is:
// absmax equal, and bnb's code == our nearest code of v for every element (1024, the unsigned
// map); where the grid resolves s (s and v have the same nearest entry), bnb's code is ours.
TEST(Blockwise8, UnsignedCodesMatchBitsandbytes) {
  SafetensorsFile f(std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/blockwise8/blockwise8.safetensors");
  const std::vector<float> x = fixture_f32(f, "x"), bc = fixture_f32(f, "codes"), ba = fixture_f32(f, "absmax");
  const size_t nb = x.size() / B;
  ASSERT_EQ(ba.size(), nb);
  std::vector<uint8_t> c(x.size());
  std::vector<float> a(nb);
  quantize_blockwise8(x.data(), nb, false, c.data(), a.data(), "fixture x");
  size_t bad = 0, same_as_ours = 0, resolved = 0;
  for (size_t b = 0; b < nb; ++b) EXPECT_EQ(bits(a[b]), bits(ba[b])) << "absmax " << b;
  for (size_t i = 0; i < x.size(); ++i) {
    const float am = ba[i / B];
    const float s = am == 0.f ? 0.f : std::clamp(x[i] * (1.f / am), -1.f, 1.f);
    const int idx = (int)std::fma((s + 1.f) * 0.5f, 65535.f, 0.5f);
    const float v = -1.f + (2.f * (float)idx) / 65535.f;
    bad += blockwise8_nearest(v, false) != (uint8_t)bc[i];
    if (am > 0.f && blockwise8_nearest(v, false) == blockwise8_nearest(s, false)) {
      ++resolved;
      bad += c[i] != (uint8_t)bc[i];
    }
    same_as_ours += c[i] == (uint8_t)bc[i];
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(resolved, x.size() / 2) << "the fixture's grid resolved too few values for the check to mean much";
  std::printf("bnb CPU codes: %zu of %zu equal ours (%zu where its grid resolves the value)\n", same_as_ours,
              x.size(), resolved);
}

// The held range of a tensor: only the aligned blocks inside it are 8-bit, the ragged ends fp32.
TEST(Blockwise8, VectorKeepsRaggedEndsFp32) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t begin = 300, end = 5000;  // blocks [512, 4864): head 212, tail 136 fp32
  std::vector<float> in(end - begin), out(end - begin), blk(4864 - 512);
  for (float& e : in) e = nd(rng);
  Blockwise8Vector v;
  v.reset(begin, end, true, true);
  EXPECT_TRUE(v.has_blocks());
  v.set(in.data(), "t");
  v.get(out.data());
  for (size_t i = 0; i < 212; ++i) EXPECT_EQ(out[i], in[i]) << i;
  for (size_t i = 4864 - begin; i < end - begin; ++i) EXPECT_EQ(out[i], in[i]) << i;
  std::vector<uint8_t> c(blk.size());
  std::vector<float> a(blk.size() / B);
  quantize_blockwise8(in.data() + 212, a.size(), true, c.data(), a.data(), "t");
  dequantize_blockwise8(c.data(), a.data(), a.size(), true, blk.data());
  EXPECT_EQ(0, std::memcmp(blk.data(), out.data() + 212, blk.size() * 4));
  EXPECT_EQ(v.bytes(), (4864 - 512) + 17 * 4 + (212 + 136) * 4);
  EXPECT_EQ(Blockwise8Vector::bytes_for(begin, end, true), v.bytes());
  // no whole block inside, or not quantized: all fp32, exact
  EXPECT_EQ(Blockwise8Vector::bytes_for(10, 500, true), 490u * 4);
  EXPECT_EQ(Blockwise8Vector::bytes_for(begin, end, false), (end - begin) * 4);
  Blockwise8Vector w;
  w.reset(begin, end, false, false);
  EXPECT_FALSE(w.has_blocks());
  for (float& e : in) e = std::fabs(e);
  w.set(in.data(), "t");
  w.get(out.data());
  EXPECT_EQ(0, std::memcmp(in.data(), out.data(), in.size() * 4));
  EXPECT_EQ(0, std::memcmp(in.data(), w.fp32(), in.size() * 4));
}

TEST(Blockwise8, NonFiniteNamesTheTensor) {
  std::vector<float> x(2 * B, 1.f);
  x[B + 3] = std::nanf("");
  std::vector<uint8_t> c(x.size());
  std::vector<float> a(2);
  test_util::expect_error([&] { quantize_blockwise8(x.data(), 2, true, c.data(), a.data(), "layers.0.mlp m"); },
                          {"layers.0.mlp m", "element 259"});
}
