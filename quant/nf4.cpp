// nf4.cpp: NF4 quantization / dequantization, bit-compatible with bitsandbytes 0.50 on CPU.
// Reference behaviour (read from the installed package):
//  - quantize_4bit (backends/default/ops.py): x as fp32; full blocks scaled by x * (1 / absmax),
//    the partial last block by x / absmax (absmax clamped to >= 1e-38 for the scaling only),
//    clamp to [-1, 1], code = bucketize(scaled, fp32 midpoints) (ties -> lower code); an odd
//    numel is padded with 0.0 (code 7) in the low nibble of the last byte.
//  - compress_statistics (functional.py): offset = absmax.mean() (torch fp32 cascade sum / n),
//    quantize_blockwise(absmax - offset, blocksize=256) with create_dynamic_map(signed=True),
//    done by libbitsandbytes_cpu quantize_cpu_impl (65536-entry LUT, see quantize_blockwise_dyn8).
//  - dequantize: fp32 code * absmax; nested absmax = map[q] * nested_absmax (fp32), then + offset.
// Limits: torch splits a sum of more than 32768 elements over its threads, so for tensors with more
// than 32768 blocks (> 2M elements at blocksize 64) bnb's offset depends on torch's thread count;
// ours is the single-threaded value (the fixture generator runs torch with one thread). NaN inputs
// are ignored by our absmax (torch propagates them to the whole block).
#include "quant/nf4.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace frugal::quant {

int64_t NF4Tensor::nblocks() const { return (numel + blocksize - 1) / blocksize; }

size_t NF4Tensor::bytes() const {
  size_t b = packed.size();
  if (double_quant)
    b += absmax_q.size() + nested_absmax.size() * sizeof(float) + sizeof(float);  // + offset
  else
    b += absmax.size() * sizeof(float);
  return b;
}

double NF4Tensor::bits_per_param() const {
  return numel > 0 ? 8.0 * (double)bytes() / (double)numel : 0.0;
}

// ---- torch-compatible mean -----------------------------------------------------------------
// ATen SumKernel.cpp cascade_sum for a contiguous fp32 row. With n >= 8 (vectorized_inner_sum) the
// row is read as vectors of 8 floats, below that (scalar_inner_sum) as single floats; row_sum
// splits them into 4 interleaved rows summed by multi_row_sum (4 levels, chunks of
// 2^max(4, ceil_log2(rows)/4)); leftovers, the 4 partial sums, then the lanes are added in order.
namespace {
template <int L>
struct VecL {
  float v[L] = {};
  void add(const VecL& b) {
    for (int l = 0; l < L; ++l) v[l] += b.v[l];
  }
  static VecL load(const float* p) {
    VecL r;
    for (int l = 0; l < L; ++l) r.v[l] = p[l];
    return r;
  }
};
int64_t ceil_log2(int64_t x) {
  int64_t r = 0;
  while (((int64_t)1 << r) < x) ++r;
  return r;
}
template <int L>
float cascade_sum(const float* x, int64_t n) {
  using V = VecL<L>;
  const int64_t nvec = n / L;    // whole vectors
  const int64_t size = nvec / 4;  // rows of 4 vectors for multi_row_sum
  constexpr int kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = (int64_t)1 << level_power;
  const int64_t level_mask = level_step - 1;
  V acc[kLevels][4];
  int64_t i = 0;
  for (; i + level_step <= size;) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < 4; ++k) acc[0][k].add(V::load(x + (i * 4 + k) * L));
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k) {
        acc[j][k].add(acc[j - 1][k]);
        acc[j - 1][k] = V{};
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int k = 0; k < 4; ++k) acc[0][k].add(V::load(x + (i * 4 + k) * L));
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < 4; ++k) acc[0][k].add(acc[j][k]);
  V s = acc[0][0];
  for (int64_t v = size * 4; v < nvec; ++v) s.add(V::load(x + v * L));
  for (int k = 1; k < 4; ++k) s.add(acc[0][k]);
  float total = 0.f;
  for (int64_t e = nvec * L; e < n; ++e) total += x[e];
  for (int l = 0; l < L; ++l) total += s.v[l];
  return total;
}
}  // namespace

float torch_mean_f32(const float* x, int64_t n) {
  FRUGAL_CHECK(n > 0, "torch_mean_f32 of an empty vector");
  const float sum = n >= 8 ? cascade_sum<8>(x, n) : cascade_sum<1>(x, n);
  return sum / (float)n;
}

