// gpu_nf4.cpp: the CUDA NF4 dequantization (kernels/cuda/nf4.cu) against the CPU fast path
// quant::nf4_dequantize_bf16 (itself checked against _ref and bitsandbytes in test_nf4.cpp).
// Both use the shared arithmetic of kernels/shared_math.h, so the results must be bit-identical.
// Label `gpu`: skips without a device.
#include <gtest/gtest.h>

#include <random>

#include "kernels/cuda/device.h"
#include "kernels/cuda/nf4.h"
#include "quant/nf4.h"

using namespace frugal;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

TEST(CudaNF4, DequantMatchesCpuBitExact) {
  SKIP_WITHOUT_GPU();
  std::mt19937 g(21);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t n = 59 * 111 * 37;  // odd numel, partial last block for every blocksize
  std::vector<float> x(n);
  for (auto& v : x) v = nd(g);
  x[100] = 0.f;
  for (int i = 0; i < 64; ++i) x[4096 + i] = 0.f;  // an all-zero block at blocksize <= 64
  for (int bs = 32; bs <= 4096; bs *= 2)
    for (bool dq : {true, false}) {
      SCOPED_TRACE(str("blocksize ", bs, " double_quant ", dq));
      quant::NF4Tensor q = quant::nf4_quantize(x.data(), {59 * 37, 111}, bs, dq);
      const std::pair<int64_t, int64_t> ranges[] = {{0, n}, {1, n - 1}, {n - 1, 1}, {7, 33},
                                                    {bs - 3, 2 * bs + 9}, {12345, 0}};
      for (auto [s, cnt] : ranges) {
        std::vector<bf16> cpu(cnt), gpu(cnt);
        quant::nf4_dequantize_bf16(q, s, cnt, cpu.data());
        cuda::nf4_dequantize_bf16_host(q, s, cnt, gpu.data());
        size_t bad = 0;
        for (int64_t i = 0; i < cnt; ++i) bad += cpu[i].bits != gpu[i].bits;
        EXPECT_EQ(bad, 0u) << "start " << s << " count " << cnt;
      }
    }
}

TEST(CudaNF4, RangeOutsideTensorThrows) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x(256, 1.f);
  quant::NF4Tensor q = quant::nf4_quantize(x.data(), {256}, 64, true);
  std::vector<bf16> out(8);
  EXPECT_THROW(cuda::nf4_dequantize_bf16_host(q, 250, 8, out.data()), Error);
}
