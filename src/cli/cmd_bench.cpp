// cmd_bench.cpp: `frugal bench ops [--tokens T] [--hidden C] [--ffn F] [--heads H] [--kv-heads Hkv]
// [--head-dim D] [--vocab V] [--repeat R] [--what all|ops|block] [--quant both|nf4|none] [--json]`:
// times the hot ops at Llama-3-8B widths (default T=512, C=4096, F=14336, H=32, Hkv=8, D=128,
// V=128256). Each op runs once to warm up, then R times; the minimum (--stat min, the default: on a
// shared machine the least disturbed run) or the median (--stat median) is reported with its
// TFLOP/s and its ratio to the practical peak of this machine: the fastest of three plain oneDNN
// bf16 GEMMs of 2·T·C·F flops measured in the same run ([T,C]x[C,F] with W stored [F,C], the dx
// layout [T,F]x[F,C] with W [F,C], and a down_proj-shaped [T,F]x[F,C] with W [C,F]; their speeds
// differ by up to 2x on a Zen 4 with oneDNN 2.6).
// The block benchmark (--what block|all) builds one Llama decoder block from random weights (NF4
// and/or bf16 base, no LoRA, no trainable tensor) inside a 1-layer LlamaModel with a small vocab
// and times LlamaModel::forward_backward; the head (embedding, final norm, lm_head+CE) is timed
// on a 0-layer model with the same head and subtracted. FLOPs counted for the block:
//   linears 4·T·P (forward x·Wᵀ and backward dx = dy·W; frozen W needs no dW; P = linear params)
//   attention 14·(T²/2)·H·D (causal: forward QKᵀ, PV; backward S recompute, dP, dV, dK, dQ).
// A per-op breakdown runs THE block (src/model/block.h: block_forward/block_backward) with an
// OpTimer hook around each op (the whole-model figure stays the authoritative one).
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
#include "src/cli/cli.h"
#include "src/common.h"
#include "src/model/config.h"
#include "src/model/init.h"
#include "src/model/block.h"
#include "src/model/model.h"
#include "src/cli/bench_train.h"
#include "src/cli/bench_galore.h"
#include "src/cli/bench_shard.h"