// ---- dynamic 8-bit blockwise quantization (nested absmax) --------------------------------
namespace {
constexpr int kLutSize = 65536;

// lut[i] = nearest map index of v_i = -1 + 2i/65535: the number of fp32 midpoints below v_i
// (bitsandbytes csrc/cpu_ops.cpp build_quantize_lut).
const uint8_t* dyn8_lut() {
  static const std::vector<uint8_t> lut = [] {
    float mid[255];
    for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (fm::dyn8_code(i) + fm::dyn8_code(i + 1));
    std::vector<uint8_t> t(kLutSize);
    int c = 0;
    for (int i = 0; i < kLutSize; ++i) {
      float v = -1.0f + (2.0f * (float)i) / (float)(kLutSize - 1);
      while (c < 255 && mid[c] < v) ++c;
      t[i] = (uint8_t)c;
    }
    return t;
  }();
  return lut.data();
}
}  // namespace

void quantize_blockwise_dyn8(const float* x, int64_t n, int blocksize, uint8_t* codes,
                             float* absmax) {
  FRUGAL_CHECK(blocksize > 0, "quantize_blockwise_dyn8: blocksize ", blocksize);
  const uint8_t* lut = dyn8_lut();
  const int64_t nb = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t s = b * blocksize, e = std::min<int64_t>(s + blocksize, n);
    float am = 0.f;
    for (int64_t i = s; i < e; ++i) am = std::max(am, std::fabs(x[i]));  // NaN ignored
    absmax[b] = am;
    if (am == 0.f) {
      for (int64_t i = s; i < e; ++i) codes[i] = 0;
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = s; i < e; ++i) {
      float v = std::clamp(x[i] * inv, -1.0f, 1.0f);
      // bnb compiles this as one FMA (the unfused form never picks another entry next to a LUT
      // transition, but the FMA is what the library does).
      float t = std::fma((v + 1.0f) * 0.5f, (float)(kLutSize - 1), 0.5f);
      int idx = std::isnan(t) ? 0 : ((int)t & 0xffff);  // cvttss2si, low 16 bits
      codes[i] = lut[idx];
    }
  }
}

// ---- NF4 quantization --------------------------------------------------------------------
namespace {
void check_blocksize(int blocksize) {
  bool pow2 = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  if (!pow2 || blocksize < 32 || blocksize > 4096)
    fail("nf4_quantize: invalid blocksize ", blocksize,
         " (must be a power of two in 32..4096, as in bitsandbytes)");
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
  if (shape.empty()) fail("nf4_quantize: empty shape");
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("nf4_quantize: negative dimension ", d, " in shape");
    n *= d;
  }
  return n;
}

inline float load_f32(const float* x, int64_t i) { return x[i]; }
inline float load_f32(const bf16* x, int64_t i) { return x[i].to_float(); }

#if defined(__AVX512F__)
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const bf16* x) {  // bf16 -> fp32 is exact: the bits go to the top half
  __m256i h = _mm256_loadu_si256((const __m256i*)x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// One full block [s, s + blocksize) (blocksize a multiple of 32): absmax, then per 16 elements
// code = number of midpoints below x * inv (== fm::nf4_nearest, NaN -> 0; clamping to [-1, 1]
// cannot change a comparison with a midpoint), packed two per byte.
template <class T>
float quantize_block_avx512(const T* x, int64_t s, int blocksize, uint8_t* packed) {
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t i = s; i < s + blocksize; i += 16)
    vmax = _mm512_max_ps(_mm512_and_ps(load16(x + i), sign), vmax);  // NaN lanes keep vmax
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, vmax);
  float m = 0.f;
  for (float l : lanes) m = std::max(m, l);  // (_mm512_reduce_max_ps warns in GCC 12's header)
  const __m512 inv = _mm512_set1_ps(1.0f / std::max(m, 1e-38f));
  __m512 mid[15];
  for (int k = 0; k < 15; ++k) mid[k] = _mm512_set1_ps(fm::nf4_midpoint(k));
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t i = s; i < s + blocksize; i += 16) {
    __m512 v = _mm512_mul_ps(load16(x + i), inv);
    __m512i c = _mm512_setzero_si512();
    for (int k = 0; k < 15; ++k)
      c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, mid[k], _CMP_GT_OQ), c, one);
    __m128i b = _mm512_cvtepi32_epi8(c);  // 16 codes, element order
    __m128i hi = _mm_and_si128(_mm_slli_epi16(b, 4), _mm_set1_epi16(0x00f0));  // even << 4
    __m128i lo = _mm_srli_epi16(b, 8);                                         // odd
    _mm_storel_epi64((__m128i*)(packed + (i >> 1)), _mm_packus_epi16(_mm_or_si128(hi, lo), hi));
  }
  return m;
}
#endif

