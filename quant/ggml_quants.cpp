// ggml_quants.cpp: dequantization of ggml block formats (see ggml_quants.h).
// Reference: gguf-py quants.py dequantize_blocks (ggml-quants.c dequantize_row_* compute the same
// values). Blocks are copied out with memcpy since GGUF data need not be 2-byte aligned.
#include "quant/ggml_quants.h"

#include <algorithm>
#include <cstring>

namespace frugal {

float fp16_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;  // ±0
    } else {        // subnormal: man·2^-24, normalize
      int e = -1;
      uint32_t m = man;
      do {
        e++;
        m <<= 1;
      } while ((m & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((m & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / NaN (payload kept)
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return fm::bits_f32(bits);
}

namespace {
template <class B>
inline B load_block(const void* src, int64_t i) {
  B b;
  std::memcpy(&b, (const uint8_t*)src + i * (int64_t)sizeof(B), sizeof(B));
  return b;
}
// Q4_K / Q5_K: 6-bit scale and min of sub-block j (ggml get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}
}  // namespace

// ---- scalar references ----------------------------------------------------------------------
void dequantize_row_f16_ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, (const uint8_t*)src + 2 * i, 2);
    dst[i] = fp16_to_float(h);
  }
}

void dequantize_row_bf16_ref(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, (const uint8_t*)src + 2 * i, 2);
    dst[i] = fm::bits_f32((uint32_t)h << 16);
  }
}

void dequantize_row_q4_0_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 32; ++ib) {
    const block_q4_0 b = load_block<block_q4_0>(src, ib);
    const float d = fp16_to_float(b.d);
    float* y = dst + ib * 32;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * (float)((b.qs[j] & 0xF) - 8);
      y[j + 16] = d * (float)((b.qs[j] >> 4) - 8);
    }
  }
}

void dequantize_row_q4_1_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 32; ++ib) {
    const block_q4_1 b = load_block<block_q4_1>(src, ib);
    const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
    float* y = dst + ib * 32;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * (float)(b.qs[j] & 0xF) + m;
      y[j + 16] = d * (float)(b.qs[j] >> 4) + m;
    }
  }
}

void dequantize_row_q5_0_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 32; ++ib) {
    const block_q5_0 b = load_block<block_q5_0>(src, ib);
    const float d = fp16_to_float(b.d);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    float* y = dst + ib * 32;
    for (int j = 0; j < 16; ++j) {
      const int x0 = (b.qs[j] & 0xF) | (((qh >> j) & 1) << 4);
      const int x1 = (b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      y[j] = d * (float)(x0 - 16);
      y[j + 16] = d * (float)(x1 - 16);
    }
  }
}

void dequantize_row_q5_1_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 32; ++ib) {
    const block_q5_1 b = load_block<block_q5_1>(src, ib);
    const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    float* y = dst + ib * 32;
    for (int j = 0; j < 16; ++j) {
      const int x0 = (b.qs[j] & 0xF) | (((qh >> j) & 1) << 4);
      const int x1 = (b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      y[j] = d * (float)x0 + m;
      y[j + 16] = d * (float)x1 + m;
    }
  }
}

void dequantize_row_q8_0_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 32; ++ib) {
    const block_q8_0 b = load_block<block_q8_0>(src, ib);
    const float d = fp16_to_float(b.d);
    for (int j = 0; j < 32; ++j) dst[ib * 32 + j] = (float)b.qs[j] * d;
  }
}

void dequantize_row_q2_K_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 256; ++ib) {
    const block_q2_K b = load_block<block_q2_K>(src, ib);
    const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
    float* y = dst + ib * 256;
    // element e = 128·c + 32·sh + l: bits 2·sh of qs[32c + l]; sub-block e/16
    for (int e = 0; e < 256; ++e) {
      const int c = e / 128, sh = (e % 128) / 32, l = e % 32;
      const int q = (b.qs[32 * c + l] >> (2 * sh)) & 3;
      const uint8_t sc = b.scales[e / 16];
      const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
      y[e] = dl * (float)q - ml;
    }
  }
}

void dequantize_row_q3_K_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 256; ++ib) {
    const block_q3_K b = load_block<block_q3_K>(src, ib);
    const float d = fp16_to_float(b.d);
    float* y = dst + ib * 256;
    float dl[16];
    for (int k = 0; k < 16; ++k) {  // 4 low bits from scales[0..8] (nibble k/8), 2 high from scales[8..12]
      const int lo = (b.scales[k % 8] >> (4 * (k / 8))) & 0xF;
      const int hi = (b.scales[8 + k % 4] >> (2 * (k / 4))) & 3;
      dl[k] = d * (float)((lo | (hi << 4)) - 32);
    }
    for (int e = 0; e < 256; ++e) {
      const int c = e / 128, sh = (e % 128) / 32, l = e % 32;
      const int ql = (b.qs[32 * c + l] >> (2 * sh)) & 3;
      const int hm = (b.hmask[l] >> (e / 32)) & 1;
      y[e] = dl[e / 16] * (float)(ql - (hm ? 0 : 4));
    }
  }
}

void dequantize_row_q4_K_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 256; ++ib) {
    const block_q4_K b = load_block<block_q4_K>(src, ib);
    const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
    float* y = dst + ib * 256;
    // 4 chunks of 32 bytes: sub-block 2c = low nibbles, 2c+1 = high nibbles
    for (int c = 0; c < 4; ++c) {
      uint8_t sc, m;
      scale_min_k4(2 * c, b.scales, &sc, &m);
      const float d1 = d * (float)sc, m1 = dmin * (float)m;
      scale_min_k4(2 * c + 1, b.scales, &sc, &m);
      const float d2 = d * (float)sc, m2 = dmin * (float)m;
      const uint8_t* q = b.qs + 32 * c;
      for (int l = 0; l < 32; ++l) y[64 * c + l] = d1 * (float)(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) y[64 * c + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
    }
  }
}

