// ggml_quants.h: llama.cpp (ggml) block formats and their dequantization to fp32 / bf16.
// A row of n elements (n a multiple of the block size) is n / block_size consecutive blocks.
// Block layouts as in ggml-common.h (QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = 32, QK_K = 256); `d`,
// `m`, `dmin` are IEEE fp16 bit patterns. The math is the one of gguf-py's quants.py (which
// mirrors ggml's dequantize_row_*): e.g. Q4_0: x = d·(q − 8); Q4_1: x = d·q + m.
// Every product of a scale by a code is exact in fp32 (fp16 scale: 11 significant bits; codes
// and sub-block scales: at most 13 more), so the result does not depend on FMA contraction and
// equals gguf-py's fp32 output bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "src/common.h"
#include "src/io/gguf.h"

namespace frugal {

struct block_q4_0 {
  uint16_t d;          // scale
  uint8_t qs[16];      // element j in low nibble of qs[j] (j < 16), element j+16 in its high nibble
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

struct block_q4_1 {
  uint16_t d, m;       // scale, minimum
  uint8_t qs[16];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

struct block_q5_0 {
  uint16_t d;
  uint8_t qh[4];       // bit j (u32 little endian) = 5th bit of element j
  uint8_t qs[16];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

struct block_q5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

struct block_q8_0 {
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

// Q2_K: 16 sub-blocks of 16, 4-bit scale (low nibble) and min (high nibble) each, 2-bit codes.
struct block_q2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
};
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");

// Q3_K: 16 sub-blocks of 16, 6-bit signed scales (packed in scales[12]), 2 low code bits in qs and
// the 3rd in hmask (set = no offset, clear = −4).
struct block_q3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");

// Q4_K: 8 sub-blocks of 32, 6-bit scale and min each (packed in scales[12]), 4-bit codes.
struct block_q4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

// Q5_K: as Q4_K plus a 5th bit per element in qh.
struct block_q5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

// Q6_K: 16 sub-blocks of 16 with int8 scales, 6-bit codes (low 4 bits in ql, high 2 in qh), d last.
struct block_q6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

// IEEE half -> float (exact, subnormals and inf/NaN included).
float fp16_to_float(uint16_t h);

// Scalar references (the definition): n elements from `src` (n a multiple of the block size).
// src need not be aligned.
void dequantize_row_f16_ref(const void* src, float* dst, int64_t n);
void dequantize_row_bf16_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q4_0_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q4_1_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q5_0_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q5_1_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q8_0_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q2_K_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q3_K_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q4_K_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q5_K_ref(const void* src, float* dst, int64_t n);
void dequantize_row_q6_K_ref(const void* src, float* dst, int64_t n);

// Types this file can dequantize: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K.
bool ggml_can_dequantize(uint32_t type);
// Scalar dispatch to the _ref of `type`; an unsupported type throws naming it and `what`.
void dequantize_ref(uint32_t type, const void* src, float* dst, int64_t n, const std::string& what = "");
// Multi-threaded (OpenMP over chunks of blocks, same per-block code, same bits as _ref).
void dequantize(uint32_t type, const void* src, float* dst, int64_t n, const std::string& what = "");
// fp32 result rounded to bf16 (nearest even).
void dequantize_bf16(uint32_t type, const void* src, bf16* dst, int64_t n, const std::string& what = "");

}  // namespace frugal
