// test_gemm.cpp: gemm_bf16 (oneDNN) against gemm_bf16_ref (naive, fp64 accumulation).
// Inputs are exact bf16 values, so every product a·b is exact in fp32 and the only error of the
// fast path is fp32 summation: |err| <= gamma_K * (|alpha|·Σ|a·b| + |beta·c|), gamma_K = K·2^-24
// (the worst-case bound for any summation order), plus one rounding of the result.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/gemm.h"

using namespace frugal;

namespace {

avector<bf16> rand_bf16(size_t n, std::mt19937& g, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  avector<bf16> v(n);
  for (auto& x : v) x = bf16::from_float(d(g));
  return v;
}

struct Case {
  bool ta, tb;
  int M, N, K, pad;
  float alpha, beta;
};

// Runs one case; returns the max of err / bound over all entries (must be <= 1).
void run_case(const Case& cs) {
  std::mt19937 g(1234 + cs.M * 7 + cs.N * 13 + cs.K + cs.ta * 2 + cs.tb);
  const int M = cs.M, N = cs.N, K = cs.K;
  // storage shapes: A [M,K] or [K,M]; B [K,N] or [N,K]; C [M,N]; leading dims padded.
  int a_rows = cs.ta ? K : M, a_cols = cs.ta ? M : K;
  int b_rows = cs.tb ? N : K, b_cols = cs.tb ? K : N;
  int lda = a_cols + cs.pad, ldb = b_cols + 2 * cs.pad, ldc = N + 3 * cs.pad;
  auto A = rand_bf16((size_t)a_rows * lda, g);
  auto B = rand_bf16((size_t)b_rows * ldb, g);
  std::vector<float> C0((size_t)M * ldc);
  std::uniform_real_distribution<float> d(-2.f, 2.f);
  for (auto& x : C0) x = d(g);
  const float guard = 12345.f;  // padding columns of C must stay untouched
  for (int m = 0; m < M; ++m)
    for (int n = N; n < ldc; ++n) C0[(size_t)m * ldc + n] = guard;
  if (cs.beta == 0.f)  // beta == 0 must overwrite C without reading it (NaN must not leak)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) C0[(size_t)m * ldc + n] = NAN;
  std::vector<float> C = C0, Cref = C0;
  gemm_bf16(cs.ta, cs.tb, M, N, K, cs.alpha, A.data(), lda, B.data(), ldb, cs.beta, C.data(), ldc);
  gemm_bf16_ref(cs.ta, cs.tb, M, N, K, cs.alpha, A.data(), lda, B.data(), ldb, cs.beta,
                Cref.data(), ldc);
  const double u = std::ldexp(1.0, -24);
  double worst = 0.0;
  int bad_guard = 0;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double mag = 0.0;
      for (int k = 0; k < K; ++k) {
        float a = cs.ta ? A[(size_t)k * lda + m].to_float() : A[(size_t)m * lda + k].to_float();
        float b = cs.tb ? B[(size_t)n * ldb + k].to_float() : B[(size_t)k * ldb + n].to_float();
        mag += std::fabs((double)a * b);
      }
      double cold = cs.beta == 0.f ? 0.0 : std::fabs((double)cs.beta * C0[(size_t)m * ldc + n]);
      double bound = (K + 2) * u * (std::fabs(cs.alpha) * mag + cold) + u * std::fabs(Cref[(size_t)m * ldc + n]) + 1e-30;
      double err = std::fabs((double)C[(size_t)m * ldc + n] - Cref[(size_t)m * ldc + n]);
      double r = err / bound;
      if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
    }
    for (int n = N; n < ldc; ++n) bad_guard += C[(size_t)m * ldc + n] != guard;
  }
  EXPECT_TRUE(worst <= 1.0) << "ta=" << cs.ta << " tb=" << cs.tb << " M=" << M << " N=" << N
                            << " K=" << K << " worst err/bound=" << worst;
  EXPECT_EQ(bad_guard, 0) << "gemm wrote outside the [M,N] window of C";
}

}  // namespace

// All four transpose combinations, odd sizes, leading dims larger than the minimum, alpha/beta.
TEST(Gemm, AllTransposesOddSizesVsRef) {
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      run_case({(bool)ta, (bool)tb, 59, 111, 77, 0, 1.f, 0.f});
      run_case({(bool)ta, (bool)tb, 59, 111, 77, 5, 0.75f, 1.f});
      run_case({(bool)ta, (bool)tb, 77, 59, 111, 3, -1.5f, 0.5f});
      run_case({(bool)ta, (bool)tb, 1, 111, 59, 1, 1.f, 0.f});  // M = 1 (decode-like)
    }
}

