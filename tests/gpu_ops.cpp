// gpu_ops.cpp: CUDA RMSNorm / SwiGLU / RoPE (kernels/cuda/{rmsnorm,swiglu,rope}.h) against the CPU references
// (kernels/cpu/*_ref, fp64 where the ref accumulates in fp64). Label `gpu`: every test skips where
// no device exists. Tolerances are the fp32 rounding budgets of the CPU tests (u = 2^-24 times the
// magnitude of the terms); the GPU's sum order differs from the CPU's, its budget is no larger.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "src/common.h"

using namespace frugal;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

namespace {
constexpr double kU = 5.9604644775390625e-08;  // 2^-24

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}
}  // namespace

TEST(CudaOps, RmsNormForwardBackwardMatchCpuRef) {
  SKIP_WITHOUT_GPU();
  for (int C : {111, 4099}) {
    const int N = 59;
    auto x = randn((size_t)N * C, 1 + C, 2.f), w = randn(C, 2 + C), dout = randn((size_t)N * C, 3 + C);
    std::vector<float> out((size_t)N * C), rstd(N), ref((size_t)N * C), rstd_r(N);
    cuda::rmsnorm_forward_host(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    rmsnorm_forward_ref(ref.data(), rstd_r.data(), x.data(), w.data(), N, C, 1e-5f);  // fp64 accumulation
    double worst = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      double e = std::abs((double)out[i] - ref[i]) / ((2.0 * C / 16 + 8) * kU * std::abs(ref[i]) + 1e-30);
      if (!(e <= worst)) worst = e;
    }
    EXPECT_TRUE(worst <= 1.0) << "forward C=" << C << " " << worst;

    // backward from the same rstd: dx overwritten, dw accumulated onto a non-zero start
    auto dw0 = randn(C, 4 + C);
    std::vector<float> dx((size_t)N * C, NAN), dw(dw0), dx_r((size_t)N * C), dw_r(dw0);
    cuda::rmsnorm_backward_host(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd_r.data(), N, C);
    rmsnorm_backward_ref(dx_r.data(), dw_r.data(), dout.data(), x.data(), w.data(), rstd_r.data(), N, C);
    double wx = 0, ww = 0;
    for (int n = 0; n < N; ++n) {
      double r = rstd_r[n], sabs = 0;
      for (int c = 0; c < C; ++c) sabs += std::abs((double)w[c] * dout[(size_t)n * C + c] * x[(size_t)n * C + c]);
      for (int c = 0; c < C; ++c) {
        size_t i = (size_t)n * C + c;
        double tol = kU * (3 * std::abs(r * w[c] * dout[i]) + (C / 16.0 + 8) * std::abs(x[i]) * r * r * r / C * sabs) + 1e-12;
        double e = std::abs((double)dx[i] - dx_r[i]) / tol;
        if (!(e <= wx)) wx = e;
      }
    }
    for (int c = 0; c < C; ++c) {
      double a = std::abs(dw0[c]);
      for (int n = 0; n < N; ++n) a += std::abs((double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd_r[n]);
      double e = std::abs((double)dw[c] - dw_r[c]) / (kU * (2 * N + 4) * a + 1e-12);
      if (!(e <= ww)) ww = e;
    }
    EXPECT_TRUE(wx <= 1.0) << "dx C=" << C << " " << wx;
    EXPECT_TRUE(ww <= 1.0) << "dw C=" << C << " " << ww;
  }
}

TEST(CudaOps, SwiGluMatchesFp64) {
  SKIP_WITHOUT_GPU();
  const size_t n = 100003;
  auto g = randn(n, 10, 4.f), u = randn(n, 11), d = randn(n, 12);
  g[0] = 90.f; g[1] = -90.f; g[2] = 0.f;
  std::vector<float> out(n), dg(n), du(n);
  cuda::swiglu_forward_host(out.data(), g.data(), u.data(), n);
  cuda::swiglu_backward_host(dg.data(), du.data(), d.data(), g.data(), u.data(), n);
  double wf = 0, wg = 0, wu = 0;
  for (size_t i = 0; i < n; ++i) {
    double gd = g[i], s = 1.0 / (1.0 + std::exp(-gd));
    double o = gd * s * u[i], dgg = d[i] * u[i] * s * (1 + gd * (1 - s)), duu = d[i] * gd * s;
    double ef = std::abs(out[i] - o) / (8 * kU * std::abs(o) + 1e-37);
    double eg = std::abs(dg[i] - dgg) / (16 * kU * std::abs((double)d[i] * u[i]) * (s + s * std::abs(gd) * (1 - s)) + 1e-37);
    double eu = std::abs(du[i] - duu) / (8 * kU * std::abs(duu) + 1e-37);
    if (!(ef <= wf)) wf = ef;
    if (!(eg <= wg)) wg = eg;
    if (!(eu <= wu)) wu = eu;
  }
  EXPECT_TRUE(wf <= 1.0) << wf;
  EXPECT_TRUE(wg <= 1.0) << wg;
  EXPECT_TRUE(wu <= 1.0) << wu;
}

TEST(CudaOps, RopeForwardBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  fm::RopeParams p;
  p.type = fm::ROPE_LLAMA3; p.theta = 500000.f; p.head_dim = 128; p.factor = 8.f;
  p.original_max_position_embeddings = 8192; p.max_position_embeddings = 131072;
  const int N = 59, H = 5, D = 128, half = D / 2, max_pos = 20011;
  RopeTable t = rope_table(p, max_pos, N);
  std::mt19937 rng(20);
  std::vector<int32_t> pos(N);
  for (auto& q : pos) q = (int32_t)(rng() % max_pos);
  auto x = randn((size_t)N * H * D, 21);
  std::vector<float> yg(x), yc((size_t)N * H * D);
  cuda::rope_forward_host(yg.data(), pos.data(), t, N, H, D);
  rope_forward_ref(yc.data(), x.data(), pos.data(), t, N, H, D);
  // backward of the forward output gives x back (llama3: attention factor 1, orthogonal rotation)
  std::vector<float> zg(yg);
  cuda::rope_backward_host(zg.data(), pos.data(), t, N, H, D);
  double wy = 0, wz = 0;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) {
        size_t o = ((size_t)n * H + h) * D, i = o + d;
        int k = d % half, pd = (d + half) % D;
        double c = t.cos[(size_t)pos[n] * half + k], s = t.sin[(size_t)pos[n] * half + k];
        double tol = 3 * kU * (std::abs(x[i] * c) + std::abs(x[o + pd] * s)) + 1e-30;
        double e = std::abs((double)yg[i] - yc[i]) / (2 * tol);  // both sides within tol of the exact value
        if (!(e <= wy)) wy = e;
        double ez = std::abs((double)zg[i] - x[i]) / (8 * kU * (std::abs(x[i]) + std::abs(x[o + pd])) + 1e-30);
        if (!(ez <= wz)) wz = ez;
      }
  EXPECT_TRUE(wy <= 1.0) << wy;
  EXPECT_TRUE(wz <= 1.0) << wz;
  pos[3] = max_pos;
  EXPECT_THROW(cuda::rope_forward_host(yg.data(), pos.data(), t, N, H, D), Error);
}
