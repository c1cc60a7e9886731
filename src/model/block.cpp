// block.cpp: the decoder block's forward and backward (see block.h for the math), the linear
// call site with its LoRA adapter, the buffers of a block pass and causal self-attention.
#include "src/model/block.h"

#include <algorithm>
#include <cmath>

namespace frugal {

namespace {

// One op of the block, timed when the pass has a timer.
template <class F>
void op(OpTimer* t, const char* name, F&& f) {
  if (t) t->begin(name);
  f();
  if (t) t->end();
}

}  // namespace

// ---- the linear call site (LoRA attaches here) ----------------------------------------------

void linear_site_forward(const LinearSite& L, const bf16* x, float* y, int N, float beta, Backend& be) {
  be.linear_forward(y, x, L.W, N, beta);  // y[N,out] = x[N,in]·Wᵀ + beta·y
  if (L.lora) lora_forward(be, *L.lora, x, y, N);  // y += s·(dropout(x)·Aᵀ)·Bᵀ, saves u [N,r]
}

void linear_site_backward(LinearSite& L, const bf16* dy, const bf16* x, float* dx, int N, float beta,
                          Backend& be) {
  be.linear_backward_input(dx, dy, L.W, N, beta);  // dx[N,in] = dy[N,out]·W + beta·dx
  if (L.lora) lora_backward(be, *L.lora, dy, x, dx, N);  // dA, dB +=; dx += dropout'(s·dy·B·A)
  if (L.trainable) {
    FRUGAL_CHECK(x != nullptr, "linear ", L.name, " is trainable but its input was not provided");
    be.linear_backward_weight(L.grad.data(), dy, x, N, L.W.out, L.W.in);  // grad[out,in] += dyᵀ·x
  }
}

// ---- buffers ------------------------------------------------------------------------------------

void BlockActs::resize(const LlamaConfig& c, size_t N) {
  const size_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  resize_exact(rstd1, N), resize_exact(rstd2, N);
  resize_exact(q, N * Q), resize_exact(k, N * KV), resize_exact(v, N * KV), resize_exact(att, N * Q);
  resize_exact(lse, N * c.num_attention_heads), resize_exact(h, N * C), resize_exact(gate, N * F), resize_exact(up, N * F);
  resize_exact(n1, N * C), resize_exact(n2, N * C);
}

size_t BlockActs::bytes() const {
  return vec_bytes(rstd1) + vec_bytes(q) + vec_bytes(k) + vec_bytes(v) + vec_bytes(att) + vec_bytes(lse) + vec_bytes(h) +
         vec_bytes(rstd2) + vec_bytes(gate) + vec_bytes(up) + vec_bytes(n1) + vec_bytes(n2);
}

void BlockScratch::resize(const LlamaConfig& c, size_t N, bool backward) {
  const size_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  resize_exact(act, N * F);
  resize_exact(x_bf, N * std::max(Q, F));
  if (backward) {
    resize_exact(dtmp, N * C), resize_exact(dn, N * C);
    resize_exact(dact, N * F), resize_exact(dgate, N * F), resize_exact(dup, N * F);
    resize_exact(dq, N * Q), resize_exact(dk, N * KV), resize_exact(dv, N * KV), resize_exact(datt, N * Q);
    resize_exact(dy_bf, N * std::max({C, Q, F}));
  }
}

size_t BlockScratch::bytes() const {
  size_t b = vec_bytes(act) + vec_bytes(x_bf) + vec_bytes(dy_bf);
  for (const auto* v : {&dtmp, &dact, &dgate, &dup, &dq, &dk, &dv, &datt, &dn}) b += vec_bytes(*v);
  return b;
}

// ---- causal self-attention ------------------------------------------------------------------------

CausalAttention::CausalAttention(const LlamaConfig& c, int B, int T)
    : shape{B, T, T, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
            1.0f / std::sqrt((float)c.head_dim), -1, 0} {}

void CausalAttention::forward(Backend& be, int, const float* q, const float* k, const float* v, float* att,
                              float* lse) {
  be.attention_forward(att, lse, q, k, v, shape);
}

void CausalAttention::backward(Backend& be, int, float* dq, float* dk, float* dv, const float* datt,
                               const float* q, const float* k, const float* v, const float* att,
                               const float* lse) {
  be.attention_backward(dq, dk, dv, datt, q, k, v, att, lse, shape);
}

// ---- the block --------------------------------------------------------------------------------------

void block_forward(Backend& be, const LlamaConfig& c, LlamaBlock& blk, int layer, const BlockPass& p,
                   const float* x, BlockActs& a, BlockScratch& s, float* y) {
  const int N = p.B * p.T, C = c.hidden_size, Q = c.q_dim(), F = c.intermediate_size;
  const int H = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const float eps = c.rms_norm_eps;
  const size_t NC = (size_t)N * C;
  OpTimer* t = p.timer;
  // attention half
  op(t, "rmsnorm fwd", [&] { be.rmsnorm_forward(y, a.rstd1.data(), x, blk.ln1.w.data(), N, C, eps); });  // y: normed
  op(t, "fp32->bf16", [&] { be.to_bf16(y, a.n1.data(), NC); });                                    // n1: [N,C] bf16
  op(t, "linear fwd q,k,v", [&] {
    linear_site_forward(blk.q, a.n1.data(), a.q.data(), N, 0.f, be);  // q: [N,Q]
    linear_site_forward(blk.k, a.n1.data(), a.k.data(), N, 0.f, be);  // k: [N,KV]
    linear_site_forward(blk.v, a.n1.data(), a.v.data(), N, 0.f, be);  // v: [N,KV]
  });
  op(t, "rope fwd", [&] {
    be.rope_forward(a.q.data(), p.pos, *p.rope, N, H, D);
    be.rope_forward(a.k.data(), p.pos, *p.rope, N, Hkv, D);
  });
  op(t, "attention fwd", [&] {
    p.attention->forward(be, layer, a.q.data(), a.k.data(), a.v.data(), a.att.data(), a.lse.data());  // att: [N,Q]
  });
  op(t, "fp32->bf16", [&] { be.to_bf16(a.att.data(), s.x_bf.data(), (size_t)N * Q); });
  op(t, "residual copy/add", [&] { be.copy(a.h.data(), x, NC * sizeof(float)); });
  op(t, "linear fwd o", [&] { linear_site_forward(blk.o, s.x_bf.data(), a.h.data(), N, 1.f, be); });  // h = x + att·Woᵀ
  // MLP half
  op(t, "rmsnorm fwd", [&] { be.rmsnorm_forward(y, a.rstd2.data(), a.h.data(), blk.ln2.w.data(), N, C, eps); });
  op(t, "fp32->bf16", [&] { be.to_bf16(y, a.n2.data(), NC); });  // n2: [N,C] bf16
  op(t, "linear fwd gate,up", [&] {
    linear_site_forward(blk.gate, a.n2.data(), a.gate.data(), N, 0.f, be);  // gate: [N,F]
    linear_site_forward(blk.up, a.n2.data(), a.up.data(), N, 0.f, be);      // up: [N,F]
  });
  op(t, "swiglu fwd", [&] { be.swiglu_forward(s.act.data(), a.gate.data(), a.up.data(), (size_t)N * F); });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.act.data(), s.x_bf.data(), (size_t)N * F); });
  op(t, "residual copy/add", [&] { be.copy(y, a.h.data(), NC * sizeof(float)); });
  op(t, "linear fwd down", [&] { linear_site_forward(blk.down, s.x_bf.data(), y, N, 1.f, be); });  // y = h + act·Wdᵀ
}

