// test_embedding.cpp: embedding (kernels/cpu/embedding.h).
// The forward is checked against the naive `_ref` and the bf16 table rows; the backward against
// the serial ref, fp64 sums and central finite differences in fp64 of the random linear
// functional L = sum(dout * out). Tolerances: multiples of the fp32 unit roundoff (op_test_util.h).
// Sizes are odd (59, 111, ...) to hit the tails.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/embedding.h"
#include "src/common.h"
#include "tests/op_test_util.h"

using namespace frugal;
using namespace frugal::op_test;

TEST(Embedding, ForwardMatchesRefAndTable) {
  // checks: the gathered rows equal the bf16 table rows widened to fp32 exactly (bf16 -> fp32 is exact)
  const int N = 59, C = 111, V = 37;
  std::mt19937 rng(3);
  std::vector<bf16> table((size_t)V * C);
  for (auto& t : table) t = bf16::from_float(std::normal_distribution<float>(0.f, 1.f)(rng));
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = (int32_t)(rng() % V);
  ids[0] = 0; ids[1] = V - 1; ids[2] = ids[3];  // edges and a repeat
  std::vector<float> out((size_t)N * C, NAN), ref((size_t)N * C, NAN);
  embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
  embedding_forward_ref(ref.data(), ids.data(), table.data(), N, C, V);
  size_t bad = 0;
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      float want = table[(size_t)ids[n] * C + c].to_float();
      bad += !(out[(size_t)n * C + c] == want) + !(ref[(size_t)n * C + c] == want);
    }
  EXPECT_EQ(bad, 0u);
}

TEST(Embedding, BackwardScatterAddMatchesRefAndFiniteDifferences) {
  // checks: dtable += scatter(dout) against the serial ref (same summation order -> bitwise),
  // against fp64 sums, and a finite difference of L = sum(dout * forward(table)) in fp64.
  const int N = 59, C = 111, V = 13;  // V << N: many repeated ids
  std::mt19937 rng(4);
  std::vector<int32_t> ids(N);
  for (auto& id : ids) id = (int32_t)(rng() % V);
  auto dout = randn((size_t)N * C, 5);
  auto init = randn((size_t)V * C, 6);  // backward accumulates onto existing values
  std::vector<float> dt(init), dt_ref(init);
  omp_set_num_threads(2);
  embedding_backward(dt.data(), dout.data(), ids.data(), N, C, V);
  embedding_backward_ref(dt_ref.data(), dout.data(), ids.data(), N, C, V);
  std::vector<double> exact(init.begin(), init.end()), tol((size_t)V * C);
  std::vector<double> mag(init.size());
  for (size_t i = 0; i < init.size(); ++i) mag[i] = std::abs(init[i]);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      exact[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
      mag[(size_t)ids[n] * C + c] += std::abs(dout[(size_t)n * C + c]);
    }
  size_t diff_ref = 0;
  for (size_t i = 0; i < dt.size(); ++i) diff_ref += dt[i] != dt_ref[i];
  EXPECT_EQ(diff_ref, 0u);
  for (size_t i = 0; i < tol.size(); ++i) tol[i] = (N + 1) * kU * mag[i] + 1e-30;  // serial fp32 sum bound
  double w = worst_ratio(dt.data(), exact.data(), tol.data(), dt.size());
  EXPECT_TRUE(w <= 1.0) << w;

  // finite differences: table entries are multiples of 1/16 in [-2, 2] and h = 1/16, all exact in bf16
  std::vector<bf16> table((size_t)V * C);
  for (auto& t : table) t = bf16::from_float((float)((int)(rng() % 65) - 32) / 16.f);
  std::vector<float> out((size_t)N * C), g((size_t)V * C, 0.f);
  embedding_backward(g.data(), dout.data(), ids.data(), N, C, V);
  auto L = [&]() {
    embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += (double)dout[i] * out[i];
    return s;
  };
  double worst = 0;
  for (int k = 0; k < 40; ++k) {
    size_t i = rng() % table.size();
    bf16 t0 = table[i];
    const float h = 1.f / 16.f;
    table[i] = bf16::from_float(t0.to_float() + h);
    double lp = L();
    table[i] = bf16::from_float(t0.to_float() - h);
    double lm = L();
    table[i] = t0;
    double fd = (lp - lm) / (2.0 * h);
    double err = std::abs(fd - g[i]) / (N * kU * (1 + std::abs(fd)));
    if (!(err <= worst)) worst = err;
  }
  EXPECT_TRUE(worst <= 1.0) << worst;
}

TEST(Embedding, BadIdThrowsNamingIdAndVocab) {
  const int N = 5, C = 3, V = 7;
  std::vector<bf16> table((size_t)V * C, bf16::from_float(1.f));
  std::vector<int32_t> ids = {0, 1, 7, 2, 3};
  std::vector<float> out((size_t)N * C), dt((size_t)V * C, 0.f);
  try {
    embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
    FAIL() << "no throw for id 7 with V = 7";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("id 7"), std::string::npos) << m;
    EXPECT_NE(m.find("[0, 7)"), std::string::npos) << m;
  }
  ids[2] = -1;
  EXPECT_THROW(embedding_backward(dt.data(), out.data(), ids.data(), N, C, V), Error);
  EXPECT_THROW(embedding_forward_ref(out.data(), ids.data(), table.data(), N, C, V), Error);
}