namespace frugal {

namespace {

struct BenchOpsOptions {
  int tokens = 512, hidden = 4096, ffn = 14336, heads = 32, kv_heads = 8, head_dim = 128;
  int vocab = 128256;
  int repeat = 3;
  int block_vocab = 1024;        // vocab of the 1-layer model used by the block benchmark
  std::string what = "all";      // all | ops | block
  std::string quant = "both";    // block base weights: both | nf4 | none
  std::string stat = "min";      // min | median over the timed runs
  std::string device = "cpu";    // backend of the block benchmark (backend_by_name)
  bool json = false;
};

struct Result {
  std::string name;
  double ms = 0.0;      // min or median over the timed runs
  double flops = 0.0;   // per run (counted as noted in `note`)
  std::string note;
};

// Statistic over the timed runs: the minimum (default: on a shared machine the fastest run is
// the least disturbed one) or the median.
bool g_stat_min = true;
double pick(const std::vector<double>& t) {
  return g_stat_min ? *std::min_element(t.begin(), t.end()) : median_of(t);
}

// Wall time in ms (min or median, see g_stat_min) over `repeat` runs after one warm-up run.
double time_ms(int repeat, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < repeat; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  return pick(t);
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

// ---- the whole decoder block ------------------------------------------------------------------

// Widths of the block benchmark: Llama-3.1-8B's config with the bench's widths, `layers` layers
// and a small vocab (the head is subtracted anyway).
LlamaConfig block_config(const BenchOpsOptions& o, int layers) {
  LlamaConfig c = LlamaConfig::preset("llama3-8b-2layers");
  c.hidden_size = o.hidden;
  c.intermediate_size = o.ffn;
  c.num_attention_heads = o.heads;
  c.num_key_value_heads = o.kv_heads;
  c.head_dim = o.head_dim;
  c.rope.head_dim = o.head_dim;
  c.vocab_size = o.block_vocab;
  c.bos_token_id = 0;
  c.eos_token_ids = {0};
  c.num_hidden_layers = 1;
  c.validate("bench ops block config");
  c.num_hidden_layers = layers;  // 0 is not a valid HF config, but LlamaModel runs it (head only)
  return c;
}

// A LlamaModel with random bf16 weights (std 0.02, norms = 1), frozen linears NF4 or bf16.
LlamaModel make_random_model(const LlamaConfig& cfg, QuantMode quant, uint64_t seed, const std::string& device) {
  ModelOptions mo;
  mo.quant = quant;
  mo.backend = device;
  LlamaModel m(cfg, mo);
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size, Q = cfg.q_dim(), KV = cfg.kv_dim();
  const int64_t F = cfg.intermediate_size;
  auto randn = [&](const std::string& name, int64_t n) {
    avector<bf16> w((size_t)n);
    normal_bf16(w.data(), 0, n, cfg.initializer_range, init_stream_key(seed, name));
    return w;
  };
  m.embed = randn("model.embed_tokens.weight", V * C);
  if (!cfg.tie_word_embeddings) m.lm_head_w = randn("lm_head.weight", V * C);
  m.norm.name = "model.norm.weight";
  m.norm.w.assign((size_t)C, 1.f);
  m.blocks.resize(cfg.num_hidden_layers);
  for (int l = 0; l < cfg.num_hidden_layers; l++) {
    LlamaBlock& b = m.blocks[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    b.ln1.name = p + "input_layernorm.weight";
    b.ln1.w.assign((size_t)C, 1.f);
    b.ln2.name = p + "post_attention_layernorm.weight";
    b.ln2.w.assign((size_t)C, 1.f);
    auto linear = [&](LinearSite& s, const std::string& name, int64_t out, int64_t in) {
      s.name = p + name;
      avector<bf16> w = randn(s.name, out * in);
      s.W = quant == QuantMode::NF4 ? FrozenWeight::quantize_nf4(w.data(), out, in)
                                    : FrozenWeight::from_bf16(std::move(w), out, in);
    };
    linear(b.q, "self_attn.q_proj.weight", Q, C);
    linear(b.k, "self_attn.k_proj.weight", KV, C);
    linear(b.v, "self_attn.v_proj.weight", KV, C);
    linear(b.o, "self_attn.o_proj.weight", C, Q);
    linear(b.gate, "mlp.gate_proj.weight", F, C);
    linear(b.up, "mlp.up_proj.weight", F, C);
    linear(b.down, "mlp.down_proj.weight", C, F);
  }
  return m;
}

// Per-op timers: the block's OpTimer hook (src/model/block.h), ms accumulated per op name over
// one pass, in first-seen order. The backend is synchronized around each op.
struct OpTimes final : OpTimer {
  explicit OpTimes(Backend& be) : be_(be) {}
  std::vector<std::pair<std::string, double>> ms;
  void begin(const char* op) override {
    be_.synchronize();
    op_ = op;
    t0_ = std::chrono::steady_clock::now();
  }
  void end() override {
    be_.synchronize();
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
    for (auto& e : ms)
      if (e.first == op_) {
        e.second += t;
        return;
      }
    ms.emplace_back(op_, t);
  }

 private:
  Backend& be_;
  const char* op_ = "";
  std::chrono::steady_clock::time_point t0_;
};

// One forward + backward of block 0 of `m` through THE block (block_forward / block_backward of
// src/model/block.h) with a timer around each op; the upstream gradient of the backward is the
// block input itself (any [N,C] values do). x: [T,C] block input.
OpTimes block_pass_timed(LlamaModel& m, const float* x, int T) {
  const LlamaConfig& cfg = m.config();
  Backend& be = m.backend();
  const size_t N = T, NC = N * cfg.hidden_size;
  static thread_local BlockActs acts;
  static thread_local BlockScratch scratch;
  static thread_local avector<float> y, dres;
  acts.resize(cfg, N);
  scratch.resize(cfg, N, true);
  y.resize(NC), dres.resize(NC);
  RopeTable rope = be.rope_table(cfg.rope, T, T);
  std::vector<int32_t> pos(N);
  for (size_t i = 0; i < N; i++) pos[i] = (int32_t)i;
  CausalAttention attn(cfg, 1, T);
  OpTimes t(be);
  BlockPass p;
  p.B = 1, p.T = T, p.pos = pos.data(), p.rope = &rope, p.attention = &attn, p.timer = &t;
  block_forward(be, cfg, m.blocks[0], 0, p, x, acts, scratch, y.data());
  be.copy(dres.data(), x, NC * sizeof(float));
  block_backward(be, cfg, m.blocks[0], 0, p, x, acts, scratch, dres.data());
  return t;
}

struct BlockResult {
  std::string quant;             // "nf4" | "bf16"
  double fb_ms = 0, head_fb_ms = 0, block_fb_ms = 0;   // forward_backward: 1 layer, 0 layers, difference
  double f_ms = 0, head_f_ms = 0, block_f_ms = 0;      // forward (eval) likewise
  double flops_fb = 0, flops_f = 0, flops_linear_fb = 0, flops_attn_fb = 0;
  std::vector<std::pair<std::string, double>> ops;     // breakdown: ms per op (min or median)
  double ops_total_ms = 0;
  size_t frozen_bytes = 0;
};

BlockResult bench_block(const BenchOpsOptions& o, QuantMode quant) {
  const int T = o.tokens, R = o.repeat;
  LlamaConfig c1 = block_config(o, 1), c0 = block_config(o, 0);
  LlamaModel m1 = make_random_model(c1, quant, 42, o.device),
             m0 = make_random_model(c0, quant, 42, o.device);
  BlockResult r;
  r.quant = quant == QuantMode::NF4 ? "nf4" : "bf16";
  r.frozen_bytes = m1.memory_report().frozen_linear_bytes;
  std::vector<int32_t> ids(T);
  for (int i = 0; i < T; i++) ids[i] = (int32_t)(((uint64_t)i * 2654435761u + 7) % (uint64_t)c1.vocab_size);
  std::vector<int32_t> tgt = next_token_targets(ids.data(), 1, T);
  Batch b;
  b.B = 1, b.T = T, b.ids = ids.data(), b.targets = tgt.data();
  double loss = 0;
  r.fb_ms = time_ms(R, [&] { loss = m1.forward_backward(b).mean(); });
  FRUGAL_CHECK(std::isfinite(loss), "bench block: loss is not finite");
  r.head_fb_ms = time_ms(R, [&] { m0.forward_backward(b); });
  r.f_ms = time_ms(R, [&] { m1.forward(b); });
  r.head_f_ms = time_ms(R, [&] { m0.forward(b); });
  r.block_fb_ms = r.fb_ms - r.head_fb_ms;
  r.block_f_ms = r.f_ms - r.head_f_ms;
  const double C = c1.hidden_size, Q = c1.q_dim(), KV = c1.kv_dim(), F = c1.intermediate_size;
  const double P = C * Q + 2 * C * KV + Q * C + 3 * C * F;
  const double half = 0.5 * (double)T * T * c1.num_attention_heads * c1.head_dim;
  r.flops_linear_fb = 4.0 * T * P;
  r.flops_attn_fb = 14.0 * half;
  r.flops_fb = r.flops_linear_fb + r.flops_attn_fb;
  r.flops_f = 2.0 * T * P + 4.0 * half;

  // op breakdown: min/median per op over R timed passes after one warm-up
  avector<float> x((size_t)T * o.hidden);
  fill_f32(x.data(), x.size(), 1.f, 11);
  block_pass_timed(m1, x.data(), T);
  std::vector<OpTimes> runs;
  for (int i = 0; i < R; i++) runs.push_back(block_pass_timed(m1, x.data(), T));
  for (size_t k = 0; k < runs[0].ms.size(); k++) {
    std::vector<double> v;
    for (auto& t : runs) v.push_back(t.ms[k].second);
    const double ms = pick(v);
    r.ops.emplace_back(runs[0].ms[k].first, ms);
    r.ops_total_ms += ms;
  }
  return r;
}

void run_bench_ops(const BenchOpsOptions& o) {
  const int T = o.tokens, C = o.hidden, F = o.ffn, H = o.heads, Hkv = o.kv_heads, D = o.head_dim;
  const int V = o.vocab, R = o.repeat;
  backend_by_name(o.device);  // an unbuilt backend fails before any work
  FRUGAL_CHECK(T > 0 && C > 0 && F > 0 && H > 0 && Hkv > 0 && D > 0 && V > 0 && R > 0 && o.block_vocab > 0,
               "bench ops: all sizes and --repeat must be positive");
  FRUGAL_CHECK(H % Hkv == 0, "bench ops: --heads ", H, " is not a multiple of --kv-heads ", Hkv);
  if (o.what != "all" && o.what != "ops" && o.what != "block")
    fail("bench ops: --what '", o.what, "' is not one of all, ops, block");
  if (o.quant != "both" && o.quant != "nf4" && o.quant != "none")
    fail("bench ops: --quant '", o.quant, "' is not one of both, nf4, none");
  if (o.stat != "min" && o.stat != "median") fail("bench ops: --stat '", o.stat, "' is not min or median");
  g_stat_min = o.stat == "min";
  const bool do_ops = o.what != "block", do_block = o.what != "ops";
  std::vector<Result> res;
  auto note = [&](const char* s) {
    if (!o.json) std::fprintf(stderr, "bench ops: %s\n", s);
  };

  // ---- plain bf16 GEMM and linear layers: x[T,C] · W[F,C]ᵀ -> y[T,F] -------------------------
  double nf4_ratio = 0, nf4_bwd_ratio = 0;
  {
    avector<bf16> x((size_t)T * C), Wb((size_t)F * C), dy((size_t)T * F);
    fill_bf16(x.data(), x.size(), 1.f, 1);
    fill_bf16(Wb.data(), Wb.size(), 0.02f, 2);
    fill_bf16(dy.data(), dy.size(), 1.f, 3);
    avector<float> y((size_t)T * F), dx((size_t)T * C);
    const double lin_flops = 2.0 * T * C * F;
    note("plain bf16 GEMM");
    res.push_back({"gemm_bf16 [T,C]x[C,F]", time_ms(R, [&] {
                     gemm_bf16(false, true, T, F, C, 1.f, x.data(), C, Wb.data(), C, 0.f, y.data(), F);
                   }), lin_flops, "oneDNN matmul, W stored [F,C]"});
    // the same flops in the other layouts the block uses: dx = dy·W (W [F,C] not transposed) and a
    // down_proj-shaped forward [T,F]x[F,C] (W [C,F]); the peak is the fastest of the three
    res.push_back({"gemm_bf16 [T,F]x[F,C] (dx)", time_ms(R, [&] {
                     gemm_bf16(false, false, T, C, F, 1.f, dy.data(), F, Wb.data(), C, 0.f, dx.data(), C);
                   }), lin_flops, "oneDNN matmul, W stored [F,C]"});
    res.push_back({"gemm_bf16 [T,F]x[F,C] (down)", time_ms(R, [&] {
                     gemm_bf16(false, true, T, C, F, 1.f, dy.data(), F, Wb.data(), F, 0.f, dx.data(), C);
                   }), lin_flops, "oneDNN matmul, W stored [C,F]"});
    if (do_ops) {
      note("NF4 quantize");
      FrozenWeight Wq = FrozenWeight::quantize_nf4(Wb.data(), F, C);
      note("NF4 linear");
      res.push_back({"linear_forward NF4", time_ms(R, [&] { linear_forward(y.data(), x.data(), Wq, T); }),
                     lin_flops, "dequant tile by tile + GEMM"});
      FrozenWeight Wbf = FrozenWeight::from_bf16(Wb, F, C);
      res.push_back({"linear_backward_input bf16", time_ms(R, [&] {
                       linear_backward_input(dx.data(), dy.data(), Wbf, T);
                     }), lin_flops, "dx[T,C] = dy[T,F]·W"});
      res.push_back({"linear_backward_input NF4", time_ms(R, [&] {
                       linear_backward_input(dx.data(), dy.data(), Wq, T);
                     }), lin_flops, "dequant tile by tile + GEMM"});
      nf4_ratio = res[3].ms / res[0].ms;      // NF4 forward vs the same-layout plain GEMM
      nf4_bwd_ratio = res[5].ms / res[4].ms;
    }
  }

  // ---- lm_head + cross-entropy, forward and backward (dx and dW) ----------------------------
  if (do_ops) {
    note("lm_head_ce");
    avector<bf16> x((size_t)T * C);
    fill_bf16(x.data(), x.size(), 1.f, 1);
    avector<bf16> Wl((size_t)V * C);
    fill_bf16(Wl.data(), Wl.size(), 0.02f, 4);
    avector<float> dWl((size_t)V * C, 0.f), dxl((size_t)T * C);
    std::vector<int32_t> tgt(T);
    for (int i = 0; i < T; ++i) tgt[i] = (int32_t)((i * 2654435761u) % (uint32_t)V);
    double loss = 0.0;
    res.push_back({"lm_head_ce fwd+bwd", time_ms(R, [&] {
                     loss = lm_head_ce(x.data(), Wl.data(), tgt.data(), T, C, V, 1.f / T, dxl.data(),
                                       dWl.data(), nullptr);
                   }), 8.0 * T * C * V, "4 GEMMs of 2TCV (logits computed twice, dx, dW)"});
    res.push_back({"lm_head_ce fwd+dx", time_ms(R, [&] {
                     loss = lm_head_ce(x.data(), Wl.data(), tgt.data(), T, C, V, 1.f / T, dxl.data(),
                                       nullptr, nullptr);
                   }), 4.0 * T * C * V, "frozen head (LoRA): 2 GEMMs of 2TCV, one pass"});
    res.push_back({"lm_head_ce fwd", time_ms(R, [&] {
                     loss = lm_head_ce(x.data(), Wl.data(), tgt.data(), T, C, V, 1.f, nullptr, nullptr, nullptr);
                   }), 2.0 * T * C * V, "loss only"});
    FRUGAL_CHECK(std::isfinite(loss), "bench ops: lm_head_ce loss is not finite");
  }

  // ---- attention (causal, GQA): q [1,T,H,D], k/v [1,T,Hkv,D] --------------------------------
  if (do_ops) {
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
    res.push_back({"attention_forward", time_ms(R, [&] {
                     attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s);
                   }), 2.0 * 2.0 * half, "causal, 2 matmuls over T*T/2"});
    res.push_back({"attention_backward", time_ms(R, [&] {
                     attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                        v.data(), out.data(), lse.data(), s);
                   }), 5.0 * 2.0 * half, "causal, 5 matmuls over T*T/2"});
  }

  // ---- one decoder block, forward + backward ------------------------------------------------
  std::vector<BlockResult> blocks;
  if (do_block) {
    if (o.quant != "none") {
      note("decoder block, NF4 base");
      blocks.push_back(bench_block(o, QuantMode::NF4));
    }
    if (o.quant != "nf4") {
      note("decoder block, bf16 base");
      blocks.push_back(bench_block(o, QuantMode::None));
    }
  }

  auto tf = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  double peak_tflops = 0;  // the fastest plain GEMM of this run
  for (int i = 0; i < 3; i++) peak_tflops = std::max(peak_tflops, tf(res[i].flops, res[i].ms));
  if (o.json) {
    nlohmann::ordered_json j;
    j["threads"] = omp_get_max_threads();
    j["statistic"] = o.stat;
    j["shape"] = {{"tokens", T}, {"hidden", C}, {"ffn", F}, {"heads", H}, {"kv_heads", Hkv},
                  {"head_dim", D}, {"vocab", V}, {"repeat", R}};
    j["peak_tflops"] = peak_tflops;
    if (do_ops) {
      j["nf4_linear_forward_time_ratio"] = nf4_ratio;
      j["nf4_linear_backward_input_time_ratio"] = nf4_bwd_ratio;
    }
    j["ops"] = nlohmann::ordered_json::array();
    for (const Result& r : res) {
      double t = tf(r.flops, r.ms);
      j["ops"].push_back({{"name", r.name}, {"ms", r.ms}, {"tflops", t},
                          {"fraction_of_gemm_peak", t / peak_tflops}, {"flops", r.flops},
                          {"note", r.note}});
    }
    j["blocks"] = nlohmann::ordered_json::array();
    for (const BlockResult& b : blocks) {
      nlohmann::ordered_json jb;
      jb["base"] = b.quant;
      jb["block_vocab"] = o.block_vocab;
      jb["frozen_linear_bytes"] = b.frozen_bytes;
      jb["block_fwd_bwd_ms"] = b.block_fb_ms;
      jb["block_fwd_bwd_tflops"] = tf(b.flops_fb, b.block_fb_ms);
      jb["block_fwd_bwd_fraction_of_gemm_peak"] = tf(b.flops_fb, b.block_fb_ms) / peak_tflops;
      jb["block_fwd_ms"] = b.block_f_ms;
      jb["block_fwd_tflops"] = tf(b.flops_f, b.block_f_ms);
      jb["model_1layer_fwd_bwd_ms"] = b.fb_ms;
      jb["model_0layer_fwd_bwd_ms"] = b.head_fb_ms;
      jb["flops_fwd_bwd"] = b.flops_fb;
      jb["flops_linear_fwd_bwd"] = b.flops_linear_fb;
      jb["flops_attention_fwd_bwd"] = b.flops_attn_fb;
      jb["flops_note"] = "linears 4*T*P (fwd + dx; frozen W has no dW), attention 14*(T^2/2)*H*D";
      jb["breakdown_total_ms"] = b.ops_total_ms;
      jb["breakdown"] = nlohmann::ordered_json::array();
      for (auto& [n, ms] : b.ops) jb["breakdown"].push_back({{"op", n}, {"ms", ms}});
      j["blocks"].push_back(jb);
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("frugal bench ops: T=%d C=%d F=%d H=%d Hkv=%d D=%d V=%d, %d threads, %s of %d runs\n",
              T, C, F, H, Hkv, D, V, omp_get_max_threads(), o.stat.c_str(), R);
  std::printf("%-28s %10s %9s %8s  %s\n", "op", "ms", "TFLOP/s", "vs peak", "flops counted");
  for (const Result& r : res) {
    double t = tf(r.flops, r.ms);
    std::printf("%-28s %10.2f %9.4f %7.1f%%  %s\n", r.name.c_str(), r.ms, t, 100.0 * t / peak_tflops,
                r.note.c_str());
  }
  if (do_ops) {
    std::printf("NF4 linear_forward / plain GEMM time: %.3fx\n", nf4_ratio);
    std::printf("NF4 / bf16 linear_backward_input time: %.3fx\n", nf4_bwd_ratio);
  }
  for (const BlockResult& b : blocks) {
    std::printf("\ndecoder block, %s base (1-layer model minus 0-layer model, vocab %d):\n", b.quant.c_str(),
                o.block_vocab);
    std::printf("  fwd+bwd %9.2f ms  %7.4f TFLOP/s  %5.1f%% of GEMM peak   (model %.2f ms - head %.2f ms)\n",
                b.block_fb_ms, tf(b.flops_fb, b.block_fb_ms), 100.0 * tf(b.flops_fb, b.block_fb_ms) / peak_tflops,
                b.fb_ms, b.head_fb_ms);
    std::printf("  fwd     %9.2f ms  %7.4f TFLOP/s  %5.1f%% of GEMM peak\n", b.block_f_ms,
                tf(b.flops_f, b.block_f_ms), 100.0 * tf(b.flops_f, b.block_f_ms) / peak_tflops);
    std::printf("  flops: linears 4*T*P = %.1f GFLOP (fwd + dx), attention 14*(T^2/2)*H*D = %.1f GFLOP\n",
                b.flops_linear_fb * 1e-9, b.flops_attn_fb * 1e-9);
    std::printf("  op breakdown (same op sequence, timed op by op; total %.2f ms):\n", b.ops_total_ms);
    for (auto& [n, ms] : b.ops)
      std::printf("    %-22s %9.2f ms  %5.1f%%\n", n.c_str(), ms, 100.0 * ms / b.ops_total_ms);
  }
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
  ops->add_option("--repeat", o->repeat, "timed runs per op")->capture_default_str();
  ops->add_option("--stat", o->stat, "statistic over the timed runs: min | median")->capture_default_str();
  ops->add_option("--what", o->what, "all | ops (single ops) | block (one decoder block fwd+bwd)")
      ->capture_default_str();
  ops->add_option("--quant", o->quant, "block base weights: both | nf4 | none")->capture_default_str();
  ops->add_option("--block-vocab", o->block_vocab, "vocab of the 1-layer model of the block benchmark")
      ->capture_default_str();
  ops->add_option("--device", o->device, "backend of the block benchmark: cpu | cuda")->capture_default_str();
  ops->add_flag("--json", o->json, "print JSON instead of a table");
  ops->callback([o] { run_bench_ops(*o); });
  register_bench_train(*bench);  // frugal bench train (src/cli/bench_train.cpp)
  register_bench_shard(*bench);  // frugal bench shard (src/cli/bench_shard.cpp)
  register_bench_galore(*bench); // frugal bench galore (src/cli/bench_galore.cpp)
}

}  // namespace frugal
