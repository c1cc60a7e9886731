// blockwise8.cpp: 8-bit blockwise dynamic quantization (see blockwise8.h for the math).
// Sections: the maps, reference, fast path, the held-range vector.
#include "quant/blockwise8.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace frugal::quant {

// ---- the maps -----------------------------------------------------------------------------
namespace {

// torch.linspace(start, end, steps) in fp32 on the CPU: step = (end - start) / (steps - 1), the
// first half start + step·i, the second half end - step·(steps - 1 - i).
std::vector<float> torch_linspace_f32(float start, float end, int steps) {
  const float step = (end - start) / (float)(steps - 1);
  std::vector<float> v(steps);
  const int half = steps / 2;
  for (int i = 0; i < steps; ++i) v[i] = i < half ? start + step * (float)i : end - step * (float)(steps - 1 - i);
  return v;
}

// The 8-bit blocks [qbegin, qend) of a held range: aligned blocks entirely inside [begin, end).
// None (qbegin = qend = end) when not quantized or no whole block fits.
void block_range(size_t begin, size_t end, bool quantized, size_t* qbegin, size_t* qend) {
  const size_t B = kBlockwise8Block;
  const size_t qb = (begin + B - 1) / B * B, qe = end / B * B;
  if (!quantized || qe <= qb) {
    *qbegin = *qend = end;
  } else {
    *qbegin = qb, *qend = qe;
  }
}

}  // namespace

std::vector<float> bnb_dynamic_map(bool is_signed) {
  // create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8): for exponent i = 0..6 the
  // midpoints of linspace(0.1, 1, n_i) scaled by 10^(i - 6), n_i = 2^i + 1 (signed, both signs)
  // or 2^(i+1) + 1 (unsigned); then 0 and 1: 2·127 + 2 or 254 + 2 = 256 values, sorted.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int n = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const std::vector<float> b = torch_linspace_f32(0.1f, 1.f, n);
    const float scale = (float)std::pow(10.0, i - 6);  // a Python float, rounded to fp32 by torch
    for (int k = 0; k + 1 < n; ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.f);
  data.push_back(1.f);
  FRUGAL_CHECK(data.size() == 256, "bnb_dynamic_map: ", data.size(), " values");
  std::sort(data.begin(), data.end());
  return data;
}

const float* blockwise8_map(bool is_signed) {
  static const std::array<std::vector<float>, 2> maps = [] {
    std::vector<float> u = bnb_dynamic_map(false), s = bnb_dynamic_map(true);
    // s[126] is the negative entry nearest 0 (s[127] = 0): drop it, add -1.0 at the front
    FRUGAL_CHECK(s[127] == 0.f && s[126] < 0.f && s[0] > -1.f, "blockwise8: unexpected signed dynamic map");
    s.erase(s.begin() + 126);
    s.insert(s.begin(), -1.f);
    return std::array<std::vector<float>, 2>{u, s};
  }();
  return maps[is_signed ? 1 : 0].data();
}

// ---- reference ----------------------------------------------------------------------------
namespace {

constexpr float kFlushBelow = 0x1p-100f;  // blocks with a smaller absmax are stored as zeros

uint8_t zero_code(bool is_signed) { return is_signed ? 127 : 0; }

// Shared by both paths: the block loop; `nearest(s)` picks the code of a scaled value. Blocks are
// independent, so threads change nothing; a non-finite element is reported (the first one) after
// the loop, as no exception may leave an OpenMP region.
template <class Nearest>
void quantize_blocks(const float* x, size_t nblocks, bool is_signed, uint8_t* codes, float* absmax,
                     const std::string& what, Nearest nearest) {
  size_t bad = SIZE_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad) if (nblocks > 64)
  for (size_t b = 0; b < nblocks; ++b) {
    const float* xb = x + b * kBlockwise8Block;
    uint8_t* cb = codes + b * kBlockwise8Block;
    float am = 0.f;
    for (size_t i = 0; i < kBlockwise8Block; ++i) {
      const float a = std::fabs(xb[i]);
      if (!std::isfinite(a)) bad = std::min(bad, b * kBlockwise8Block + i);
      am = std::max(am, a);
    }
    if (!(am >= kFlushBelow)) am = 0.f;  // flushed (or non-finite: reported below)
    absmax[b] = am;
    if (am == 0.f) {
      std::fill(cb, cb + kBlockwise8Block, zero_code(is_signed));
      continue;
    }
    const float inv = 1.f / am;  // as bitsandbytes' kernels: x · (1 / absmax)
    for (size_t i = 0; i < kBlockwise8Block; ++i) cb[i] = nearest(xb[i] * inv);
  }
  if (bad != SIZE_MAX) fail("blockwise8: ", what, ": non-finite value ", x[bad], " at element ", bad);
}

}  // namespace

void quantize_blockwise8_ref(const float* x, size_t nblocks, bool is_signed, uint8_t* codes, float* absmax,
                             const std::string& what) {
  const float* map = blockwise8_map(is_signed);
  quantize_blocks(x, nblocks, is_signed, codes, absmax, what, [map](float s) {
    int best = 0;
    float best_d = std::fabs(s - map[0]);
    for (int k = 1; k < 256; ++k) {
      const float d = std::fabs(s - map[k]);
      if (d < best_d) best = k, best_d = d;  // strict: a tie keeps the lower index
    }
    return (uint8_t)best;
  });
}

