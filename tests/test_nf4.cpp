// test_nf4.cpp: NF4 quantization against bitsandbytes' own outputs (golden fixture written by
// scripts/gen_nf4_fixture.py with bitsandbytes 0.50 / torch, tests/fixtures/nf4/), the fast bf16
// dequantization against the scalar reference, and round-trip error statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "quant/nf4.h"

using namespace frugal;
using namespace frugal::quant;
using json = nlohmann::json;

namespace {

const std::string kDir = std::string(FRUGAL_SOURCE_DIR) + "/tests/fixtures/nf4/";

json load_index() {
  std::ifstream f(kDir + "index.json");
  if (!f) throw Error("cannot open " + kDir + "index.json");
  return json::parse(f);
}

template <class T>
std::vector<T> load_bin(const std::string& name, size_t expect_count) {
  std::ifstream f(kDir + name, std::ios::binary | std::ios::ate);
  if (!f) throw Error("cannot open fixture " + kDir + name);
  size_t bytes = (size_t)f.tellg();
  if (bytes != expect_count * sizeof(T))
    throw Error(str("fixture ", name, ": ", bytes, " bytes, expected ", expect_count * sizeof(T)));
  std::vector<T> v(expect_count);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), (std::streamsize)bytes);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Number of positions where two arrays differ bitwise.
template <class A, class B>
size_t count_diff(const A& a, const B& b, size_t n) {
  size_t d = 0;
  for (size_t i = 0; i < n; ++i) d += std::memcmp(&a[i], &b[i], sizeof(a[i])) != 0;
  return d;
}

NF4Tensor quantize_case(const json& c, std::vector<float>& x_f32) {
  std::vector<int64_t> shape = c["shape"].get<std::vector<int64_t>>();
  int64_t n = 1;
  for (auto d : shape) n *= d;
  int bs = c["blocksize"];
  bool dq = c["double_quant"];
  if (c["input_dtype"] == "bf16") {
    auto raw = load_bin<uint16_t>(c["input"], n);
    std::vector<bf16> x(n);
    x_f32.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i].bits = raw[i];
      x_f32[i] = x[i].to_float();
    }
    return nf4_quantize(x.data(), shape, bs, dq);
  }
  x_f32 = load_bin<float>(c["input"], n);
  return nf4_quantize(x_f32.data(), shape, bs, dq);
}

}  // namespace

// The code book, its midpoints and the dynamic map equal bitsandbytes' (bit patterns).
TEST(NF4, TablesMatchBitsandbytes) {
  json idx = load_index();
  auto nf4 = idx["maps"]["nf4_bits"].get<std::vector<uint32_t>>();
  auto dyn = idx["maps"]["dyn8_bits"].get<std::vector<uint32_t>>();
  ASSERT_EQ(nf4.size(), 16u);
  ASSERT_EQ(dyn.size(), 256u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bits(fm::nf4_code(i)), nf4[i]) << "nf4 code " << i;
  for (int i = 0; i < 256; ++i) EXPECT_EQ(bits(fm::dyn8_code(i)), dyn[i]) << "dyn8 code " << i;
  for (int i = 0; i < 15; ++i) {
    float mid = (fm::nf4_code(i) + fm::nf4_code(i + 1)) / 2;  // torch: (code[:-1]+code[1:])/2
    EXPECT_EQ(bits(fm::nf4_midpoint(i)), bits(mid)) << "midpoint " << i;
  }
}

