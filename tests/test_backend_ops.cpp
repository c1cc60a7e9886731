// test_backend_ops.cpp: every op of every available backend (src/model/backend.h) against its
// naive reference in kernels/cpu (`_ref`, ggml test-backend-ops style). For each op: the
// normalized error ‖out - ref‖ / ‖ref‖ against a tolerance that follows from the precision (exact
// for copies and conversions, fp32 round-off for fp32 math against fp64 references), an explicit
// NaN/Inf check, and guard regions: every output buffer has kGuard poisoned elements after it that
// must come back untouched. Sizes are odd (37, 59, 111) so no tail is a multiple of a tile or a
// vector width. Buffers live in backend memory (alloc, copy_to_backend / copy_to_host), so the
// same checks run on a device backend; on a CPU-only build the CPU backend is still checked
// against the references. A CUDA backend is checked when it is built and a device exists (it is
// then listed by available_backends()), else its test is skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_decode.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/lm_head_ce.h"
#include "kernels/cpu/lora.h"
#include "kernels/cpu/residual.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "quant/nf4.h"
#include "src/model/backend.h"
#include "src/model/model.h"
#include "test_util.h"

namespace frugal {
namespace {

constexpr size_t kGuard = 7;          // poisoned elements after every buffer
constexpr unsigned char kPoison = 0xA5;

float urand(uint64_t seed, uint64_t i, float a) { return (2.f * fm::counter_uniform(seed, i) - 1.f) * a; }

// n elements of backend memory plus kGuard poisoned ones, with a host mirror h (n + kGuard).
template <class T>
struct DBuf {
  Backend& be;
  size_t n;
  std::vector<T> h;
  T* d;
  DBuf(Backend& b, size_t count) : be(b), n(count), h(count + kGuard), d(static_cast<T*>(b.alloc((count + kGuard) * sizeof(T)))) {
    std::memset(h.data(), 0, n * sizeof(T));
    std::memset(h.data() + n, kPoison, kGuard * sizeof(T));
    upload();
  }
  DBuf(const DBuf&) = delete;
  ~DBuf() { be.free(d); }
  void upload() { be.copy_to_backend(d, h.data(), h.size() * sizeof(T)); }
  void download() {
    be.synchronize();
    be.copy_to_host(h.data(), d, h.size() * sizeof(T));
  }
  bool guard_ok() const {
    const auto* p = reinterpret_cast<const unsigned char*>(h.data() + n);
    for (size_t i = 0; i < kGuard * sizeof(T); i++)
      if (p[i] != kPoison) return false;
    return true;
  }
};

DBuf<float>* rand_f32(Backend& be, size_t n, uint64_t seed, float a = 1.f) {
  auto* b = new DBuf<float>(be, n);
  for (size_t i = 0; i < n; i++) b->h[i] = urand(seed, i, a);
  b->upload();
  return b;
}
DBuf<bf16>* rand_bf16(Backend& be, size_t n, uint64_t seed, float a = 1.f) {
  auto* b = new DBuf<bf16>(be, n);
  for (size_t i = 0; i < n; i++) b->h[i] = bf16::from_float(urand(seed, i, a));
  b->upload();
  return b;
}
using F = std::unique_ptr<DBuf<float>>;
using H = std::unique_ptr<DBuf<bf16>>;

std::vector<float> host_f32(const DBuf<bf16>& b) {
  std::vector<float> f(b.n);
  for (size_t i = 0; i < b.n; i++) f[i] = b.h[i].to_float();
  return f;
}

// ‖out - ref‖ / ‖ref‖ (‖ref‖ = 0: the absolute norm), NaN propagates.
template <class R>
double nerr(const float* out, const R* ref, size_t n) {
  double e = 0, r = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)out[i] - (double)ref[i];
    e += d * d;
    r += (double)ref[i] * (double)ref[i];
  }
  return r > 0 ? std::sqrt(e / r) : std::sqrt(e);
}

// Downloads `out` and checks guard, finiteness and the normalized error against ref.
template <class R>
void expect_close(DBuf<float>& out, const R* ref, double tol, const std::string& what) {
  out.download();
  EXPECT_TRUE(out.guard_ok()) << what << ": wrote past the end of its output";
  size_t bad = 0;
  for (size_t i = 0; i < out.n; i++) bad += !std::isfinite(out.h[i]);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " NaN/Inf outputs";
  const double e = nerr(out.h.data(), ref, out.n);
  EXPECT_TRUE(e <= tol) << what << ": normalized error " << e << " > " << tol;
}
template <class R>
void expect_close(DBuf<float>& out, const std::vector<R>& ref, double tol, const std::string& what) {
  ASSERT_EQ(ref.size(), out.n) << what;
  expect_close(out, ref.data(), tol, what);
}

