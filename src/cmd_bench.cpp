// cmd_bench.cpp: `frugal bench ops [--tokens T] [--hidden C] [--ffn F] [--heads H] [--kv-heads Hkv]
// [--head-dim D] [--vocab V] [--repeat R] [--json]`: times the hot ops at Llama-3-8B widths
// (default T=512, C=4096, F=14336, H=32, Hkv=8, D=128, V=128256). Each op runs once to warm up,
// then R times; the median is reported with its TFLOP/s and its ratio to the plain oneDNN bf16
// GEMM [T,C]x[C,F] measured in the same run (the practical peak of this machine).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/lm_head_ce.h"
#include "src/cli.h"
#include "src/common.h"

namespace frugal {

namespace {

struct BenchOpsOptions {
  int tokens = 512, hidden = 4096, ffn = 14336, heads = 32, kv_heads = 8, head_dim = 128;
  int vocab = 128256;
  int repeat = 3;
  bool json = false;
};

struct Result {
  std::string name;
  double ms = 0.0;      // median
  double flops = 0.0;   // per run (counted as noted in `note`)
  std::string note;
};

// Median wall time in ms over `repeat` runs after one warm-up run.
double time_median_ms(int repeat, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < repeat; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  size_t n = t.size();
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

// Deterministic pseudo-random fill (bf16 uniform in [-a, a]).
void fill_bf16(bf16* p, size_t n, float a, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 29;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // [0,1)
    p[i] = bf16::from_float(a * (2.f * u - 1.f));
  }
}
void fill_f32(float* p, size_t n, float a, uint64_t seed) {
  avector<bf16> tmp(n);
  fill_bf16(tmp.data(), n, a, seed);
  bf16_to_float(tmp.data(), p, n);
}

void run_bench_ops(const BenchOpsOptions& o) {
  const int T = o.tokens, C = o.hidden, F = o.ffn, H = o.heads, Hkv = o.kv_heads, D = o.head_dim;
  const int V = o.vocab, R = o.repeat;
  FRUGAL_CHECK(T > 0 && C > 0 && F > 0 && H > 0 && Hkv > 0 && D > 0 && V > 0 && R > 0,
               "bench ops: all sizes and --repeat must be positive");
  FRUGAL_CHECK(H % Hkv == 0, "bench ops: --heads ", H, " is not a multiple of --kv-heads ", Hkv);
  std::vector<Result> res;
  auto note = [&](const char* s) {
    if (!o.json) std::fprintf(stderr, "bench ops: %s\n", s);
  };

  // ---- plain bf16 GEMM and linear layers: x[T,C] · W[F,C]ᵀ -> y[T,F] -------------------------
  avector<bf16> x((size_t)T * C), Wb((size_t)F * C), dy((size_t)T * F);
  fill_bf16(x.data(), x.size(), 1.f, 1);
  fill_bf16(Wb.data(), Wb.size(), 0.02f, 2);
  fill_bf16(dy.data(), dy.size(), 1.f, 3);
  avector<float> y((size_t)T * F), dx((size_t)T * C);
  const double lin_flops = 2.0 * T * C * F;
  note("plain bf16 GEMM");
  res.push_back({"gemm_bf16 [T,C]x[C,F]", time_median_ms(R, [&] {
                   gemm_bf16(false, true, T, F, C, 1.f, x.data(), C, Wb.data(), C, 0.f, y.data(), F);
                 }), lin_flops, "oneDNN matmul, W stored [F,C]"});
  note("NF4 quantize");
  FrozenWeight Wq = FrozenWeight::quantize_nf4(Wb.data(), F, C);
  note("NF4 linear");
  res.push_back({"linear_forward NF4", time_median_ms(R, [&] { linear_forward(y.data(), x.data(), Wq, T); }),
                 lin_flops, "dequant tile by tile + GEMM"});
  FrozenWeight Wbf = FrozenWeight::from_bf16(Wb, F, C);
  res.push_back({"linear_backward_input bf16", time_median_ms(R, [&] {
                   linear_backward_input(dx.data(), dy.data(), Wbf, T);
                 }), lin_flops, "dx[T,C] = dy[T,F]·W"});
  res.push_back({"linear_backward_input NF4", time_median_ms(R, [&] {
                   linear_backward_input(dx.data(), dy.data(), Wq, T);
                 }), lin_flops, "dequant tile by tile + GEMM"});
  Wbf = FrozenWeight();
  avector<bf16>().swap(Wb);
  avector<float>().swap(y);
  avector<bf16>().swap(dy);

  // ---- lm_head + cross-entropy, forward and backward (dx and dW) ----------------------------
  {
    note("lm_head_ce");
    avector<bf16> Wl((size_t)V * C);
    fill_bf16(Wl.data(), Wl.size(), 0.02f, 4);
    avector<float> dWl((size_t)V * C, 0.f), dxl((size_t)T * C);
    std::vector<int32_t> tgt(T);
    for (int i = 0; i < T; ++i) tgt[i] = (int32_t)((i * 2654435761u) % (uint32_t)V);
    double loss = 0.0;
    res.push_back({"lm_head_ce fwd+bwd", time_median_ms(R, [&] {
                     loss = lm_head_ce(x.data(), Wl.data(), tgt.data(), T, C, V, 1.f / T, dxl.data(),
                                       dWl.data(), nullptr);
                   }), 8.0 * T * C * V, "4 GEMMs of 2TCV (logits computed twice, dx, dW)"});
    res.push_back({"lm_head_ce fwd", time_median_ms(R, [&] {
                     loss = lm_head_ce(x.data(), Wl.data(), tgt.data(), T, C, V, 1.f, nullptr, nullptr, nullptr);
                   }), 2.0 * T * C * V, "loss only"});
    FRUGAL_CHECK(std::isfinite(loss), "bench ops: lm_head_ce loss is not finite");
  }

  // ---- attention (causal, GQA): q [1,T,H,D], k/v [1,T,Hkv,D] --------------------------------
  {
    note("attention");
    AttnShape s;
    s.B = 1; s.T = T; s.S = T; s.H = H; s.Hkv = Hkv; s.D = D;
    avector<float> q((size_t)T * H * D), k((size_t)T * Hkv * D), v((size_t)T * Hkv * D);
    avector<float> out((size_t)T * H * D), lse((size_t)H * T), dout((size_t)T * H * D);
    avector<float> dq(q.size()), dk(k.size()), dv(v.size());
    fill_f32(q.data(), q.size(), 1.f, 5);
    fill_f32(k.data(), k.size(), 1.f, 6);
    fill_f32(v.data(), v.size(), 1.f, 7);
    fill_f32(dout.data(), dout.size(), 1.f, 8);
    // causal: half of the T·T score matrix; forward 2 matmuls, backward 5 (S recomputed)
    const double half = 0.5 * T * (double)T * H * D;
    res.push_back({"attention_forward", time_median_ms(R, [&] {
                     attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s);
                   }), 2.0 * 2.0 * half, "causal, 2 matmuls over T*T/2"});
    res.push_back({"attention_backward", time_median_ms(R, [&] {
                     attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                        v.data(), out.data(), lse.data(), s);
                   }), 5.0 * 2.0 * half, "causal, 5 matmuls over T*T/2"});
  }