// nf4_nearest (decision tree) == count of midpoints strictly below x (torch.bucketize), and the
// chosen code is a nearest one (checked in fp64; on a tie the lower code).
TEST(NF4, NearestCodeIsBucketizeAndNearest) {
  std::mt19937 g(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> xs;
  for (int i = 0; i < 200003; ++i) xs.push_back(u(g));
  for (int i = 0; i < 15; ++i) {
    float m = fm::nf4_midpoint(i);
    xs.push_back(m);
    xs.push_back(std::nextafter(m, 2.f));
    xs.push_back(std::nextafter(m, -2.f));
  }
  for (int i = 0; i < 16; ++i) xs.push_back(fm::nf4_code(i));
  size_t bad = 0, not_nearest = 0;
  for (float x : xs) {
    int cnt = 0;
    for (int i = 0; i < 15; ++i) cnt += fm::nf4_midpoint(i) < x;
    int c = fm::nf4_nearest(x);
    bad += c != cnt;
    double dc = std::fabs((double)x - fm::nf4_code(c));
    for (int j = 0; j < 16; ++j) not_nearest += std::fabs((double)x - fm::nf4_code(j)) < dc - 1e-7;
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(not_nearest, 0u);
}

// Packing: two codes per byte, the LOWER flat index in the HIGH nibble; odd numel pads with code 7.
TEST(NF4, PackingLowerIndexInHighNibble) {
  const float x[5] = {1.f, -1.f, 0.f, 0.5626170039176941f, -0.6961928009986877f};
  NF4Tensor q = nf4_quantize(x, {5}, 64, false);
  ASSERT_EQ(q.packed.size(), 3u);
  EXPECT_EQ(q.packed[0], 0xF0);  // codes 15, 0
  EXPECT_EQ(q.packed[1], 0x7D);  // codes 7, 13
  EXPECT_EQ(q.packed[2], 0x17);  // code 1, pad 7
  EXPECT_EQ(q.absmax[0], 1.f);
}

// torch.mean (fp32, one thread) reproduced bit for bit; the sequence is rebuilt exactly here.
TEST(NF4, TorchMeanBitExact) {
  json idx = load_index();
  for (const auto& m : idx["means"]) {
    int64_t n = m["n"];
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = (float)((i * 7919) % 10007) / 10007.0f + 1.0f;
    EXPECT_EQ(bits(torch_mean_f32(x.data(), n)), m["mean_bits"].get<uint32_t>()) << "n=" << n;
  }
}

// The nested-absmax quantizer equals bitsandbytes' CPU quantize_blockwise (codes and absmax).
TEST(NF4, Dyn8BlockwiseMatchesBitsandbytes) {
  json idx = load_index();
  for (const auto& d : idx["dyn8"]) {
    int64_t n = d["n"];
    int bs = d["blocksize"];
    int64_t nb = (n + bs - 1) / bs;
    auto x = load_bin<float>(d["input"], n);
    auto codes = load_bin<uint8_t>(d["codes"], n);
    auto absmax = load_bin<float>(d["absmax"], nb);
    std::vector<uint8_t> oc(n);
    std::vector<float> oa(nb);
    quantize_blockwise_dyn8(x.data(), n, bs, oc.data(), oa.data());
    EXPECT_EQ(count_diff(oc, codes, n), 0u);
    EXPECT_EQ(count_diff(oa, absmax, nb), 0u);
  }
}

// Every 4-bit case: our quantization is bit-identical to bitsandbytes' (packed codes, absmax or
// absmax codes + nested absmax + offset), the dequantized absmax and the dequantized tensor are
// bit-identical too (fp32 via _ref; bf16 via the fast path and via the rounding of _ref).
TEST(NF4, QuantizeDequantizeMatchBitsandbytes) {
  json idx = load_index();
  ASSERT_GE(idx["cases"].size(), 8u);
  for (const auto& c : idx["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<float> x;
    NF4Tensor q = quantize_case(c, x);
    const int64_t n = q.numel, nb = q.nblocks();
    auto packed = load_bin<uint8_t>(c["packed"], (n + 1) / 2);
    EXPECT_EQ(count_diff(q.packed, packed, packed.size()), 0u);

    NF4Tensor ref;  // bitsandbytes' own quantization state, to test dequantization separately
    ref.shape = q.shape;
    ref.numel = n;
    ref.blocksize = q.blocksize;
    ref.double_quant = q.double_quant;
    ref.packed.assign(packed.begin(), packed.end());
    std::vector<float> am_bnb;
    if (q.double_quant) {
      auto aq = load_bin<uint8_t>(c["absmax_q"], nb);
      auto nested = load_bin<float>(c["nested_absmax"], (nb + 255) / 256);
      uint32_t off = c["offset_bits"];
      EXPECT_EQ(count_diff(q.absmax_q, aq, nb), 0u);
      ASSERT_EQ(q.nested_absmax.size(), nested.size());
      EXPECT_EQ(count_diff(q.nested_absmax, nested, nested.size()), 0u);
      EXPECT_EQ(bits(q.offset), off);
      ref.absmax_q.assign(aq.begin(), aq.end());
      ref.nested_absmax.assign(nested.begin(), nested.end());
      std::memcpy(&ref.offset, &off, 4);
      am_bnb = load_bin<float>(c["absmax_deq"], nb);
    } else {
      am_bnb = load_bin<float>(c["absmax"], nb);
      EXPECT_EQ(count_diff(q.absmax, am_bnb, nb), 0u);
      ref.absmax.assign(am_bnb.begin(), am_bnb.end());
    }
    std::vector<float> am(nb);
    nf4_absmax_f32(ref, am.data());
    EXPECT_EQ(count_diff(am, am_bnb, nb), 0u);

    std::vector<float> deq(n);
    nf4_dequantize_ref(ref, deq.data());
    std::vector<bf16> fast(n);
    nf4_dequantize_bf16(ref, 0, n, fast.data());
    size_t fast_vs_ref = 0;
    for (int64_t i = 0; i < n; ++i) fast_vs_ref += fast[i].bits != fm::float_to_bf16_bits(deq[i]);
    EXPECT_EQ(fast_vs_ref, 0u);
    if (c["dequant_dtype"] == "f32") {
      auto out = load_bin<float>(c["dequant"], n);
      EXPECT_EQ(count_diff(deq, out, n), 0u);
    } else {
      auto out = load_bin<uint16_t>(c["dequant"], n);
      size_t d = 0;
      for (int64_t i = 0; i < n; ++i) d += fast[i].bits != out[i];
      EXPECT_EQ(d, 0u);
    }
  }
}

// The (AVX-512) quantizer against a naive one written from the bitsandbytes rules, for every
// blocksize on odd sizes with outliers and zero blocks: absmax = max|x|; full blocks scale by
// x * (1/absmax), the partial last block by x / absmax; code = #midpoints < scaled; pad code 7.
// The bf16 overload must equal the fp32 one on the same (bf16-exact) values.
TEST(NF4, QuantizeMatchesNaiveRules) {
  std::mt19937 g(13);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {59 * 111, 4096 * 3 + 1, 100003}) {
    std::vector<bf16> xb(n);
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) {
      float v = nd(g) * (i % 97 == 0 ? 40.f : 1.f);
      if (i >= 64 && i < 192) v = 0.f;  // zero blocks for blocksize <= 64 (and exact zeros)
      xb[i] = bf16::from_float(v);
      x[i] = xb[i].to_float();
    }
    for (int bs = 32; bs <= 4096; bs *= 2) {
      SCOPED_TRACE(str("n ", n, " blocksize ", bs));
      NF4Tensor q = nf4_quantize(x.data(), {n}, bs, false);
      NF4Tensor qb = nf4_quantize(xb.data(), {n}, bs, false);
      const int64_t nb = (n + bs - 1) / bs, full = n / bs;
      std::vector<uint8_t> packed((n + 1) / 2, 0);
      size_t bad_absmax = 0;
      for (int64_t b = 0; b < nb; ++b) {
        int64_t s = b * bs, e = std::min<int64_t>(s + bs, n);
        float am = 0.f;
        for (int64_t i = s; i < e; ++i) am = std::max(am, std::fabs(x[i]));
        bad_absmax += bits(am) != bits(q.absmax[b]);
        float d = std::max(am, 1e-38f), inv = 1.0f / d;
        for (int64_t i = s; i < e; ++i) {
          float sc = b < full ? x[i] * inv : x[i] / d;
          int c = 0;
          for (int k = 0; k < 15; ++k) c += fm::nf4_midpoint(k) < sc;
          packed[i / 2] |= (uint8_t)((i % 2 == 0) ? c << 4 : c);
        }
      }
      if (n % 2) packed.back() |= 7;
      EXPECT_EQ(bad_absmax, 0u);
      EXPECT_EQ(count_diff(q.packed, packed, packed.size()), 0u);
      EXPECT_EQ(count_diff(qb.packed, q.packed, packed.size()), 0u);
      EXPECT_EQ(count_diff(qb.absmax, q.absmax, nb), 0u);
    }
  }
}

// Fast path == bf16 rounding of the reference for every blocksize, with and without double
// quantization, on odd starts / counts, single elements, block-crossing ranges and a range large
// enough for the OpenMP split; the element after the range is never written.
TEST(NF4, FastDequantMatchesRef) {
  std::mt19937 g(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t n = 300001;  // odd, > 4 OpenMP chunks
  std::vector<float> x(n);
  for (auto& v : x) v = nd(g);
  for (int bs = 32; bs <= 4096; bs *= 2)
    for (bool dq : {true, false}) {
      SCOPED_TRACE(str("blocksize ", bs, " double_quant ", dq));
      NF4Tensor q = nf4_quantize(x.data(), {n}, bs, dq);
      std::vector<float> ref(n);
      nf4_dequantize_ref(q, ref.data());
      std::vector<std::pair<int64_t, int64_t>> ranges = {
          {0, n}, {1, n - 1}, {0, 1}, {n - 1, 1}, {7, 33}, {31, 2}, {33, 31}, {bs - 3, 70},
          {2 * bs + 5, 3 * bs + 11}, {12345, 0}, {99999, 200001}, {n - 40, 40}, {17, 131071}};
      std::uniform_int_distribution<int64_t> us(0, n - 1);
      for (int r = 0; r < 20; ++r) {
        int64_t s = us(g);
        std::uniform_int_distribution<int64_t> uc(0, std::min<int64_t>(n - s, 5000));
        ranges.push_back({s, uc(g)});
      }
      for (auto [s, cnt] : ranges) {
        std::vector<bf16> out(cnt + 1);
        out[cnt].bits = 0xBEEF;  // guard
        nf4_dequantize_bf16(q, s, cnt, out.data());
        size_t bad = 0;
        for (int64_t i = 0; i < cnt; ++i) bad += out[i].bits != fm::float_to_bf16_bits(ref[s + i]);
        EXPECT_EQ(bad, 0u) << "start " << s << " count " << cnt;
        EXPECT_EQ(out[cnt].bits, 0xBEEF) << "wrote past the range, start " << s << " count " << cnt;
      }
    }
}

// Round-trip error on N(0,1) data, blocksize 64. High-resolution quantization theory: a value
// landing in the cell of code k (between the midpoints around it) has an error roughly uniform
// over the cell, so E[err^2] ~= sum over elements of (cell width * absmax)^2 / 12, computed from
// the data. The measured MSE must agree with that model (within 15%: the density is not flat
// inside the wide outer cells; measured 1.06), and the relative RMS error sqrt(sum err^2 /
// sum x^2) must be below 0.1: the max of |x| over 64 normal samples is ~2.5 sigma, so x/absmax has
// sigma ~0.4 and falls in cells of width ~0.09..0.2 (wider away from 0), giving an RMS error of
// ~0.11/sqrt(12) * 2.5 ~ 0.08..0.09 sigma (measured 0.092).
TEST(NF4, RoundTripErrorStatistics) {
  std::mt19937 g(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t n = (1 << 20) + 37;
  std::vector<float> x(n);
  for (auto& v : x) v = nd(g);
  for (bool dq : {false, true}) {
    NF4Tensor q = nf4_quantize(x.data(), {n}, 64, dq);
    std::vector<float> y(n), am(q.nblocks());
    nf4_dequantize_ref(q, y.data());
    nf4_absmax_f32(q, am.data());
    double se = 0, sx = 0, model = 0;
    for (int64_t i = 0; i < n; ++i) {
      double e = (double)x[i] - y[i];
      se += e * e;
      sx += (double)x[i] * x[i];
      float a = am[i / 64];
      int k = fm::nf4_nearest(std::clamp(x[i] / a, -1.f, 1.f));
      double lo = k > 0 ? fm::nf4_midpoint(k - 1) : -1.0, hi = k < 15 ? fm::nf4_midpoint(k) : 1.0;
      model += (hi - lo) * (hi - lo) * a * a / 12.0;
    }
    double rel_rms = std::sqrt(se / sx), ratio = se / model;
    std::printf("double_quant=%d: relative RMS error %.5f, MSE / uniform-cell model %.4f\n", dq,
                rel_rms, ratio);
    EXPECT_TRUE(rel_rms <= 0.1) << rel_rms;
    EXPECT_TRUE(rel_rms >= 0.05) << rel_rms;  // NF4 cannot be that exact: something is off
    EXPECT_TRUE(std::fabs(ratio - 1.0) <= 0.15) << ratio;
  }
}

// Storage: 4 + 8/64 + 32/(64*256) = 4.127 bits/param with double quantization at blocksize 64,
// 4 + 32/64 = 4.5 without (QLoRA §3), measured from the actual buffers of a 1024x1024 tensor.
TEST(NF4, BitsPerParam) {
  const int64_t r = 1024, c = 1024;
  std::vector<float> x(r * c);
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& v : x) v = nd(g);
  NF4Tensor dq = nf4_quantize(x.data(), {r, c}, 64, true);
  NF4Tensor nq = nf4_quantize(x.data(), {r, c}, 64, false);
  EXPECT_EQ(dq.bytes(), (size_t)(r * c / 2 + r * c / 64 + 4 * (r * c / 64 / 256) + 4));
  EXPECT_EQ(nq.bytes(), (size_t)(r * c / 2 + 4 * (r * c / 64)));
  EXPECT_TRUE(std::fabs(dq.bits_per_param() - 4.127) <= 5e-4) << dq.bits_per_param();
  EXPECT_TRUE(std::fabs(nq.bits_per_param() - 4.5) <= 1e-12) << nq.bits_per_param();
}

TEST(NF4, InvalidArgumentsThrow) {
  std::vector<float> x(256, 1.f);
  for (int bs : {0, -64, 16, 48, 100, 8192, 65})
    EXPECT_THROW(
        {
          try {
            nf4_quantize(x.data(), {256}, bs, true);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("blocksize"), std::string::npos) << e.what();
            throw;
          }
        },
        Error)
        << "blocksize " << bs;
  NF4Tensor q = nf4_quantize(x.data(), {16, 16}, 64, true);
  std::vector<bf16> out(300);
  EXPECT_THROW(nf4_dequantize_bf16(q, 200, 57, out.data()), Error);
  EXPECT_THROW(nf4_dequantize_bf16(q, -1, 2, out.data()), Error);
  EXPECT_THROW(nf4_quantize(x.data(), {}, 64, true), Error);
}
