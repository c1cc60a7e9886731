// test_linear.cpp: frozen linear layers (bf16 and NF4 weights) against fp64 references.
//  - bf16 weights: reference = fp64 sums of the exact bf16 products; the fast path only adds fp32
//    summation error: |err| <= (K+2)·2^-24·Σ|a·b| (+ one rounding of the result and of beta·y).
//  - NF4 weights: reference uses nf4_dequantize_ref (fp32 weights) in fp64; the fast path
//    multiplies by the bf16-rounded dequantized weight, adding at most 2^-8·Σ|a·b| (bf16 has an
//    8-bit significand) on top of the fp32 summation bound.
// Odd sizes (59, 111, 77), M = 1, several NF4 tiles with a partial last tile, beta 0 (NaN in the
// output must be overwritten) and 1.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/linear.h"

using namespace frugal;

namespace {

avector<bf16> rand_bf16(size_t n, std::mt19937& g, float a) {
  std::uniform_real_distribution<float> d(-a, a);
  avector<bf16> v(n);
  for (auto& x : v) x = bf16::from_float(d(g));
  return v;
}

// Weight values the fast path multiplies by, in fp64: bf16 values, or the NF4 reference dequant.
std::vector<double> ref_weight(const FrozenWeight& W) {
  std::vector<double> w((size_t)(W.out * W.in));
  if (W.kind == FrozenWeight::Kind::BF16) {
    for (size_t i = 0; i < w.size(); ++i) w[i] = W.w[i].to_float();
  } else {
    std::vector<float> f(w.size());
    quant::nf4_dequantize_ref(W.q, f.data());
    for (size_t i = 0; i < w.size(); ++i) w[i] = f[i];
  }
  return w;
}

double rel_w(const FrozenWeight& W) { return W.kind == FrozenWeight::Kind::NF4 ? std::ldexp(1.0, -8) : 0.0; }

// Checks out[i] (fast) against ref[i] with bound (wr + (K+2)u)·mag[i] + u·(|ref| + |beta·old|).
double worst_ratio(const std::vector<float>& got, const std::vector<double>& ref,
                   const std::vector<double>& mag, const std::vector<float>& old, float beta,
                   double wr, int K) {
  const double u = std::ldexp(1.0, -24);
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    double ob = beta == 0.f ? 0.0 : std::fabs((double)beta * old[i]);
    double bound = (wr + (K + 2) * u) * mag[i] + (K + 2) * u * ob + u * std::fabs(ref[i]) + 1e-30;
    double r = std::fabs((double)got[i] - ref[i]) / bound;
    if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
  }
  return worst;
}

FrozenWeight make_weight(bool nf4, int out, int in, std::mt19937& g, int blocksize = 64, bool dq = true) {
  auto w = rand_bf16((size_t)out * in, g, 0.5f);
  if (nf4) return FrozenWeight::quantize_nf4(w.data(), out, in, blocksize, dq);
  return FrozenWeight::from_bf16(std::move(w), out, in);
}

// y[M,out] = x[M,in]·Wᵀ + beta·y
void check_forward(const FrozenWeight& W, int M, float beta, std::mt19937& g) {
  const int out = (int)W.out, in = (int)W.in;
  auto x = rand_bf16((size_t)M * in, g, 1.f);
  std::vector<float> y0((size_t)M * out);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (auto& v : y0) v = beta == 0.f ? NAN : d(g);
  std::vector<float> y = y0;
  linear_forward(y.data(), x.data(), W, M, beta);
  auto w = ref_weight(W);
  std::vector<double> ref(y.size()), mag(y.size());
  for (int m = 0; m < M; ++m)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0, ab = 0.0;
      for (int i = 0; i < in; ++i) {
        double p = (double)x[(size_t)m * in + i].to_float() * w[(size_t)o * in + i];
        acc += p;
        ab += std::fabs(p);
      }
      size_t k = (size_t)m * out + o;
      ref[k] = acc + (beta == 0.f ? 0.0 : (double)beta * y0[k]);
      mag[k] = ab;
    }
  double r = worst_ratio(y, ref, mag, y0, beta, rel_w(W), in);
  EXPECT_TRUE(r <= 1.0) << (W.kind == FrozenWeight::Kind::NF4 ? "NF4" : "bf16") << " forward M=" << M
                        << " out=" << out << " in=" << in << " beta=" << beta << " err/bound " << r;
}

