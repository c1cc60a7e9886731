// cpu_backend.cpp: the CPU backend, every op of the table (src/model/backend.h) forwarded to
// kernels/cpu. The only file of src/model that includes kernels/cpu (tests/check_layers.sh).
// Memory is host memory: alloc is the 64-byte aligned allocation of Buf/avector, copies are memcpy.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_decode.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/lm_head_ce.h"
#include "kernels/cpu/lora.h"
#include "kernels/cpu/lowrank.h"
#include "kernels/cpu/residual.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "src/model/backend.h"

namespace frugal {

namespace {

namespace k = ::frugal;  // the kernels/cpu free functions (same names as the ops)

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  bool supports(const std::string& op) const override {
    const auto& all = backend_op_names();
    return std::find(all.begin(), all.end(), op) != all.end();  // every op of the table
  }

  // ---- memory ----
  void* alloc(size_t bytes) override { return aligned_host_alloc(bytes); }
  void free(void* p) override { aligned_host_free(p); }
  void copy_to_backend(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }
  void synchronize() override {}
  void zero(float* x, size_t n) override { k::zero_forward(x, n); }

  // ---- elementwise ----
  void to_bf16(const float* x, bf16* y, size_t n) override { k::float_to_bf16(x, y, n); }
  void to_f32(const bf16* x, float* y, size_t n) override { k::bf16_to_float(x, y, n); }
  void add(float* y, const float* x, size_t n) override { k::residual_add(y, x, n); }

  // ---- embedding ----
  void embedding_forward(float* out, const int32_t* ids, const bf16* table, int N, int C, int V) override {
    k::embedding_forward(out, ids, table, N, C, V);
  }
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V) override {
    k::embedding_backward(dtable, dout, ids, N, C, V);
  }

  // ---- RMSNorm ----
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) override {
    k::rmsnorm_forward(out, rstd, x, w, N, C, eps);
  }
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int C) override {
    k::rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
  }

  // ---- RoPE ----
  RopeTable rope_table(const fm::RopeParams& p, int max_pos, int seq_len) override {
    return k::rope_table(p, max_pos, seq_len);
  }
  void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D) override {
    k::rope_forward(x, pos, t, N, H, D);
  }
  void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D) override {
    k::rope_backward(dx, pos, t, N, H, D);
  }

  // ---- attention ----
  void attention_forward(float* out, float* lse, const float* q, const float* kk, const float* v,
                         const AttnShape& s) override {
    k::attention_forward(out, lse, q, kk, v, s);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kk,
                          const float* v, const float* out, const float* lse, const AttnShape& s) override {
    k::attention_backward(dq, dk, dv, dout, q, kk, v, out, lse, s);
  }
  void attention_decode(float* out, const float* q, const float* K, const float* V, int S, int H, int Hkv,
                        int D, float scale, float* scores, int ld_scores) override {
    k::attention_decode(out, q, K, V, S, H, Hkv, D, scale, scores, ld_scores);
  }

  // ---- SwiGLU ----
  void swiglu_forward(float* out, const float* gate, const float* up, size_t n) override {
    k::swiglu_forward(out, gate, up, n);
  }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       size_t n) override {
    k::swiglu_backward(dgate, dup, dout, gate, up, n);
  }

  // ---- frozen linear ----
  void linear_forward(float* y, const bf16* x, const FrozenWeight& W, int M, float beta) override {
    k::linear_forward(y, x, W, M, beta);
  }
  void linear_backward_input(float* dx, const bf16* dy, const FrozenWeight& W, int M, float beta) override {
    k::linear_backward_input(dx, dy, W, M, beta);
  }
  void linear_backward_weight(float* dW, const bf16* dy, const bf16* x, int M, int64_t out, int64_t in) override {
    k::linear_backward_weight(dW, dy, x, M, out, in);
  }
  size_t linear_nf4_scratch_elems(int64_t out, int64_t in, int nthr) override {
    return k::linear_nf4_scratch_elems(out, in, nthr);
  }

  // ---- LoRA ----
  void lora_forward(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u, float* y,
                    int N) override {
    k::lora_forward(d, A, B, x, u, y, N);
  }
  void lora_backward(const LoraDims& d, const float* A, const float* B, const float* u, const bf16* dy,
                     const bf16* x, float* dA, float* dB, float* dx, int N) override {
    k::lora_backward(d, A, B, u, dy, x, dA, dB, dx, N);
  }
  int lora_chunk_rows(int64_t in, int64_t out, int N) override { return k::lora_chunk_rows(in, out, N); }

  // ---- head ----
  double lm_head_ce(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V, float grad_scale,
                    float* dx, float* dW, float* losses) override {
    return k::lm_head_ce(x, W, targets, M, C, V, grad_scale, dx, dW, losses);
  }
  void lm_head_logits(float* logits, const bf16* x, const bf16* W, int M, int C, int V) override {
    // logits[M,V] = x[M,C] · Wᵀ
    k::gemm_bf16(false, true, M, V, C, 1.f, x, C, W, C, 0.f, logits, V);
  }

  // ---- optimizer ----
  void adamw_update(const AdamWChunk* chunks, size_t count, const AdamWScalars& s) override {
    k::adamw_update(chunks, count, s);
  }
  void grad_sq_sums(const GradChunk* chunks, size_t count, double* partial) override {
    k::grad_sq_sums(chunks, count, partial);
  }
  void grad_scale(const GradChunk* chunks, size_t count, float coef) override {
    k::grad_scale(chunks, count, coef);
  }

  // ---- low rank ----
  void gemm_f32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) override {
    k::gemm_f32(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void svd_f32(const float* A, int m, int n, float* U, float* S, float* Vt) override { k::svd_f32(A, m, n, U, S, Vt); }
  void gram_f64(const float* Y, int rows, int l, double* G) override { k::gram_f64(Y, rows, l, G); }
  void tri_solve_lt_f64(float* Y, int rows, int l, const double* L) override { k::tri_solve_lt_f64(Y, rows, l, L); }
  void eigh_f64(double* A, int l, double* w) override { k::eigh_f64(A, l, w); }

  // ---- runtime ----
  KernelScratch kernel_scratch() const override { return {kLmHeadRowChunk, kLmHeadVocabChunk}; }
  void warm_up() override {
    // The OpenMP pool (every thread) and oneDNN (engine, JIT kernels of bf16 and fp32 GEMMs,
    // called both outside and inside parallel regions, as linear.cpp and lm_head_ce.cpp do).
    // Small shapes: their buffers are noise.
    const int n = 67;
    avector<bf16> a((size_t)n * n, bf16::from_float(0.5f)), b((size_t)n * n, bf16::from_float(0.25f));
    avector<float> af((size_t)n * n, 0.5f), bf((size_t)n * n, 0.25f), c((size_t)n * n);
    k::gemm_bf16(false, true, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    k::gemm_f32(false, true, n, n, n, 1.f, af.data(), n, bf.data(), n, 0.f, c.data(), n);
#pragma omp parallel
    {
      avector<float> cc((size_t)n * n);
      k::gemm_bf16(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, cc.data(), n);
      k::gemm_f32(false, false, n, n, n, 1.f, af.data(), n, bf.data(), n, 0.f, cc.data(), n);
    }
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace frugal
