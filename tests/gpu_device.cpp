// gpu_device.cpp: CUDA backend cross-checks against the CPU reference. Label `gpu`: every test
// skips cleanly where no device exists (the binary still proves CUDA, cuBLAS and NCCL link).
#include <gtest/gtest.h>

#include <random>

#include "kernels/cuda/device.h"
#include "src/common.h"

using namespace frugal;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

TEST(CudaDevice, ToolkitSummaryNamesLibraries) {
  std::string s = cuda::toolkit_summary();
  EXPECT_NE(s.find("cuBLAS"), std::string::npos) << s;
  EXPECT_NE(s.find("NCCL"), std::string::npos) << s;
}

TEST(CudaDevice, Bf16ConversionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const size_t n = 100003;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  x[0] = NAN; x[1] = INFINITY; x[2] = -0.0f; x[3] = 1e-40f;
  std::vector<bf16> cpu(n), gpu(n);
  float_to_bf16(x.data(), cpu.data(), n);
  cuda::float_to_bf16_host(x.data(), gpu.data(), n);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += cpu[i].bits != gpu[i].bits;
  EXPECT_EQ(bad, 0u);
}

TEST(CudaDevice, CublasGemmMatchesNaive) {
  SKIP_WITHOUT_GPU();
  const int M = 59, N = 111, K = 77;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> ud(-1.f, 1.f);
  std::vector<bf16> A(M * K), B(N * K);
  for (auto& v : A) v = bf16::from_float(ud(rng));
  for (auto& v : B) v = bf16::from_float(ud(rng));
  std::vector<float> C(M * N);
  cuda::gemm_bf16_nt_host(A.data(), B.data(), C.data(), M, N, K);
  double max_err = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k) ref += (double)A[m * K + k].to_float() * B[n * K + k].to_float();
      max_err = std::max(max_err, std::abs(ref - C[m * N + n]));
    }
  EXPECT_TRUE(max_err <= 1e-3) << max_err;  // exact bf16 products, fp32 accumulation over K=77
}