template <class T>
NF4Tensor quantize_impl(const T* x, std::vector<int64_t> shape, int blocksize, bool double_quant) {
  check_blocksize(blocksize);
  NF4Tensor q;
  q.numel = shape_numel(shape);
  q.shape = std::move(shape);
  q.blocksize = blocksize;
  q.double_quant = double_quant;
  const int64_t n = q.numel, nb = q.nblocks();
  const int64_t full_blocks = n / blocksize;
  q.packed.assign((n + 1) / 2, 0);
  avector<float> am(nb);
  uint8_t* packed = q.packed.data();

#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t s = b * blocksize, e = std::min<int64_t>(s + blocksize, n);
#if defined(__AVX512F__)
    if (b < full_blocks) {
      am[b] = quantize_block_avx512(x, s, blocksize, packed);
      continue;
    }
#endif
    float m = 0.f;
    for (int64_t i = s; i < e; ++i) m = std::max(m, std::fabs(load_f32(x, i)));
    am[b] = m;
    const float denom = std::max(m, 1e-38f);
    const bool full = b < full_blocks;
    const float inv = 1.0f / denom;
    // s is even (blocksize >= 32), so the block owns whole bytes; e may be odd at the end only.
    for (int64_t i = s; i < e; i += 2) {
      int c[2] = {7, 7};  // 7 = code of 0.0 (bnb pads an odd numel with 0)
      for (int k = 0; k < 2 && i + k < e; ++k) {
        float v = load_f32(x, i + k);
        float sc = full ? v * inv : v / denom;
        sc = sc < -1.f ? -1.f : (sc > 1.f ? 1.f : sc);
        c[k] = fm::nf4_nearest(sc);
      }
      packed[i >> 1] = (uint8_t)((c[0] << 4) | c[1]);
    }
  }

  if (!double_quant) {
    q.absmax = std::move(am);
    return q;
  }
  q.offset = nb > 0 ? torch_mean_f32(am.data(), nb) : 0.f;
  avector<float> centered(nb);
  for (int64_t b = 0; b < nb; ++b) centered[b] = am[b] - q.offset;
  q.absmax_q.assign(nb, 0);
  q.nested_absmax.assign((nb + q.nested_blocksize - 1) / q.nested_blocksize, 0.f);
  quantize_blockwise_dyn8(centered.data(), nb, q.nested_blocksize, q.absmax_q.data(),
                          q.nested_absmax.data());
  return q;
}
}  // namespace

NF4Tensor nf4_quantize(const float* x, std::vector<int64_t> shape, int blocksize,
                       bool double_quant) {
  return quantize_impl(x, std::move(shape), blocksize, double_quant);
}
NF4Tensor nf4_quantize(const bf16* x, std::vector<int64_t> shape, int blocksize,
                       bool double_quant) {
  return quantize_impl(x, std::move(shape), blocksize, double_quant);
}

// ---- dequantization ------------------------------------------------------------------------
float nf4_block_absmax(const NF4Tensor& q, int64_t b) {
  if (!q.double_quant) return q.absmax[b];
  return fm::mul_add_unfused(fm::dyn8_code(q.absmax_q[b]), q.nested_absmax[b / q.nested_blocksize],
                             q.offset);
}

void nf4_absmax_f32(const NF4Tensor& q, float* out) {
  const int64_t nb = q.nblocks();
  FRUGAL_CHECK(q.double_quant ? (int64_t)q.absmax_q.size() == nb : (int64_t)q.absmax.size() == nb,
               "NF4 tensor has ", q.double_quant ? q.absmax_q.size() : q.absmax.size(),
               " absmax entries, expected ", nb);
  for (int64_t b = 0; b < nb; ++b) out[b] = nf4_block_absmax(q, b);
}

void nf4_dequantize_ref(const NF4Tensor& q, float* out) {
  FRUGAL_CHECK((int64_t)q.packed.size() == (q.numel + 1) / 2, "NF4 tensor packed size ",
               q.packed.size(), " does not match numel ", q.numel);
  std::vector<float> am(q.nblocks());
  nf4_absmax_f32(q, am.data());
  for (int64_t i = 0; i < q.numel; ++i) {
    uint8_t byte = q.packed[i >> 1];
    int nib = (i & 1) ? (byte & 15) : (byte >> 4);
    out[i] = fm::nf4_code(nib) * am[i / q.blocksize];
  }
}

