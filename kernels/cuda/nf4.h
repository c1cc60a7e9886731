// nf4.h (CUDA): device mirror of quant::nf4_dequantize_bf16. No CUDA types here: streams are
// passed as void* (a cudaStream_t; nullptr = the default stream). Defined in kernels/cuda/nf4.cu,
// linked only when the build has CUDA (FRUGAL_HAVE_CUDA). The arithmetic is the shared one in
// kernels/shared_math.h (fm::nf4_code, fm::dyn8_code, fm::mul_add_unfused,
// fm::float_to_bf16_bits), so results are bit-identical to the CPU path.
#pragma once
#include <cstdint>

#include "quant/nf4.h"
#include "src/common.h"

namespace frugal::cuda {

// Device pointers. absmax_f32[b] = dyn8_code(absmax_q[b]) * nested_absmax[b / nested_blocksize]
// + offset (product rounded first), b < nblocks. Mirrors quant::nf4_absmax_f32.
void launch_nf4_absmax_dq(const uint8_t* absmax_q, const float* nested_absmax, float offset,
                          int nested_blocksize, int64_t nblocks, float* absmax_f32, void* stream);

// Device pointers. out[i] (bf16 bits) = bf16(nf4_code(nibble(start + i)) * absmax_f32[(start + i)
// / blocksize]) for i < count; packed is the whole packed tensor (LOWER index in the HIGH nibble).
void launch_nf4_dequantize_bf16(const uint8_t* packed, const float* absmax_f32, int blocksize,
                                int64_t start, int64_t count, uint16_t* out, void* stream);

// Host buffers in and out (copies are part of the call): quant::nf4_dequantize_bf16 on the GPU.
void nf4_dequantize_bf16_host(const quant::NF4Tensor& q, int64_t start, int64_t count, bf16* out);

}  // namespace frugal::cuda