// ---- fast path: a binary search over the few entries the value's bucket allows ---------------
namespace {
uint8_t nearest_in(const float* map, float s) {
  // hi = the first entry above s (8 halvings of [0, 256)); the nearest is hi or hi - 1, because
  // |s - map[k]| grows monotonically away from s on either side
  const int hi = (int)(std::upper_bound(map, map + 256, s) - map);
  if (hi == 0) return 0;
  if (hi == 256) return 255;
  const float d_lo = std::fabs(s - map[hi - 1]), d_hi = std::fabs(s - map[hi]);
  return (uint8_t)(d_hi < d_lo ? hi : hi - 1);
}

// The codes a float's top 16 bits (sign, exponent, 7 mantissa bits) can take: nearest_in is
// monotone in s, so every s of a bucket has its code between those of the bucket's two end values.
// The search then runs over that range only (usually 1-3 entries instead of 256): the first entry
// above s lies in [first, last + 1] (the nearest is it or the one below), so the result is
// nearest_in's, bit for bit.
struct BucketRange {
  uint8_t first, last;
};
const BucketRange* bucket_ranges(bool is_signed) {
  static const std::array<std::vector<BucketRange>, 2> t = [] {
    std::array<std::vector<BucketRange>, 2> out;
    for (int sg = 0; sg < 2; ++sg) {
      const float* map = blockwise8_map(sg == 1);
      out[sg].resize(65536);
      for (uint32_t k = 0; k < 65536; ++k) {
        const uint32_t lo = k << 16, hi = lo | 0xffffu;
        float a, b;
        std::memcpy(&a, &lo, 4), std::memcpy(&b, &hi, 4);
        if (std::isnan(a) || std::isnan(b)) {
          out[sg][k] = {0, 255};
          continue;
        }
        const uint8_t ca = nearest_in(map, a), cb = nearest_in(map, b);
        out[sg][k] = {std::min(ca, cb), std::max(ca, cb)};
      }
    }
    return out;
  }();
  return t[is_signed ? 1 : 0].data();
}

uint8_t nearest_bucketed(const float* map, const BucketRange* buckets, float s) {
  uint32_t u;
  std::memcpy(&u, &s, 4);
  const BucketRange r = buckets[u >> 16];
  const int a = r.first, b = std::min(r.last + 2, 256);
  const int hi = (int)(std::upper_bound(map + a, map + b, s) - map);
  if (hi == 0) return 0;
  if (hi == 256) return 255;
  const float d_lo = std::fabs(s - map[hi - 1]), d_hi = std::fabs(s - map[hi]);
  return (uint8_t)(d_hi < d_lo ? hi : hi - 1);
}

}  // namespace

uint8_t blockwise8_nearest(float s, bool is_signed) { return nearest_in(blockwise8_map(is_signed), s); }

void quantize_blockwise8(const float* x, size_t nblocks, bool is_signed, uint8_t* codes, float* absmax,
                         const std::string& what) {
  const float* map = blockwise8_map(is_signed);
  const BucketRange* buckets = bucket_ranges(is_signed);
  quantize_blocks(x, nblocks, is_signed, codes, absmax, what,
                  [map, buckets](float s) { return nearest_bucketed(map, buckets, s); });
}

void dequantize_blockwise8(const uint8_t* codes, const float* absmax, size_t nblocks, bool is_signed, float* x) {
  const float* map = blockwise8_map(is_signed);
#pragma omp parallel for schedule(static) if (nblocks > 64)
  for (size_t b = 0; b < nblocks; ++b) {
    const float am = absmax[b];
    for (size_t i = b * kBlockwise8Block; i < (b + 1) * kBlockwise8Block; ++i) x[i] = map[codes[i]] * am;
  }
}

// ---- the held-range vector ----------------------------------------------------------------
void Blockwise8Vector::reset(size_t begin, size_t end, bool quantized, bool is_signed) {
  FRUGAL_CHECK(begin <= end, "Blockwise8Vector: range [", begin, ", ", end, ")");
  begin_ = begin, end_ = end, quantized_ = quantized, signed_ = is_signed;
  block_range(begin, end, quantized, &qbegin_, &qend_);
  avector<float>((qbegin_ - begin_) + (end_ - qend_), 0.f).swap(head_tail_);
  std::vector<uint8_t>(qend_ - qbegin_, zero_code(is_signed)).swap(codes_);
  std::vector<float>((qend_ - qbegin_) / kBlockwise8Block, 0.f).swap(absmax_);
}

void Blockwise8Vector::get(float* out) const {
  const size_t head = qbegin_ - begin_;
  std::copy(head_tail_.begin(), head_tail_.begin() + head, out);
  dequantize_blockwise8(codes_.data(), absmax_.data(), absmax_.size(), signed_, out + head);
  std::copy(head_tail_.begin() + head, head_tail_.end(), out + head + (qend_ - qbegin_));
}

void Blockwise8Vector::set(const float* in, const std::string& what) {
  const size_t head = qbegin_ - begin_;
  std::copy(in, in + head, head_tail_.begin());
  quantize_blockwise8(in + head, absmax_.size(), signed_, codes_.data(), absmax_.data(), what);
  std::copy(in + head + (qend_ - qbegin_), in + size(), head_tail_.begin() + head);
}

size_t Blockwise8Vector::bytes_for(size_t begin, size_t end, bool quantized) {
  size_t qb = 0, qe = 0;
  block_range(begin, end, quantized, &qb, &qe);
  const size_t q = qe - qb;
  return q + (q / kBlockwise8Block) * sizeof(float) + ((end - begin) - q) * sizeof(float);
}

}  // namespace frugal::quant
