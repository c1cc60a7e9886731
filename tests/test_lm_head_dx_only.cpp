// test_lm_head_dx_only.cpp: lm_head_ce's single-pass path (dx wanted, dW not: a frozen lm_head, as
// in LoRA training), which accumulates Σ exp(z - m_running)·W with online rescaling instead of
// recomputing the logits. Checked against the fp64 reference lm_head_ce_ref with the error model
// of test_lm_head.cpp (u = 2^-24, ub = 2^-8):
//  logits |dz| <= dz_r = (C+2)·u·max_v Σ_c|x_rc·W_vc|; lse |dlse| <= e_r = dz_r + (2V+8)·u +
//  8u·(zmax_r + log V); softmax relative error <= ep_r = 2·e_r.
//  Non-target v: bf16(exp(z_v - m))·W_vc summed in fp32, rescaled once per vocab chunk at most and
//  divided by ℓ: |err| <= gs·((ub + (V + 2 + 2·nchunks + 8)·u)·p_v + 2·ep·p_v)·|W_vc|.
//  Target: gs·(p_t - 1)·W_tc in fp32: |err| <= gs·(2·ep·p_t + 4u)·|W_tc|.
// Losses must equal the forward-only call bit for bit (the same fp32 operations in the same order).
// Shapes: more rows than the row chunk, V not a multiple of the vocab chunk, ignored rows, and a
// "confident" case (targets = argmax, large logits, p_t near 1) where the target term dominates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "kernels/cpu/lm_head_ce.h"

using namespace frugal;

namespace {

void check_dx_only(int M, int C, int V, int ignore_every, float gs, float wscale, bool argmax_targets,
                   uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  avector<bf16> x((size_t)M * C), W((size_t)V * C);
  for (auto& v : x) v = bf16::from_float(d(g));
  for (auto& v : W) v = bf16::from_float(wscale / std::sqrt((float)C) * d(g));
  // fp64 logits (exact products of bf16 values) for targets and bounds
  std::vector<double> z((size_t)M * V), zmag(M, 0.0);
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < V; ++v) {
      double acc = 0.0, mag = 0.0;
      for (int c = 0; c < C; ++c) {
        double a = (double)x[(size_t)r * C + c].to_float() * W[(size_t)v * C + c].to_float();
        acc += a;
        mag += std::fabs(a);
      }
      z[(size_t)r * V + v] = acc;
      zmag[r] = std::max(zmag[r], mag);
    }
  std::vector<int32_t> t(M);
  std::uniform_int_distribution<int> dt(0, V - 1);
  for (int r = 0; r < M; ++r) {
    if (ignore_every > 0 && r % ignore_every == 2) {
      t[r] = kIgnoreIndex;
      continue;
    }
    t[r] = argmax_targets ? (int)(std::max_element(&z[(size_t)r * V], &z[(size_t)r * V] + V) - &z[(size_t)r * V])
                          : dt(g);
  }
  std::vector<float> dx((size_t)M * C, NAN), loss(M, NAN), loss_fwd(M, NAN);
  std::vector<float> dx_ref((size_t)M * C), loss_ref(M);
  double tot = lm_head_ce(x.data(), W.data(), t.data(), M, C, V, gs, dx.data(), nullptr, loss.data());
  double tot_fwd = lm_head_ce(x.data(), W.data(), t.data(), M, C, V, gs, nullptr, nullptr, loss_fwd.data());
  lm_head_ce_ref(x.data(), W.data(), t.data(), M, C, V, gs, dx_ref.data(), nullptr, loss_ref.data());
  EXPECT_EQ(tot, tot_fwd);
  EXPECT_TRUE(loss == loss_fwd) << "losses differ from the forward-only call";

  const double u = std::ldexp(1.0, -24), ub = std::ldexp(1.0, -8);
  const int nchunks = (V + kLmHeadVocabChunk - 1) / kLmHeadVocabChunk;
  double worst = 0.0, max_pt = 0.0;
  for (int r = 0; r < M; ++r) {
    if (t[r] == kIgnoreIndex) {
      for (int c = 0; c < C; ++c) EXPECT_EQ(dx[(size_t)r * C + c], 0.f) << "dx of ignored row " << r;
      continue;
    }
    const double* zr = &z[(size_t)r * V];
    double mx = *std::max_element(zr, zr + V), s = 0.0;
    for (int v = 0; v < V; ++v) s += std::exp(zr[v] - mx);
    const double lse = mx + std::log(s);
    const double dz = (C + 2) * u * zmag[r];
    const double ep = 2 * (dz + (2.0 * V + 8) * u + 8 * u * (zmag[r] + std::log((double)V)));
    max_pt = std::max(max_pt, std::exp(zr[t[r]] - lse));
    for (int c = 0; c < C; ++c) {
      double b = 0.0;
      for (int v = 0; v < V; ++v) {
        const double p = std::exp(zr[v] - lse), w = std::fabs(W[(size_t)v * C + c].to_float());
        b += v == t[r] ? (2 * ep * p + 4 * u) * w : ((ub + (V + 2.0 + 2 * nchunks + 8) * u) * p + 2 * ep * p) * w;
      }
      b *= std::fabs(gs);
      const double err = std::fabs((double)dx[(size_t)r * C + c] - dx_ref[(size_t)r * C + c]);
      const double q = err / (b + 1e-30);
      if (!(q <= worst)) worst = std::isnan(q) ? INFINITY : q;
    }
  }
  EXPECT_TRUE(worst <= 1.0) << "dx err/bound " << worst;
  std::printf("M=%d C=%d V=%d: dx-only worst err/bound %.3g (max p_target %.4f)\n", M, C, V, worst, max_pt);
}

}  // namespace

// More rows than the row chunk, 3 vocab chunks (V = 4103), every 5th row ignored.
TEST(LmHeadCEDxOnly, MultiChunkVsRef) { check_dx_only(611, 37, 4103, 5, 0.25f, 4.f, false, 3); }
// One row, one vocab chunk.
TEST(LmHeadCEDxOnly, SingleRowVsRef) { check_dx_only(1, 59, 1007, 0, 1.f, 4.f, false, 7); }
// Targets = argmax with large logits: p_target near 1, the (p_t - 1)·W_t term must stay accurate.
TEST(LmHeadCEDxOnly, ConfidentTargetsVsRef) { check_dx_only(59, 59, 2111, 0, 1.f, 24.f, true, 11); }