// Larger K exercises oneDNN's K blocking; the bound grows with K accordingly.
TEST(Gemm, LargeKVsRef) {
  run_case({false, true, 131, 257, 1031, 7, 1.f, 0.f});
  run_case({true, false, 129, 67, 2053, 1, 0.5f, 1.f});
}

// Repeating a shape reuses the cached primitive; a new beta is a new primitive.
TEST(Gemm, PrimitiveCache) {
  run_case({false, false, 61, 37, 43, 2, 1.f, 0.f});
  size_t n0 = gemm_primitive_cache_size();
  run_case({false, false, 61, 37, 43, 2, 1.f, 0.f});
  EXPECT_EQ(gemm_primitive_cache_size(), n0);
  run_case({false, false, 61, 37, 43, 2, 1.f, 1.f});
  EXPECT_EQ(gemm_primitive_cache_size(), n0 + 1);
}

// K = 0: C = beta*C; bad leading dimension throws frugal::Error naming the shape.
TEST(Gemm, EdgeCasesAndErrors) {
  std::vector<float> C(6, 2.f);
  bf16 dummy[1];
  gemm_bf16(false, false, 2, 3, 0, 1.f, dummy, 1, dummy, 3, 0.5f, C.data(), 3);
  for (float c : C) EXPECT_EQ(c, 1.f);
  try {
    gemm_bf16(false, false, 2, 3, 4, 1.f, dummy, 3 /* < K */, dummy, 3, 0.f, C.data(), 3);
    FAIL() << "expected frugal::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("M=2 N=3 K=4"), std::string::npos) << e.what();
  }
}

// gemm_bf16 called from inside an OpenMP parallel region (as linear_forward's NF4 tiles do):
// each thread runs its own GEMM on a per-thread stream; results must match the reference.
namespace {
// T thread tasks each run C_t = A·B_tᵀ from inside an OpenMP parallel region (how linear_forward
// runs its per-thread NF4 tiles); with warm_top_level the same shape first runs at top level, so
// a primitive planned for the whole thread team exists before the nested calls ask for one.
void check_nested(int M, int N, int K, bool warm_top_level) {
  const int T = 4;
  std::mt19937 g(99 + M + N + K);
  auto A = rand_bf16((size_t)M * K, g);
  std::vector<avector<bf16>> B;
  for (int t = 0; t < T; ++t) B.push_back(rand_bf16((size_t)N * K, g));
  std::vector<std::vector<float>> C(T, std::vector<float>((size_t)M * N, NAN)), R = C;
  if (warm_top_level) {
    std::vector<float> W((size_t)M * N);
    gemm_bf16(false, true, M, N, K, 1.f, A.data(), K, B[0].data(), K, 0.f, W.data(), N);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t < T; ++t)
    gemm_bf16(false, true, M, N, K, 1.f, A.data(), K, B[t].data(), K, 0.f, C[t].data(), N);
  const double u = std::ldexp(1.0, -24);
  for (int t = 0; t < T; ++t) {
    gemm_bf16_ref(false, true, M, N, K, 1.f, A.data(), K, B[t].data(), K, 0.f, R[t].data(), N);
    double worst = 0.0;
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double mag = 0.0;
        for (int k = 0; k < K; ++k)
          mag += std::fabs((double)A[(size_t)m * K + k].to_float() * B[t][(size_t)n * K + k].to_float());
        double err = std::fabs((double)C[t][(size_t)m * N + n] - R[t][(size_t)m * N + n]);
        double r = err / ((K + 2) * u * mag + 1e-30);
        if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
      }
    EXPECT_TRUE(worst <= 1.0) << "M=" << M << " N=" << N << " K=" << K << " thread task " << t
                              << " err/bound " << worst;
  }
}
}  // namespace

TEST(Gemm, NestedInParallelRegionVsRef) { check_nested(59, 111, 77, false); }

// Regression: oneDNN's own primitive cache once handed the nested calls the primitive planned at
// top level for the whole team (same descriptor at M = 1), which then computed only part of C.
TEST(Gemm, NestedAfterTopLevelSameShapeVsRef) {
  check_nested(1, 256, 2048, true);
  check_nested(1, 512, 576, true);
  check_nested(3, 128, 4096, true);
}