// dx[M,in] = dy[M,out]·W + beta·dx
void check_backward_input(const FrozenWeight& W, int M, float beta, std::mt19937& g) {
  const int out = (int)W.out, in = (int)W.in;
  auto dy = rand_bf16((size_t)M * out, g, 1.f);
  std::vector<float> dx0((size_t)M * in);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (auto& v : dx0) v = beta == 0.f ? NAN : d(g);
  std::vector<float> dx = dx0;
  linear_backward_input(dx.data(), dy.data(), W, M, beta);
  auto w = ref_weight(W);
  std::vector<double> ref(dx.size()), mag(dx.size());
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < in; ++i) {
      double acc = 0.0, ab = 0.0;
      for (int o = 0; o < out; ++o) {
        double p = (double)dy[(size_t)m * out + o].to_float() * w[(size_t)o * in + i];
        acc += p;
        ab += std::fabs(p);
      }
      size_t k = (size_t)m * in + i;
      ref[k] = acc + (beta == 0.f ? 0.0 : (double)beta * dx0[k]);
      mag[k] = ab;
    }
  double r = worst_ratio(dx, ref, mag, dx0, beta, rel_w(W), out);
  EXPECT_TRUE(r <= 1.0) << (W.kind == FrozenWeight::Kind::NF4 ? "NF4" : "bf16") << " backward_input M="
                        << M << " out=" << out << " in=" << in << " beta=" << beta << " err/bound " << r;
}

}  // namespace

TEST(Linear, Bf16ForwardVsRef) {
  std::mt19937 g(1);
  auto W = make_weight(false, 111, 77, g);
  for (int M : {59, 1})
    for (float beta : {0.f, 1.f}) check_forward(W, M, beta, g);
}

TEST(Linear, Nf4ForwardVsRef) {
  std::mt19937 g(2);
  auto W = make_weight(true, 111, 77, g);  // 111·77 odd: the last packed byte is half used
  ASSERT_EQ(W.kind, FrozenWeight::Kind::NF4);
  for (int M : {59, 1})
    for (float beta : {0.f, 1.f}) check_forward(W, M, beta, g);
}

// Several row tiles (forward: 256-row tiles for 2 threads; backward: 512-row tiles) with a
// partial last tile; blocksize 128 without double quantization as well.
TEST(Linear, Nf4MultiTileVsRef) {
  std::mt19937 g(3);
  auto W = make_weight(true, 1031, 1100, g);
  ASSERT_LT(linear_nf4_tile_rows(1100), 1031);
  check_forward(W, 59, 0.f, g);
  check_forward(W, 1, 1.f, g);
  check_backward_input(W, 59, 1.f, g);
  check_backward_input(W, 1, 0.f, g);
  auto W2 = make_weight(true, 523, 2053, g, 128, false);
  check_forward(W2, 37, 0.f, g);
  check_backward_input(W2, 37, 0.f, g);
}

TEST(Linear, BackwardInputVsRef) {
  std::mt19937 g(4);
  for (bool nf4 : {false, true}) {
    auto W = make_weight(nf4, 111, 77, g);
    for (int M : {59, 1})
      for (float beta : {0.f, 1.f}) check_backward_input(W, M, beta, g);
  }
}

// dW[out,in] += dyᵀ·x, accumulated onto existing values.
TEST(Linear, BackwardWeightVsRef) {
  std::mt19937 g(5);
  for (int M : {59, 1}) {
    const int out = 111, in = 77;
    auto dy = rand_bf16((size_t)M * out, g, 1.f);
    auto x = rand_bf16((size_t)M * in, g, 1.f);
    std::vector<float> dW0((size_t)out * in);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    for (auto& v : dW0) v = d(g);
    std::vector<float> dW = dW0;
    linear_backward_weight(dW.data(), dy.data(), x.data(), M, out, in);
    std::vector<double> ref(dW.size()), mag(dW.size());
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) {
        double acc = 0.0, ab = 0.0;
        for (int m = 0; m < M; ++m) {
          double p = (double)dy[(size_t)m * out + o].to_float() * x[(size_t)m * in + i].to_float();
          acc += p;
          ab += std::fabs(p);
        }
        size_t k = (size_t)o * in + i;
        ref[k] = acc + dW0[k];
        mag[k] = ab;
      }
    double r = worst_ratio(dW, ref, mag, dW0, 1.f, 0.0, M);
    EXPECT_TRUE(r <= 1.0) << "backward_weight M=" << M << " err/bound " << r;
  }
}

// NF4 storage is ~4.127 bits per parameter; a bf16 buffer of the wrong size is rejected.
TEST(Linear, BytesAndErrors) {
  std::mt19937 g(6);
  auto Wb = make_weight(false, 64, 128, g);
  auto Wq = make_weight(true, 64, 128, g);
  EXPECT_EQ(Wb.bytes(), 64u * 128u * 2u);
  EXPECT_TRUE(Wq.bytes() * 3 < Wb.bytes()) << Wq.bytes();
  try {
    FrozenWeight::from_bf16(avector<bf16>(10), 3, 4);
    FAIL() << "expected frugal::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 4]"), std::string::npos) << e.what();
  }
}