std::vector<double> to_f64(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// ---- the checks, one per op of the table ----------------------------------------------------------

using Check = std::function<void(Backend&)>;

void check_memory(Backend& be, const std::string& op) {
  if (op == "alloc" || op == "free") {
    void* p = be.alloc(59 * sizeof(float));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ((uintptr_t)p % 64, 0u) << "alloc is not 64-byte aligned";
    be.free(p);
    return;
  }
  F a(rand_f32(be, 111, 1));
  if (op == "copy_to_backend" || op == "copy_to_host" || op == "synchronize") {
    const std::vector<float> want(a->h.begin(), a->h.begin() + a->n);
    std::fill(a->h.begin(), a->h.begin() + a->n, 0.f);
    expect_close(*a, want, 0.0, op + " round trip");
  } else if (op == "copy") {
    F b(new DBuf<float>(be, 111));
    be.copy(b->d, a->d, a->n * sizeof(float));
    expect_close(*b, a->h.data(), 0.0, "copy");
  } else if (op == "zero") {
    be.zero(a->d, a->n);
    const std::vector<float> z(a->n, 0.f);
    expect_close(*a, z, 0.0, "zero");
  }
}

void check_elementwise(Backend& be, const std::string& op) {
  const size_t n = 111;
  if (op == "to_bf16") {
    F x(rand_f32(be, n, 2, 3.f));
    H y(new DBuf<bf16>(be, n));
    be.to_bf16(x->d, y->d, n);
    y->download();
    EXPECT_TRUE(y->guard_ok()) << "to_bf16 wrote past its output";
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += y->h[i].bits != bf16::from_float(x->h[i]).bits;  // round to nearest even
    EXPECT_EQ(diff, 0u) << "to_bf16 differs from bf16::from_float";
  } else if (op == "to_f32") {
    H x(rand_bf16(be, n, 3, 3.f));
    F y(new DBuf<float>(be, n));
    be.to_f32(x->d, y->d, n);
    expect_close(*y, host_f32(*x), 0.0, "to_f32");
  } else if (op == "add") {
    F y(rand_f32(be, n, 4)), x(rand_f32(be, n, 5));
    std::vector<float> ref(y->h.begin(), y->h.begin() + n);
    residual_add_ref(ref.data(), x->h.data(), n);
    be.add(y->d, x->d, n);
    expect_close(*y, ref, 0.0, "add");
  }
}

void check_embedding(Backend& be, const std::string& op) {
  const int N = 37, C = 59, V = 111;
  H table(rand_bf16(be, (size_t)V * C, 6));
  DBuf<int32_t> ids(be, N);
  for (int i = 0; i < N; i++) ids.h[i] = (int32_t)((i * 7 + 3) % V) / (i % 3 == 0 ? 1 : 2);  // repeats
  ids.upload();
  if (op == "embedding_forward") {
    F out(new DBuf<float>(be, (size_t)N * C));
    std::vector<float> ref((size_t)N * C);
    embedding_forward_ref(ref.data(), ids.h.data(), table->h.data(), N, C, V);
    be.embedding_forward(out->d, ids.d, table->d, N, C, V);
    expect_close(*out, ref, 0.0, op);
  } else {
    F dout(rand_f32(be, (size_t)N * C, 7)), dtable(rand_f32(be, (size_t)V * C, 8));
    std::vector<float> ref(dtable->h.begin(), dtable->h.begin() + dtable->n);
    embedding_backward_ref(ref.data(), dout->h.data(), ids.h.data(), N, C, V);
    be.embedding_backward(dtable->d, dout->d, ids.d, N, C, V);
    expect_close(*dtable, ref, 1e-6, op);
  }
}

void check_rmsnorm(Backend& be, const std::string& op) {
  const int N = 59, C = 111;
  const float eps = 1e-5f;
  F x(rand_f32(be, (size_t)N * C, 9, 2.f)), w(rand_f32(be, C, 10));
  std::vector<float> ref_out((size_t)N * C), ref_rstd(N);
  rmsnorm_forward_ref(ref_out.data(), ref_rstd.data(), x->h.data(), w->h.data(), N, C, eps);
  F out(new DBuf<float>(be, (size_t)N * C)), rstd(new DBuf<float>(be, N));
  be.rmsnorm_forward(out->d, rstd->d, x->d, w->d, N, C, eps);
  if (op == "rmsnorm_forward") {
    expect_close(*out, ref_out, 1e-6, "rmsnorm_forward out");
    expect_close(*rstd, ref_rstd, 1e-6, "rmsnorm_forward rstd");
    return;
  }
  F dout(rand_f32(be, (size_t)N * C, 11)), dx(new DBuf<float>(be, (size_t)N * C)), dw(rand_f32(be, C, 12));
  std::vector<float> ref_dx((size_t)N * C), ref_dw(dw->h.begin(), dw->h.begin() + C);
  rmsnorm_backward_ref(ref_dx.data(), ref_dw.data(), dout->h.data(), x->h.data(), w->h.data(), ref_rstd.data(), N, C);
  be.rmsnorm_backward(dx->d, dw->d, dout->d, x->d, w->d, rstd->d, N, C);
  expect_close(*dx, ref_dx, 1e-5, "rmsnorm_backward dx");
  expect_close(*dw, ref_dw, 1e-5, "rmsnorm_backward dw");
}

void check_rope(Backend& be, const std::string& op) {
  fm::RopeParams p;
  p.type = fm::ROPE_LLAMA3, p.theta = 500000.f, p.head_dim = 38, p.factor = 8.f;
  p.original_max_position_embeddings = 32, p.max_position_embeddings = 128;
  const int N = 59, H = 3, D = 38, P = 67, half = D / 2;
  const RopeTable t = be.rope_table(p, P, P);
  if (op == "rope_table") {
    // cos/sin of float(pos)·inv_freq (fp32 product, as transformers), evaluated in fp64
    std::vector<float> inv(half);
    fm::rope_inv_freq(p, P, inv.data());
    const double af = fm::rope_attention_factor(p);
    std::vector<double> rc((size_t)P * half), rs((size_t)P * half);
    for (int pos = 0; pos < P; pos++)
      for (int i = 0; i < half; i++) {
        const float f = (float)pos * inv[i];
        rc[(size_t)pos * half + i] = std::cos((double)f) * af;
        rs[(size_t)pos * half + i] = std::sin((double)f) * af;
      }
    ASSERT_EQ(t.cos.size(), rc.size());
    EXPECT_TRUE(nerr(t.cos.data(), rc.data(), rc.size()) <= 1e-6) << "rope_table cos";
    EXPECT_TRUE(nerr(t.sin.data(), rs.data(), rs.size()) <= 1e-6) << "rope_table sin";
    return;
  }
  DBuf<int32_t> pos(be, N);
  for (int i = 0; i < N; i++) pos.h[i] = (i * 13 + 5) % P;
  pos.upload();
  F x(rand_f32(be, (size_t)N * H * D, 13));
  std::vector<float> ref((size_t)N * H * D);
  if (op == "rope_forward") {
    rope_forward_ref(ref.data(), x->h.data(), pos.h.data(), t, N, H, D);
    be.rope_forward(x->d, pos.d, t, N, H, D);
  } else {
    rope_backward_ref(ref.data(), x->h.data(), pos.h.data(), t, N, H, D);
    be.rope_backward(x->d, pos.d, t, N, H, D);
  }
  expect_close(*x, ref, 1e-6, op);
}

void check_attention(Backend& be, const std::string& op) {
  if (op == "attention_decode") {
    const int S = 59, H = 4, Hkv = 2, D = 37, ld = 61;
    const float scale = 0.21f;
    F q(rand_f32(be, (size_t)H * D, 14)), K(rand_f32(be, (size_t)S * Hkv * D, 15)), V(rand_f32(be, (size_t)S * Hkv * D, 16));
    F out(new DBuf<float>(be, (size_t)H * D)), scores(new DBuf<float>(be, (size_t)H * ld));
    std::vector<float> ref((size_t)H * D);
    attention_decode_ref(ref.data(), q->h.data(), K->h.data(), V->h.data(), S, H, Hkv, D, scale);
    be.attention_decode(out->d, q->d, K->d, V->d, S, H, Hkv, D, scale, scores->d, ld);
    expect_close(*out, ref, 1e-5, op);
    scores->download();
    EXPECT_TRUE(scores->guard_ok()) << "attention_decode wrote past its scores scratch";
    return;
  }
  // causal self-attention, and a bottom-right aligned sliding window with more keys than queries
  for (const AttnShape s : {AttnShape{2, 59, 59, 4, 2, 37, 0.f, -1, 0}, AttnShape{1, 37, 59, 6, 3, 24, 0.3f, 16, 0}}) {
    const std::string tag = op + " T=" + std::to_string(s.T) + " S=" + std::to_string(s.S);
    const size_t nq = (size_t)s.B * s.T * s.H * s.D, nk = (size_t)s.B * s.S * s.Hkv * s.D;
    const size_t nl = (size_t)s.B * s.H * s.T;
    F q(rand_f32(be, nq, 17)), k(rand_f32(be, nk, 18)), v(rand_f32(be, nk, 19));
    F out(new DBuf<float>(be, nq)), lse(new DBuf<float>(be, nl));
    be.attention_forward(out->d, lse->d, q->d, k->d, v->d, s);
    const std::vector<double> qd = to_f64({q->h.begin(), q->h.begin() + nq}),
                              kd = to_f64({k->h.begin(), k->h.begin() + nk}),
                              vd = to_f64({v->h.begin(), v->h.begin() + nk});
    if (op == "attention_forward") {
      std::vector<double> ro(nq), rl(nl);
      attention_forward_ref(ro.data(), rl.data(), qd.data(), kd.data(), vd.data(), s);
      expect_close(*out, ro, 1e-5, tag + " out");
      expect_close(*lse, rl, 1e-6, tag + " lse");
      continue;
    }
    F dout(rand_f32(be, nq, 20)), dq(new DBuf<float>(be, nq)), dk(new DBuf<float>(be, nk)), dv(new DBuf<float>(be, nk));
    const std::vector<double> dod = to_f64({dout->h.begin(), dout->h.begin() + nq});
    std::vector<double> rq(nq), rk(nk), rv(nk);
    attention_backward_ref(rq.data(), rk.data(), rv.data(), dod.data(), qd.data(), kd.data(), vd.data(), s);
    be.attention_backward(dq->d, dk->d, dv->d, dout->d, q->d, k->d, v->d, out->d, lse->d, s);
    expect_close(*dq, rq, 1e-4, tag + " dq");
    expect_close(*dk, rk, 1e-4, tag + " dk");
    expect_close(*dv, rv, 1e-4, tag + " dv");
  }
}

void check_swiglu(Backend& be, const std::string& op) {
  const size_t n = 111 * 59;
  F gate(rand_f32(be, n, 21, 4.f)), up(rand_f32(be, n, 22, 2.f));
  if (op == "swiglu_forward") {
    F out(new DBuf<float>(be, n));
    std::vector<float> ref(n);
    swiglu_forward_ref(ref.data(), gate->h.data(), up->h.data(), n);
    be.swiglu_forward(out->d, gate->d, up->d, n);
    expect_close(*out, ref, 1e-6, op);
  } else {
    F dout(rand_f32(be, n, 23)), dg(new DBuf<float>(be, n)), du(new DBuf<float>(be, n));
    std::vector<float> rg(n), ru(n);
    swiglu_backward_ref(rg.data(), ru.data(), dout->h.data(), gate->h.data(), up->h.data(), n);
    be.swiglu_backward(dg->d, du->d, dout->d, gate->d, up->d, n);
    expect_close(*dg, rg, 1e-6, op + " dgate");
    expect_close(*du, ru, 1e-6, op + " dup");
  }
}

// W [out, in] as bf16 (the NF4 weight dequantized) for the GEMM references.
std::vector<bf16> dense_bf16(const FrozenWeight& W) {
  if (W.kind == FrozenWeight::Kind::BF16) return {W.w.begin(), W.w.end()};
  std::vector<bf16> w((size_t)W.out * W.in);
  quant::nf4_dequantize_bf16(W.q, 0, (int64_t)w.size(), w.data());
  return w;
}

void check_linear(Backend& be, const std::string& op) {
  if (op == "linear_nf4_scratch_elems") {
    EXPECT_GT(be.linear_nf4_scratch_elems(4096, 14336, 2), 0u);
    EXPECT_GT(be.linear_nf4_scratch_elems(59, 111, 3), 0u);
    return;
  }
  const int M = 59;
  std::vector<bf16> w0;
  for (size_t i = 0; i < (size_t)37 * 192; i++) w0.push_back(bf16::from_float(urand(24, i, 0.1f)));
  avector<bf16> wb(59 * 111);
  for (size_t i = 0; i < wb.size(); i++) wb[i] = bf16::from_float(urand(25, i, 0.1f));
  std::vector<FrozenWeight> ws;
  ws.push_back(FrozenWeight::from_bf16(wb, 59, 111));       // bf16 [59, 111]
  ws.push_back(FrozenWeight::quantize_nf4(w0.data(), 37, 192));  // NF4 [37, 192]: 111 blocks of 64
  for (const FrozenWeight& W : ws) {
    const int out = (int)W.out, in = (int)W.in;
    const std::string tag = op + (W.kind == FrozenWeight::Kind::NF4 ? " NF4" : " bf16");
    const std::vector<bf16> Wd = dense_bf16(W);
    if (op == "linear_forward") {
      H x(rand_bf16(be, (size_t)M * in, 26));
      F y(rand_f32(be, (size_t)M * out, 27));
      std::vector<float> ref(y->h.begin(), y->h.begin() + y->n);
      gemm_bf16_ref(false, true, M, out, in, 1.f, x->h.data(), in, Wd.data(), in, 0.5f, ref.data(), out);
      be.linear_forward(y->d, x->d, W, M, 0.5f);
      expect_close(*y, ref, 1e-5, tag);
    } else if (op == "linear_backward_input") {
      H dy(rand_bf16(be, (size_t)M * out, 28));
      F dx(rand_f32(be, (size_t)M * in, 29));
      std::vector<float> ref(dx->h.begin(), dx->h.begin() + dx->n);
      gemm_bf16_ref(false, false, M, in, out, 1.f, dy->h.data(), out, Wd.data(), in, 1.f, ref.data(), in);
      be.linear_backward_input(dx->d, dy->d, W, M, 1.f);
      expect_close(*dx, ref, 1e-5, tag);
    } else {  // linear_backward_weight: dW += dyᵀ·x (independent of W's storage)
      H dy(rand_bf16(be, (size_t)M * out, 30)), x(rand_bf16(be, (size_t)M * in, 31));
      F dW(rand_f32(be, (size_t)out * in, 32));
      std::vector<float> ref(dW->h.begin(), dW->h.begin() + dW->n);
      gemm_bf16_ref(true, false, out, in, M, 1.f, dy->h.data(), out, x->h.data(), in, 1.f, ref.data(), in);
      be.linear_backward_weight(dW->d, dy->d, x->d, M, out, in);
      expect_close(*dW, ref, 1e-5, tag);
    }
  }
}

void check_lora(Backend& be, const std::string& op) {
  const int N = 59;
  if (op == "lora_chunk_rows") {  // whole chunks of at most lora_chunk_budget() fp32 elements
    for (const auto& [in, out, n] : std::vector<std::array<int, 3>>{{111, 37, 59}, {4096, 14336, 4096}, {1 << 21, 7, 3}}) {
      const int rows = be.lora_chunk_rows(in, out, n);
      EXPECT_TRUE(rows >= 1 && rows <= n) << "lora_chunk_rows " << rows << " for N=" << n;
      EXPECT_TRUE(rows == 1 || (int64_t)rows * std::max(in, out) <= lora_chunk_budget()) << rows;
    }
    return;
  }
  for (const bool drop : {false, true}) {
    LoraDims d;
    d.r = 5, d.in = 111, d.out = 37, d.scale = 1.7f;
    d.dropout = drop ? 0.3f : 0.f, d.dropout_active = drop;
    d.mask_key = fm::lora_mask_key(7, 3, 1, 2, 4), d.mask_row0 = drop ? 11 : 0;
    const std::string tag = op + (drop ? " dropout" : "");
    F A(rand_f32(be, (size_t)d.r * d.in, 33, 0.3f)), B(rand_f32(be, (size_t)d.out * d.r, 34, 0.3f));
    H x(rand_bf16(be, (size_t)N * d.in, 35));
    F u(new DBuf<float>(be, (size_t)N * d.r)), y(rand_f32(be, (size_t)N * d.out, 36));
    std::vector<float> ru(u->n), ry(y->h.begin(), y->h.begin() + y->n);
    lora_forward_ref(d, A->h.data(), B->h.data(), x->h.data(), ru.data(), ry.data(), N);
    be.lora_forward(d, A->d, B->d, x->d, u->d, y->d, N);
    if (op == "lora_forward") {
      expect_close(*u, ru, 1e-5, tag + " u");
      expect_close(*y, ry, 1e-5, tag + " y");
      continue;
    }
    H dy(rand_bf16(be, (size_t)N * d.out, 37));
    F dA(rand_f32(be, A->n, 38, 0.1f)), dB(rand_f32(be, B->n, 39, 0.1f)), dx(rand_f32(be, (size_t)N * d.in, 40));
    std::vector<float> rA(dA->h.begin(), dA->h.begin() + dA->n), rB(dB->h.begin(), dB->h.begin() + dB->n);
    std::vector<float> rx(dx->h.begin(), dx->h.begin() + dx->n);
    lora_backward_ref(d, A->h.data(), B->h.data(), ru.data(), dy->h.data(), x->h.data(), rA.data(), rB.data(),
                      rx.data(), N);
    be.lora_backward(d, A->d, B->d, u->d, dy->d, x->d, dA->d, dB->d, dx->d, N);
    expect_close(*dA, rA, 1e-5, tag + " dA");
    expect_close(*dB, rB, 1e-5, tag + " dB");
    expect_close(*dx, rx, 1e-5, tag + " dx");
  }
}

void check_head(Backend& be, const std::string& op) {
  const int M = 59, C = 37, V = 111;
  H x(rand_bf16(be, (size_t)M * C, 41)), W(rand_bf16(be, (size_t)V * C, 42, 0.5f));
  if (op == "lm_head_logits") {
    F logits(new DBuf<float>(be, (size_t)M * V));
    std::vector<float> ref((size_t)M * V);
    gemm_bf16_ref(false, true, M, V, C, 1.f, x->h.data(), C, W->h.data(), C, 0.f, ref.data(), V);
    be.lm_head_logits(logits->d, x->d, W->d, M, C, V);
    expect_close(*logits, ref, 1e-5, op);
    return;
  }
  DBuf<int32_t> tgt(be, M);
  for (int i = 0; i < M; i++) tgt.h[i] = i % 5 == 0 ? kIgnoreIndex : (i * 31 + 7) % V;
  tgt.upload();
  F dx(new DBuf<float>(be, (size_t)M * C)), dW(rand_f32(be, (size_t)V * C, 43, 0.1f)), losses(new DBuf<float>(be, M));
  std::vector<float> rdx((size_t)M * C), rdW(dW->h.begin(), dW->h.begin() + dW->n), rl(M);
  const float gs = 1.f / 47;
  const double ref = lm_head_ce_ref(x->h.data(), W->h.data(), tgt.h.data(), M, C, V, gs, rdx.data(), rdW.data(), rl.data());
  const double got = be.lm_head_ce(x->d, W->d, tgt.d, M, C, V, gs, dx->d, dW->d, losses->d);
  EXPECT_TRUE(std::fabs(got - ref) <= 1e-5 * std::fabs(ref)) << "lm_head_ce loss " << got << " vs " << ref;
  expect_close(*losses, rl, 1e-5, "lm_head_ce losses");
  // the fast path rounds the logit gradient to bf16 for its GEMMs: errors of a few 2^-9
  expect_close(*dx, rdx, 1e-2, "lm_head_ce dx");
  expect_close(*dW, rdW, 1e-2, "lm_head_ce dW");
}

void check_optim(Backend& be, const std::string& op) {
  const std::vector<size_t> sizes = {59, 111, 1000, 37};
  std::vector<F> w, g, m, v;
  for (size_t c = 0; c < sizes.size(); c++) {
    w.emplace_back(rand_f32(be, sizes[c], 50 + c));
    g.emplace_back(rand_f32(be, sizes[c], 60 + c, 0.1f));
    m.emplace_back(rand_f32(be, sizes[c], 70 + c, 0.01f));
    v.emplace_back(rand_f32(be, sizes[c], 80 + c, 0.01f));
    for (size_t i = 0; i < sizes[c]; i++) v[c]->h[i] = std::fabs(v[c]->h[i]);  // second moments are >= 0
    v[c]->upload();
  }
  if (op == "adamw_update") {
    for (const float w1 : {0.1f, 0.7f}) {  // both ends of torch's lerp
      const AdamWScalars k{0.9995f, w1, 0.999f, 0.001f, -1e-3f / 0.19f, std::sqrt(0.002f), 1e-8f, w1 < 0.5f};
      std::vector<AdamWChunk> dc, hc;
      std::vector<std::vector<float>> rw, rm, rv;
      for (size_t c = 0; c < sizes.size(); c++) {
        rw.emplace_back(w[c]->h.begin(), w[c]->h.begin() + sizes[c]);
        rm.emplace_back(m[c]->h.begin(), m[c]->h.begin() + sizes[c]);
        rv.emplace_back(v[c]->h.begin(), v[c]->h.begin() + sizes[c]);
      }
      for (size_t c = 0; c < sizes.size(); c++) {
        dc.push_back({w[c]->d, g[c]->d, m[c]->d, v[c]->d, sizes[c]});
        hc.push_back({rw[c].data(), g[c]->h.data(), rm[c].data(), rv[c].data(), sizes[c]});
      }
      adamw_update_ref(hc.data(), hc.size(), k);
      be.adamw_update(dc.data(), dc.size(), k);
      for (size_t c = 0; c < sizes.size(); c++) {
        const std::string tag = "adamw_update w1=" + std::to_string(w1) + " chunk " + std::to_string(c);
        expect_close(*w[c], rw[c], 1e-6, tag + " w");
        expect_close(*m[c], rm[c], 1e-6, tag + " m");
        expect_close(*v[c], rv[c], 1e-6, tag + " v");
      }
    }
    return;
  }
  std::vector<GradChunk> dc, hc;
  std::vector<std::vector<float>> rg;
  for (size_t c = 0; c < sizes.size(); c++) rg.emplace_back(g[c]->h.begin(), g[c]->h.begin() + sizes[c]);
  for (size_t c = 0; c < sizes.size(); c++) {
    dc.push_back({g[c]->d, sizes[c]});
    hc.push_back({rg[c].data(), sizes[c]});
  }
  if (op == "grad_sq_sums") {
    std::vector<double> ref(sizes.size()), got(sizes.size(), NAN);
    grad_sq_sums_ref(hc.data(), hc.size(), ref.data());
    be.grad_sq_sums(dc.data(), dc.size(), got.data());
    for (size_t c = 0; c < sizes.size(); c++)
      EXPECT_TRUE(std::fabs(got[c] - ref[c]) <= 1e-12 * ref[c]) << "grad_sq_sums chunk " << c << ": " << got[c] << " vs " << ref[c];
  } else {  // grad_scale
    grad_scale_ref(hc.data(), hc.size(), 0.37f);
    be.grad_scale(dc.data(), dc.size(), 0.37f);
    for (size_t c = 0; c < sizes.size(); c++) expect_close(*g[c], rg[c], 0.0, "grad_scale chunk " + std::to_string(c));
  }
}

void check_runtime(Backend& be, const std::string& op) {
  if (op == "kernel_scratch") {
    const KernelScratch k = be.kernel_scratch();
    EXPECT_GT(k.lm_head_row_chunk, 0);
    EXPECT_GT(k.lm_head_vocab_chunk, 0);
  } else {
    EXPECT_NO_THROW(be.warm_up());
  }
}

void check_lowrank(Backend& be, const std::string& op) {
  if (op == "gemm_f32") {
    const int M = 37, N = 59, K = 111;
    for (const bool ta : {false, true})
      for (const bool tb : {false, true}) {
        std::unique_ptr<DBuf<float>> A(rand_f32(be, (size_t)M * K, 91)), B(rand_f32(be, (size_t)K * N, 92)),
            C(rand_f32(be, (size_t)M * N, 93));
        std::vector<float> ref(C->h.begin(), C->h.begin() + (size_t)M * N);
        gemm_f32_ref(ta, tb, M, N, K, 0.7f, A->h.data(), ta ? M : K, B->h.data(), tb ? K : N, 0.3f, ref.data(), N);
        be.gemm_f32(ta, tb, M, N, K, 0.7f, A->d, ta ? M : K, B->d, tb ? K : N, 0.3f, C->d, N);
        expect_close(*C, ref, 1e-5, "gemm_f32 ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
      }
    return;
  }
  if (op == "eigh_f64") {  // A·v_k = w_k·v_k, V orthonormal, w ascending; A = BᵀB + a rank-1 term
    const int l = 29;
    std::mt19937 rng(96);
    std::normal_distribution<double> nd;
    std::vector<double> B((size_t)l * l), A((size_t)l * l, 0.0);
    for (double& x : B) x = nd(rng);
    for (int i = 0; i < l; i++)
      for (int j = 0; j < l; j++)
        for (int k = 0; k < l; k++) A[(size_t)i * l + j] += B[(size_t)k * l + i] * B[(size_t)k * l + j];
    DBuf<double> V(be, A.size()), w(be, l);
    std::copy(A.begin(), A.end(), V.h.begin());
    V.upload();
    be.eigh_f64(V.d, l, w.d);
    V.download(), w.download();
    double res = 0, orth = 0, scale = 0;
    for (double x : A) scale = std::max(scale, std::fabs(x));
    for (int k = 0; k < l; k++) {
      if (k) {
        EXPECT_LE(w.h[k - 1], w.h[k]) << "eigh_f64 ascending";
      }
      for (int i = 0; i < l; i++) {
        double av = 0;
        for (int j = 0; j < l; j++) av += A[(size_t)i * l + j] * V.h[(size_t)j * l + k];
        res = std::max(res, std::fabs(av - w.h[k] * V.h[(size_t)i * l + k]) / scale);
      }
      for (int k2 = 0; k2 < l; k2++) {
        double d = 0;
        for (int i = 0; i < l; i++) d += V.h[(size_t)i * l + k] * V.h[(size_t)i * l + k2];
        orth = std::max(orth, std::fabs(d - (k == k2)));
      }
    }
    EXPECT_LE(res, 1e-12) << "eigh_f64 residual |A v - w v| / max|A|";
    EXPECT_LE(orth, 1e-12) << "eigh_f64 orthonormality";
    EXPECT_TRUE(V.guard_ok() && w.guard_ok()) << "eigh_f64 guard";
    return;
  }
  if (op == "gram_f64" || op == "tri_solve_lt_f64") {
    // rows 613 (several fp64 chunks plus a partial one), l 37; truth: naive fp64 loops
    const int rows = 613, l = 37;
    std::unique_ptr<DBuf<float>> Y(rand_f32(be, (size_t)rows * l, 95));
    std::vector<double> ref((size_t)l * l, 0.0);
    for (int i = 0; i < rows; i++)
      for (int a = 0; a < l; a++)
        for (int b = 0; b < l; b++) ref[(size_t)a * l + b] += (double)Y->h[(size_t)i * l + a] * Y->h[(size_t)i * l + b];
    if (op == "gram_f64") {
      DBuf<double> G(be, (size_t)l * l);
      be.gram_f64(Y->d, rows, l, G.d);
      G.download();
      double worst = 0;
      for (size_t e = 0; e < ref.size(); e++) worst = std::max(worst, std::fabs(G.h[e] - ref[e]) / (double)rows);
      EXPECT_LE(worst, 1e-13) << "gram_f64 vs fp64 loops (per row of |y|^2 ~ 1)";  // fp64 rounding only
      EXPECT_TRUE(G.guard_ok()) << "gram_f64 guard";
      return;
    }
    // tri_solve_lt_f64: with L = chol(YᵀY), Q = Y·L⁻ᵀ is orthonormal and Q·Lᵀ = Y
    std::vector<double> L = ref;
    for (int j = 0; j < l; j++) {  // lower Cholesky in place
      for (int k = 0; k < j; k++) L[(size_t)j * l + j] -= L[(size_t)j * l + k] * L[(size_t)j * l + k];
      L[(size_t)j * l + j] = std::sqrt(L[(size_t)j * l + j]);
      for (int i = j + 1; i < l; i++) {
        for (int k = 0; k < j; k++) L[(size_t)i * l + j] -= L[(size_t)i * l + k] * L[(size_t)j * l + k];
        L[(size_t)i * l + j] /= L[(size_t)j * l + j];
      }
      for (int b = j + 1; b < l; b++) L[(size_t)j * l + b] = 0.0;
    }
    DBuf<double> Ld(be, L.size());
    std::copy(L.begin(), L.end(), Ld.h.begin());
    Ld.upload();
    const std::vector<float> y0(Y->h.begin(), Y->h.begin() + (size_t)rows * l);
    be.tri_solve_lt_f64(Y->d, rows, l, Ld.d);
    Y->download();
    double orth = 0, back = 0;
    for (int a = 0; a < l; a++)
      for (int b = 0; b < l; b++) {
        double d = 0;
        for (int i = 0; i < rows; i++) d += (double)Y->h[(size_t)i * l + a] * Y->h[(size_t)i * l + b];
        orth = std::max(orth, std::fabs(d - (a == b)));
      }
    for (int i = 0; i < rows; i++)
      for (int a = 0; a < l; a++) {
        double v = 0;
        for (int b = 0; b <= a; b++) v += (double)Y->h[(size_t)i * l + b] * L[(size_t)a * l + b];
        back = std::max(back, std::fabs(v - y0[(size_t)i * l + a]));
      }
    EXPECT_LE(orth, 1e-5) << "tri_solve_lt_f64: QᵀQ = I (fp32 rounding of Q)";
    EXPECT_LE(back, 1e-5) << "tri_solve_lt_f64: Q·Lᵀ = Y";
    EXPECT_TRUE(Y->guard_ok()) << "tri_solve_lt_f64 guard";
    return;
  }
  for (const auto& [m, n] : {std::pair{37, 59}, std::pair{59, 37}}) {  // svd_f32: U·diag(S)·Vt = A
    const int k = std::min(m, n);
    std::unique_ptr<DBuf<float>> A(rand_f32(be, (size_t)m * n, 94)), U(new DBuf<float>(be, (size_t)m * k)),
        S(new DBuf<float>(be, k)), Vt(new DBuf<float>(be, (size_t)k * n));
    be.svd_f32(A->d, m, n, U->d, S->d, Vt->d);
    U->download(), S->download(), Vt->download();
    std::vector<double> rec((size_t)m * n, 0.0);
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++)
        for (int q = 0; q < k; q++) rec[(size_t)i * n + j] += (double)U->h[(size_t)i * k + q] * S->h[q] * Vt->h[(size_t)q * n + j];
    EXPECT_LE(nerr(A->h.data(), rec.data(), rec.size()), 1e-5) << "svd_f32 reconstruction";
    EXPECT_TRUE(U->guard_ok() && S->guard_ok() && Vt->guard_ok()) << "svd_f32 guard";
    for (int q = 1; q < k; q++) EXPECT_GE(S->h[q - 1], S->h[q]) << "svd_f32 S descending";
  }
}

// Op name -> its check. Every entry of backend_op_names() must have one (EveryOpHasACheck).
const std::map<std::string, Check>& checks() {
  static const std::map<std::string, Check> m = [] {
    std::map<std::string, Check> c;
    auto add = [&](std::initializer_list<const char*> ops, void (*f)(Backend&, const std::string&)) {
      for (const char* op : ops) c[op] = [f, name = std::string(op)](Backend& be) { f(be, name); };
    };
    add({"alloc", "free", "copy_to_backend", "copy_to_host", "copy", "synchronize", "zero"}, check_memory);
    add({"to_bf16", "to_f32", "add"}, check_elementwise);
    add({"embedding_forward", "embedding_backward"}, check_embedding);
    add({"rmsnorm_forward", "rmsnorm_backward"}, check_rmsnorm);
    add({"rope_table", "rope_forward", "rope_backward"}, check_rope);
    add({"attention_forward", "attention_backward", "attention_decode"}, check_attention);
    add({"swiglu_forward", "swiglu_backward"}, check_swiglu);
    add({"linear_forward", "linear_backward_input", "linear_backward_weight", "linear_nf4_scratch_elems"}, check_linear);
    add({"lora_forward", "lora_backward", "lora_chunk_rows"}, check_lora);
    add({"lm_head_ce", "lm_head_logits"}, check_head);
    add({"adamw_update", "grad_sq_sums", "grad_scale"}, check_optim);
    add({"gemm_f32", "svd_f32", "gram_f64", "tri_solve_lt_f64", "eigh_f64"}, check_lowrank);
    add({"kernel_scratch", "warm_up"}, check_runtime);
    return c;
  }();
  return m;
}

TEST(BackendOps, EveryOpHasACheck) {
  for (const std::string& op : backend_op_names()) EXPECT_TRUE(checks().count(op)) << "no check for op " << op;
  for (const auto& [op, f] : checks()) {
    const auto& all = backend_op_names();
    EXPECT_TRUE(std::find(all.begin(), all.end(), op) != all.end()) << "check for unknown op " << op;
  }
}

// (backend, op) for every available backend and every op of the table.
struct Case {
  std::string backend, op;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.backend << "/" << c.op; }
std::vector<Case> cases() {
  std::vector<Case> v;
  for (const std::string& b : available_backends())
    for (const std::string& op : backend_op_names()) v.push_back({b, op});
  return v;
}

class BackendOp : public ::testing::TestWithParam<Case> {};

TEST_P(BackendOp, MatchesReference) {
  Backend& be = backend_by_name(GetParam().backend);
  ASSERT_TRUE(be.supports(GetParam().op)) << be.name() << " does not implement " << GetParam().op;
  checks().at(GetParam().op)(be);
}

INSTANTIATE_TEST_SUITE_P(All, BackendOp, ::testing::ValuesIn(cases()), [](const auto& info) {
  return info.param.backend + "_" + info.param.op;
});

TEST(BackendOps, CpuIsAlwaysAvailable) {
  const auto b = available_backends();
  EXPECT_TRUE(std::find(b.begin(), b.end(), "cpu") != b.end());
  EXPECT_STREQ(cpu_backend().name(), "cpu");
  EXPECT_EQ(&backend_by_name("cpu"), &cpu_backend());
}

TEST(BackendOps, CudaWhenBuilt) {
  const auto b = available_backends();
  if (std::find(b.begin(), b.end(), "cuda") == b.end()) {
    EXPECT_THROW(backend_by_name("cuda"), Error);  // a clear error, not a silent CPU run
    GTEST_SKIP() << "no CUDA backend in this build (its ops are checked by BackendOp.MatchesReference when built)";
  }
  EXPECT_STREQ(backend_by_name("cuda").name(), "cuda");
}

TEST(BackendOps, UnknownBackendThrows) {
  EXPECT_THROW(backend_by_name("tpu"), Error);
}

// The model takes its backend from ModelOptions::backend (recipe key device.backend, --device):
// the CPU by default, a clear error for one that is not built.
TEST(BackendOps, ModelRunsOnItsOptionsBackend) {
  const LlamaConfig c = LlamaConfig::preset("tiny");
  EXPECT_EQ(&LlamaModel(c, ModelOptions{}).backend(), &cpu_backend());
  ModelOptions mo;
  mo.backend = "cuda";
  test_util::expect_error([&] { LlamaModel m(c, mo); }, {"cuda", "not built"});
}

}  // namespace
}  // namespace frugal
