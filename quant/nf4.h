// nf4.h: bitsandbytes-compatible NF4 4-bit blockwise quantization with double quantization.
//   absmax[b] = max |x| over block b (blocksize 32..4096, last block may be partial)
//   code[i]   = nearest NF4 code of x[i] / absmax[i / blocksize]   (fm::nf4_nearest)
//   x'[i]     = fm::nf4_code(code[i]) * absmax[i / blocksize]
// Double quantization: offset = mean(absmax); absmax - offset is quantized with the signed
// dynamic 8-bit map (fm::dyn8_code) in blocks of 256 with their own fp32 absmax (nested_absmax).
// Bit-compatible with bitsandbytes 0.50 on CPU (see SPEC §4 and quant/nf4.cpp for the details).
#pragma once
#include <cstdint>
#include <vector>

#include "src/common.h"

namespace frugal::quant {

struct NF4Tensor {
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int blocksize = 64;
  Buf<uint8_t> packed;       // (numel+1)/2 bytes; LOWER flat index in the HIGH nibble
  bool double_quant = true;
  Buf<float> absmax;             // [nblocks] fp32 when !double_quant
  Buf<uint8_t> absmax_q;         // [nblocks] when double_quant (signed dynamic 8-bit map codes)
  Buf<float> nested_absmax;      // [ceil(nblocks/256)]
  float offset = 0.f;            // mean(absmax) subtracted before nested quantization
  int nested_blocksize = 256;
  int64_t nblocks() const;
  size_t bytes() const;           // all storage
  double bits_per_param() const;  // 4.127 with double quant at blocksize 64
};

NF4Tensor nf4_quantize(const float* x, std::vector<int64_t> shape, int blocksize = 64,
                       bool double_quant = true);
NF4Tensor nf4_quantize(const bf16* x, std::vector<int64_t> shape, int blocksize = 64,
                       bool double_quant = true);
// out[i] = dequantized flat element (start + i), i < count, as bf16. Fast (AVX-512), any start/count.
void nf4_dequantize_bf16(const NF4Tensor& q, int64_t start, int64_t count, bf16* out);
void nf4_dequantize_ref(const NF4Tensor& q, float* out);  // whole tensor, scalar reference

// ---- helpers (also used by tests and the CUDA launcher) -----------------------------------
// The fp32 absmax of every block: q.absmax, or under double quantization
// dyn8_code(absmax_q[b]) * nested_absmax[b / 256] + offset (product rounded first, as bnb).
// out: [q.nblocks()]
void nf4_absmax_f32(const NF4Tensor& q, float* out);
float nf4_block_absmax(const NF4Tensor& q, int64_t block);

// bitsandbytes' CPU quantize_blockwise with the dynamic map (the nested absmax quantizer):
// per block of `blocksize`: absmax = max |x| (NaN ignored); code = LUT[trunc(fma((clamp(x /
// absmax) + 1) / 2, 65535, 0.5))], a 65536-entry table of the nearest map entry by midpoints.
// An all-zero block gets codes 0. codes: [n], absmax: [ceil(n / blocksize)]
void quantize_blockwise_dyn8(const float* x, int64_t n, int blocksize, uint8_t* codes,
                             float* absmax);

// torch.mean of a contiguous fp32 vector on CPU with one thread, bit for bit: ATen's
// cascade_sum (8 fp32 lanes, 4 interleaved rows, 4 levels of 16+ element chunks) then / n.
float torch_mean_f32(const float* x, int64_t n);

}  // namespace frugal::quant