  const double peak_ms = res[0].ms;
  const double peak_tflops = res[0].flops / (peak_ms * 1e-3) / 1e12;
  const double nf4_ratio = res[1].ms / peak_ms;
  const double nf4_bwd_ratio = res[3].ms / res[2].ms;
  if (o.json) {
    nlohmann::ordered_json j;
    j["threads"] = omp_get_max_threads();
    j["shape"] = {{"tokens", T}, {"hidden", C}, {"ffn", F}, {"heads", H}, {"kv_heads", Hkv},
                  {"head_dim", D}, {"vocab", V}, {"repeat", R}};
    j["peak_tflops"] = peak_tflops;
    j["nf4_linear_forward_time_ratio"] = nf4_ratio;
    j["nf4_linear_backward_input_time_ratio"] = nf4_bwd_ratio;
    j["ops"] = nlohmann::ordered_json::array();
    for (const Result& r : res) {
      double tf = r.flops / (r.ms * 1e-3) / 1e12;
      j["ops"].push_back({{"name", r.name}, {"ms", r.ms}, {"tflops", tf},
                          {"fraction_of_gemm_peak", tf / peak_tflops}, {"flops", r.flops},
                          {"note", r.note}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("frugal bench ops: T=%d C=%d F=%d H=%d Hkv=%d D=%d V=%d, %d threads, median of %d\n",
              T, C, F, H, Hkv, D, V, omp_get_max_threads(), R);
  std::printf("%-28s %10s %9s %8s  %s\n", "op", "ms", "TFLOP/s", "vs peak", "flops counted");
  for (const Result& r : res) {
    double tf = r.flops / (r.ms * 1e-3) / 1e12;
    std::printf("%-28s %10.2f %9.4f %7.1f%%  %s\n", r.name.c_str(), r.ms, tf, 100.0 * tf / peak_tflops,
                r.note.c_str());
  }
  std::printf("NF4 linear_forward / plain GEMM time: %.3fx\n", nf4_ratio);
  std::printf("NF4 / bf16 linear_backward_input time: %.3fx\n", nf4_bwd_ratio);
}

}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto o = std::make_shared<BenchOpsOptions>();
  CLI::App* ops = bench->add_subcommand("ops", "time GEMM, NF4 linear, lm_head+CE and attention");
  ops->add_option("--tokens", o->tokens, "tokens T (rows of the activations)")->capture_default_str();
  ops->add_option("--hidden", o->hidden, "hidden size C")->capture_default_str();
  ops->add_option("--ffn", o->ffn, "intermediate size F")->capture_default_str();
  ops->add_option("--heads", o->heads, "attention heads H")->capture_default_str();
  ops->add_option("--kv-heads", o->kv_heads, "key/value heads Hkv")->capture_default_str();
  ops->add_option("--head-dim", o->head_dim, "head dimension D")->capture_default_str();
  ops->add_option("--vocab", o->vocab, "vocabulary size V for lm_head_ce")->capture_default_str();
  ops->add_option("--repeat", o->repeat, "timed runs per op (median reported)")->capture_default_str();
  ops->add_flag("--json", o->json, "print JSON instead of a table");
  ops->callback([o] { run_bench_ops(*o); });
}

}  // namespace frugal
