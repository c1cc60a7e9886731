// nf4.cu: NF4 dequantization on the device, mirror of quant/nf4.cpp nf4_dequantize_bf16.
//   absmax (double quant): dyn8_code(q[b]) * nested_absmax[b / 256] + offset   (no FMA)
//   out[i] = bf16_rne(nf4_code(nibble(start + i)) * absmax[(start + i) / blocksize])
// One thread per output element; the 16 codes are staged in shared memory.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"
#include "kernels/cuda/nf4.h"

namespace frugal::cuda {

namespace {
constexpr int kThreads = 256;

__global__ void nf4_absmax_dq_kernel(const uint8_t* absmax_q, const float* nested_absmax,
                                     float offset, int nested_blocksize, int64_t nblocks,
                                     float* absmax_f32) {
  int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b >= nblocks) return;
  absmax_f32[b] = fm::mul_add_unfused(fm::dyn8_code(absmax_q[b]), nested_absmax[b / nested_blocksize],
                                      offset);
}

__global__ void nf4_dequantize_bf16_kernel(const uint8_t* packed, const float* absmax_f32,
                                           int blocksize, int64_t start, int64_t count,
                                           uint16_t* out) {
  __shared__ float book[16];
  if (threadIdx.x < 16) book[threadIdx.x] = fm::nf4_code(threadIdx.x);
  __syncthreads();
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t j = start + i;  // flat element index
  const uint8_t byte = packed[j >> 1];
  const int nib = (j & 1) ? (byte & 15) : (byte >> 4);
  out[i] = fm::float_to_bf16_bits(__fmul_rn(book[nib], absmax_f32[j / blocksize]));
}

unsigned grid_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }
}  // namespace

void launch_nf4_absmax_dq(const uint8_t* absmax_q, const float* nested_absmax, float offset,
                          int nested_blocksize, int64_t nblocks, float* absmax_f32, void* stream) {
  if (nblocks == 0) return;
  FRUGAL_CHECK(nested_blocksize > 0, "nested_blocksize ", nested_blocksize);
  nf4_absmax_dq_kernel<<<grid_for(nblocks), kThreads, 0, (cudaStream_t)stream>>>(
      absmax_q, nested_absmax, offset, nested_blocksize, nblocks, absmax_f32);
  CUDA_CHECK(cudaGetLastError());
}

void launch_nf4_dequantize_bf16(const uint8_t* packed, const float* absmax_f32, int blocksize,
                                int64_t start, int64_t count, uint16_t* out, void* stream) {
  if (count == 0) return;
  FRUGAL_CHECK(blocksize > 0 && start >= 0 && count > 0, "blocksize ", blocksize, " start ", start,
               " count ", count);
  nf4_dequantize_bf16_kernel<<<grid_for(count), kThreads, 0, (cudaStream_t)stream>>>(
      packed, absmax_f32, blocksize, start, count, out);
  CUDA_CHECK(cudaGetLastError());
}

void nf4_dequantize_bf16_host(const quant::NF4Tensor& q, int64_t start, int64_t count, bf16* out) {
  if (start < 0 || count < 0 || start + count > q.numel)
    fail("cuda::nf4_dequantize_bf16_host: range [", start, ", ", start + count,
         ") outside the tensor of ", q.numel, " elements");
  const int64_t nb = q.nblocks();
  FRUGAL_CHECK((int64_t)q.packed.size() == (q.numel + 1) / 2, "NF4 packed size ", q.packed.size());
  FRUGAL_CHECK(q.double_quant ? (int64_t)q.absmax_q.size() == nb : (int64_t)q.absmax.size() == nb,
               "NF4 absmax size does not match ", nb, " blocks");
  if (count == 0) return;
  DeviceBuffer<uint8_t> d_packed(q.packed.data(), q.packed.size());
  DeviceBuffer<float> d_absmax((size_t)nb);
  DeviceBuffer<uint16_t> d_out((size_t)count);
  DeviceBuffer<uint8_t> d_aq;   // double quant only
  DeviceBuffer<float> d_nested;
  if (q.double_quant) {
    d_aq = DeviceBuffer<uint8_t>(q.absmax_q.data(), (size_t)nb);
    d_nested = DeviceBuffer<float>(q.nested_absmax.data(), q.nested_absmax.size());
    launch_nf4_absmax_dq(d_aq.data(), d_nested.data(), q.offset, q.nested_blocksize, nb, d_absmax.data(), nullptr);
  } else {
    d_absmax.upload(q.absmax.data(), (size_t)nb);
  }
  launch_nf4_dequantize_bf16(d_packed.data(), d_absmax.data(), q.blocksize, start, count, d_out.data(), nullptr);
  d_out.download(reinterpret_cast<uint16_t*>(out), (size_t)count);
}

}  // namespace frugal::cuda
