// blockwise8.h: 8-bit blockwise dynamic quantization of optimizer moments (bitsandbytes' 8-bit
// Adam state, Dettmers et al. 2022), for galore.moments = "int8".
//   blocks of 256 elements; absmax[b] = max |x| over block b (fp32)
//   code[i]  = the map entry nearest to x[i] · (1 / absmax)   (|difference| in fp32; a tie takes the
//              lower index)
//   x'[i]    = map[code[i]] · absmax                          (one fp32 product)
// Maps: bitsandbytes' create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8), 256 values
// sorted ascending: unsigned (v) exactly bnb's; signed (m) bnb's with its smallest-magnitude
// negative entry (-5.5e-7) replaced by -1.0, so that both +1.0 and -1.0 are codes. The element of
// largest |x| then always decodes to ±absmax exactly, which makes the round trip idempotent:
// quantize(dequantize(codes, absmax)) returns the same codes and absmax bit for bit (checkpoints
// store the dequantized fp32 values; a resume requantizes them).
// Blocks whose absmax is below 2^-100 (all-zero blocks included) are stored as absmax 0 with the
// code of 0.0: every product map·absmax is then a normal float (or 0), so the round trip stays
// exact; the flushed values are below 7.9e-31 (a v that small is far below any eps²).
// Non-finite inputs throw naming `what` and the element.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"

namespace frugal::quant {

constexpr size_t kBlockwise8Block = 256;
// Tensors with fewer elements keep fp32 moments (bitsandbytes' min_8bit_size).
constexpr size_t kBlockwise8MinNumel = 4096;

// The 256 map values, ascending (signed: [0] = -1, [127] = 0, [255] = 1; unsigned: [0] = 0,
// [255] = 1).
const float* blockwise8_map(bool is_signed);
// bitsandbytes' create_dynamic_map, bit for bit (torch fp32 linspace, means, scaling), unmodified:
// the signed map's [0] is -0.99296875 (it has no -1). Tests compare it with fm::dyn8_code.
std::vector<float> bnb_dynamic_map(bool is_signed);

// The code of one scaled value s = x · (1 / absmax) (the fast path's rule).
uint8_t blockwise8_nearest(float s, bool is_signed);

// ---- reference: a linear scan over the map for each element -------------------------------
// x: [nblocks · 256]; codes: [nblocks · 256]; absmax: [nblocks]
void quantize_blockwise8_ref(const float* x, size_t nblocks, bool is_signed, uint8_t* codes, float* absmax,
                             const std::string& what);
// ---- fast path: a binary search over the map entries a 65536-bucket table (top 16 bits of the
// scaled value) leaves possible (same codes as _ref, bit for bit) ----------------------------
void quantize_blockwise8(const float* x, size_t nblocks, bool is_signed, uint8_t* codes, float* absmax,
                         const std::string& what);
void dequantize_blockwise8(const uint8_t* codes, const float* absmax, size_t nblocks, bool is_signed, float* x);

// One tensor's moment as one rank holds it: the flat range [begin, end) of the tensor (global
// element index). Quantized, its aligned 256-blocks lying entirely inside the range are 8-bit; the
// ragged ends (< 256 elements before the first and after the last such block) stay fp32. Blocks
// follow the global index, so a block is the same on every world size and on every rank that
// holds it. Not quantized: all fp32.
class Blockwise8Vector {
 public:
  // Zeros over [begin, end).
  void reset(size_t begin, size_t end, bool quantized, bool is_signed);
  size_t size() const { return end_ - begin_; }
  bool has_blocks() const { return qend_ > qbegin_; }
  // All elements when there are no 8-bit blocks.
  float* fp32() { return head_tail_.data(); }
  // out[i] = element begin + i, i < size()
  void get(float* out) const;
  // Stores in[0, size()) (quantizing the blocks); `what` names the tensor for errors.
  void set(const float* in, const std::string& what);
  size_t bytes() const { return bytes_for(begin_, end_, quantized_); }
  // 1 B per 8-bit element + 4 B per block absmax + 4 B per fp32 element.
  static size_t bytes_for(size_t begin, size_t end, bool quantized);

 private:
  size_t begin_ = 0, end_ = 0, qbegin_ = 0, qend_ = 0;  // 8-bit blocks: [qbegin, qend)
  bool quantized_ = false, signed_ = true;
  avector<float> head_tail_;  // [qbegin - begin] then [end - qend]
  std::vector<uint8_t> codes_;  // [qend - qbegin]
  std::vector<float> absmax_;   // [(qend - qbegin) / 256]
};

}  // namespace frugal::quant