void dequantize_row_q5_K_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 256; ++ib) {
    const block_q5_K b = load_block<block_q5_K>(src, ib);
    const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
    float* y = dst + ib * 256;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc, m;
      scale_min_k4(2 * c, b.scales, &sc, &m);
      const float d1 = d * (float)sc, m1 = dmin * (float)m;
      scale_min_k4(2 * c + 1, b.scales, &sc, &m);
      const float d2 = d * (float)sc, m2 = dmin * (float)m;
      const uint8_t* q = b.qs + 32 * c;
      // sub-block s takes bit s of qh[l] as its 5th bit
      for (int l = 0; l < 32; ++l)
        y[64 * c + l] = d1 * (float)((q[l] & 0xF) | (((b.qh[l] >> (2 * c)) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l)
        y[64 * c + 32 + l] = d2 * (float)((q[l] >> 4) | (((b.qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
    }
  }
}

void dequantize_row_q6_K_ref(const void* src, float* dst, int64_t n) {
  for (int64_t ib = 0; ib < n / 256; ++ib) {
    const block_q6_K b = load_block<block_q6_K>(src, ib);
    const float d = fp16_to_float(b.d);
    float* y = dst + ib * 256;
    // element e = 128·c + r: low 4 bits from ql[64c + r%64] (nibble r/64), high 2 bits from
    // qh[32c + r%32] (bits 2·(r/32)); scale scales[e/16].
    for (int e = 0; e < 256; ++e) {
      const int c = e / 128, r = e % 128;
      const int lo = (b.ql[64 * c + r % 64] >> (4 * (r / 64))) & 0xF;
      const int hi = (b.qh[32 * c + r % 32] >> (2 * (r / 32))) & 3;
      const float ds = d * (float)b.scales[e / 16];
      y[e] = ds * (float)((lo | (hi << 4)) - 32);
    }
  }
}

// ---- dispatch -------------------------------------------------------------------------------
namespace {
using RowFn = void (*)(const void*, float*, int64_t);
void copy_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, (size_t)n * 4); }

RowFn row_fn(uint32_t type) {
  switch ((GGMLType)type) {
    case GGMLType::F32: return copy_f32;
    case GGMLType::F16: return dequantize_row_f16_ref;
    case GGMLType::BF16: return dequantize_row_bf16_ref;
    case GGMLType::Q4_0: return dequantize_row_q4_0_ref;
    case GGMLType::Q4_1: return dequantize_row_q4_1_ref;
    case GGMLType::Q5_0: return dequantize_row_q5_0_ref;
    case GGMLType::Q5_1: return dequantize_row_q5_1_ref;
    case GGMLType::Q8_0: return dequantize_row_q8_0_ref;
    case GGMLType::Q2_K: return dequantize_row_q2_K_ref;
    case GGMLType::Q3_K: return dequantize_row_q3_K_ref;
    case GGMLType::Q4_K: return dequantize_row_q4_K_ref;
    case GGMLType::Q5_K: return dequantize_row_q5_K_ref;
    case GGMLType::Q6_K: return dequantize_row_q6_K_ref;
    default: return nullptr;
  }
}

RowFn checked_fn(uint32_t type, int64_t n, const std::string& what) {
  RowFn f = row_fn(type);
  const GGMLTypeTraits tr = ggml_type_traits(type);
  if (!f)
    fail(what.empty() ? "dequantize" : what, ": ggml type ", tr.name, " (", type,
         ") is not supported (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)");
  if (n < 0 || n % tr.block_size != 0)
    fail(what.empty() ? "dequantize" : what, ": ", n, " elements is not a multiple of the ", tr.name,
         " block size ", tr.block_size);
  return f;
}
}  // namespace

bool ggml_can_dequantize(uint32_t type) { return row_fn(type) != nullptr; }

void dequantize_ref(uint32_t type, const void* src, float* dst, int64_t n, const std::string& what) {
  checked_fn(type, n, what)(src, dst, n);
}

void dequantize(uint32_t type, const void* src, float* dst, int64_t n, const std::string& what) {
  RowFn f = checked_fn(type, n, what);
  const GGMLTypeTraits tr = ggml_type_traits(type);
  // chunks of whole blocks, ~64K elements each: enough work per thread, bounded imbalance
  const int64_t per = std::max<int64_t>(1, 65536 / tr.block_size) * tr.block_size;
  const int64_t chunks = (n + per - 1) / per;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e0 = c * per, cnt = std::min(per, n - e0);
    f((const uint8_t*)src + e0 / tr.block_size * tr.type_size, dst + e0, cnt);
  }
}

void dequantize_bf16(uint32_t type, const void* src, bf16* dst, int64_t n, const std::string& what) {
  RowFn f = checked_fn(type, n, what);
  const GGMLTypeTraits tr = ggml_type_traits(type);
  const int64_t per = std::max<int64_t>(1, 16384 / tr.block_size) * tr.block_size;
  const int64_t chunks = (n + per - 1) / per;
#pragma omp parallel if (chunks > 1)
  {
    avector<float> tmp((size_t)per);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t e0 = c * per, cnt = std::min(per, n - e0);
      f((const uint8_t*)src + e0 / tr.block_size * tr.type_size, tmp.data(), cnt);
      float_to_bf16(tmp.data(), dst + e0, (size_t)cnt);
    }
  }
}

}  // namespace frugal