namespace {
#if defined(__AVX512F__)
// fp32 -> bf16 bits, round to nearest even, NaN -> quiet NaN: fm::float_to_bf16_bits on 16 lanes
// (integer arithmetic, so subnormals are kept exactly like the scalar path; vcvtneps2bf16 would
// flush them).
inline __m256i bf16_rne_16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i hi = _mm512_srli_epi32(u, 16);
  __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}
#endif

inline uint16_t dequant_one(const NF4Tensor& q, int64_t i) {
  uint8_t byte = q.packed[i >> 1];
  int nib = (i & 1) ? (byte & 15) : (byte >> 4);
  return fm::float_to_bf16_bits(fm::nf4_code(nib) * nf4_block_absmax(q, i / q.blocksize));
}

// Elements [s, e) into out[0 .. e-s). Scalar up to a multiple of 32, then 32 elements (16 bytes,
// always inside one block since blocksize is a multiple of 32) per step, then a scalar tail.
void dequant_range(const NF4Tensor& q, int64_t s, int64_t e, uint16_t* out) {
  int64_t i = s;
#if defined(__AVX512F__)
  const int64_t head = std::min(e, (s + 31) & ~(int64_t)31);
  for (; i < head; ++i) out[i - s] = dequant_one(q, i);
  float codes[16];
  for (int k = 0; k < 16; ++k) codes[k] = fm::nf4_code(k);
  const __m512 book = _mm512_loadu_ps(codes);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  int64_t cur = -1;
  __m512 scale = _mm512_setzero_ps();
  for (; i + 32 <= e; i += 32) {
    const int64_t b = i / q.blocksize;
    if (b != cur) {
      cur = b;
      scale = _mm512_set1_ps(nf4_block_absmax(q, b));
    }
    __m128i bytes = _mm_loadu_si128((const __m128i*)(q.packed.data() + (i >> 1)));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);  // even elements
    __m128i lo = _mm_and_si128(bytes, low4);                     // odd elements
    __m128i i0 = _mm_unpacklo_epi8(hi, lo);                      // elements 0..15
    __m128i i1 = _mm_unpackhi_epi8(hi, lo);                      // elements 16..31
    __m512 v0 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(i0), book), scale);
    __m512 v1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(i1), book), scale);
    _mm256_storeu_si256((__m256i*)(out + (i - s)), bf16_rne_16(v0));
    _mm256_storeu_si256((__m256i*)(out + (i - s) + 16), bf16_rne_16(v1));
  }
#endif
  for (; i < e; ++i) out[i - s] = dequant_one(q, i);
}
}  // namespace

void nf4_dequantize_bf16(const NF4Tensor& q, int64_t start, int64_t count, bf16* out) {
  if (start < 0 || count < 0 || start + count > q.numel)
    fail("nf4_dequantize_bf16: range [", start, ", ", start + count, ") outside the tensor of ",
         q.numel, " elements");
  FRUGAL_CHECK((int64_t)q.packed.size() == (q.numel + 1) / 2, "NF4 tensor packed size ",
               q.packed.size(), " does not match numel ", q.numel);
  FRUGAL_CHECK(q.double_quant ? (int64_t)q.absmax_q.size() == q.nblocks()
                              : (int64_t)q.absmax.size() == q.nblocks(),
               "NF4 tensor absmax size does not match ", q.nblocks(), " blocks");
  if (count == 0) return;
  uint16_t* o = reinterpret_cast<uint16_t*>(out);
  const int64_t end = start + count;
  constexpr int64_t kChunk = 1 << 15;  // elements per OpenMP work item (multiple of 32)
  // Serial when small, or when called from a parallel region (e.g. linear_forward's NF4 tiles).
  if (count < 4 * kChunk || omp_get_max_threads() == 1 || omp_in_parallel()) {
    dequant_range(q, start, end, o);
    return;
  }
  const int64_t c0 = start / kChunk, c1 = (end - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = c0; c <= c1; ++c) {
    const int64_t s = std::max(start, c * kChunk), e = std::min(end, (c + 1) * kChunk);
    dequant_range(q, s, e, o + (s - start));
  }
}

}  // namespace frugal::quant