void block_backward(Backend& be, const LlamaConfig& c, LlamaBlock& blk, int layer, const BlockPass& p,
                    const float* x, BlockActs& a, BlockScratch& s, float* dres) {
  const int N = p.B * p.T, C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  const int H = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const size_t NC = (size_t)N * C, NF = (size_t)N * F;
  OpTimer* t = p.timer;
  // y = h + down(silu(gate)·up)
  op(t, "fp32->bf16", [&] { be.to_bf16(dres, s.dy_bf.data(), NC); });
  if (blk.down.needs_input()) {  // re-derive the bf16 input of down_proj
    op(t, "swiglu fwd", [&] { be.swiglu_forward(s.act.data(), a.gate.data(), a.up.data(), NF); });
    op(t, "fp32->bf16", [&] { be.to_bf16(s.act.data(), s.x_bf.data(), NF); });
  }
  op(t, "linear bwd down", [&] {
    linear_site_backward(blk.down, s.dy_bf.data(), s.x_bf.data(), s.dact.data(), N, 0.f, be);  // dact: [N,F]
  });
  op(t, "swiglu bwd", [&] {
    be.swiglu_backward(s.dgate.data(), s.dup.data(), s.dact.data(), a.gate.data(), a.up.data(), NF);
  });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.dgate.data(), s.dy_bf.data(), NF); });
  op(t, "linear bwd gate,up", [&] {
    linear_site_backward(blk.gate, s.dy_bf.data(), a.n2.data(), s.dn.data(), N, 0.f, be);  // dn: [N,C]
  });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.dup.data(), s.dy_bf.data(), NF); });
  op(t, "linear bwd gate,up", [&] {
    linear_site_backward(blk.up, s.dy_bf.data(), a.n2.data(), s.dn.data(), N, 1.f, be);
  });
  op(t, "rmsnorm bwd", [&] {
    be.rmsnorm_backward(s.dtmp.data(), blk.ln2.trainable ? blk.ln2.grad.data() : nullptr, s.dn.data(),
                        a.h.data(), blk.ln2.w.data(), a.rstd2.data(), N, C);
  });
  op(t, "residual copy/add", [&] { be.add(dres, s.dtmp.data(), NC); });  // dres = dL/dh
  // h = x + o_proj(attention(rope(q), rope(k), v))
  op(t, "fp32->bf16", [&] { be.to_bf16(dres, s.dy_bf.data(), NC); });
  if (blk.o.needs_input()) op(t, "fp32->bf16", [&] { be.to_bf16(a.att.data(), s.x_bf.data(), (size_t)N * Q); });
  op(t, "linear bwd o", [&] {
    linear_site_backward(blk.o, s.dy_bf.data(), s.x_bf.data(), s.datt.data(), N, 0.f, be);  // datt: [N,Q]
  });
  op(t, "attention bwd", [&] {
    p.attention->backward(be, layer, s.dq.data(), s.dk.data(), s.dv.data(), s.datt.data(), a.q.data(),
                          a.k.data(), a.v.data(), a.att.data(), a.lse.data());
  });
  op(t, "rope bwd", [&] {
    be.rope_backward(s.dq.data(), p.pos, *p.rope, N, H, D);
    be.rope_backward(s.dk.data(), p.pos, *p.rope, N, Hkv, D);
  });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.dq.data(), s.dy_bf.data(), (size_t)N * Q); });
  op(t, "linear bwd q,k,v", [&] { linear_site_backward(blk.q, s.dy_bf.data(), a.n1.data(), s.dn.data(), N, 0.f, be); });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.dk.data(), s.dy_bf.data(), (size_t)N * KV); });
  op(t, "linear bwd q,k,v", [&] { linear_site_backward(blk.k, s.dy_bf.data(), a.n1.data(), s.dn.data(), N, 1.f, be); });
  op(t, "fp32->bf16", [&] { be.to_bf16(s.dv.data(), s.dy_bf.data(), (size_t)N * KV); });
  op(t, "linear bwd q,k,v", [&] { linear_site_backward(blk.v, s.dy_bf.data(), a.n1.data(), s.dn.data(), N, 1.f, be); });
  op(t, "rmsnorm bwd", [&] {
    be.rmsnorm_backward(s.dtmp.data(), blk.ln1.trainable ? blk.ln1.grad.data() : nullptr, s.dn.data(), x,
                        blk.ln1.w.data(), a.rstd1.data(), N, C);
  });
  op(t, "residual copy/add", [&] { be.add(dres, s.dtmp.data(), NC); });  // dres = dL/dx
}

}  // namespace frugal
