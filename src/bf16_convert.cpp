// bf16_convert.cpp: bulk fp32 <-> bf16 conversion (round to nearest even), AVX-512 when built
// for a CPU that has it. Scalar tail uses the shared_math.h rounding so results are identical.
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include "src/common.h"

namespace frugal {

void float_to_bf16(const float* in, bf16* out, std::size_t n) {
  std::size_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512i round_bias = _mm512_set1_epi32(0x7fff);
  const __m512i one = _mm512_set1_epi32(1);
  std::size_t nv = n / 16 * 16;
#pragma omp parallel for schedule(static) if (nv > (1u << 16))
  for (std::size_t j = 0; j < nv; j += 16) {
    __m512 x = _mm512_loadu_ps(in + j);
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(round_bias, lsb));
    // NaN lanes: keep quiet NaN (upper half | 0x40)
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512i qnan = _mm512_or_si512(u, _mm512_set1_epi32(0x00400000));
    r = _mm512_mask_mov_epi32(r, nan, qnan);
    __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), h);
  }
  i = nv;
#endif
  for (; i < n; ++i) out[i].bits = fm::float_to_bf16_bits(in[i]);
}

void bf16_to_float(const bf16* in, float* out, std::size_t n) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  std::size_t nv = n / 16 * 16;
#pragma omp parallel for schedule(static) if (nv > (1u << 16))
  for (std::size_t j = 0; j < nv; j += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + j));
    __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    _mm512_storeu_ps(out + j, _mm512_castsi512_ps(u));
  }
  i = nv;
#endif
  for (; i < n; ++i) out[i] = fm::bf16_bits_to_float(in[i].bits);
}

}  // namespace frugal
