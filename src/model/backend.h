// backend.h: the backend seam (ggml_backend style): one table of every op the training step,
// evaluation and generation run, plus memory (allocation, host<->backend copies, synchronize).
// The model, the block, LoRA, the optimizer and generation call ops only through a Backend&;
// CpuBackend (src/model/cpu_backend.cpp) forwards to kernels/cpu, a CUDA backend would forward
// to kernels/cuda. No CUDA types here: every pointer is backend memory of the stated dtype.
//
// Conventions (DEVELOPERS.md): row-major, shapes in the comments; backward ops OVERWRITE
// activation gradients and ACCUMULATE (+=) weight gradients. backend_op_names() is the one list
// of ops: supports(op) answers for it and tests/test_backend_ops.cpp checks every entry of every
// available backend against its kernels/cpu `_ref`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "src/common.h"

namespace frugal {

// Scratch sizes of the kernels, for the memory planner (src/train/plan.cpp).
struct KernelScratch {
  int lm_head_row_chunk = 0;    // lm_head_ce: rows per logits chunk
  int lm_head_vocab_chunk = 0;  // lm_head_ce: vocab entries per logits chunk
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // True when `op` (an entry of backend_op_names()) is implemented.
  virtual bool supports(const std::string& op) const = 0;

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;           // 64-byte aligned; throws std::bad_alloc
  virtual void free(void* p) = 0;
  virtual void copy_to_backend(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // backend -> backend
  virtual void synchronize() = 0;                  // waits for every queued op
  virtual void zero(float* x, size_t n) = 0;       // x: [n] = 0

  // ---- elementwise ----
  virtual void to_bf16(const float* x, bf16* y, size_t n) = 0;  // y: [n] = bf16(x) (round to nearest even)
  virtual void to_f32(const bf16* x, float* y, size_t n) = 0;   // y: [n] = float(x)
  virtual void add(float* y, const float* x, size_t n) = 0;     // y: [n] += x (residual add)

  // ---- embedding: out[n,:] = table[ids[n],:] ----
  // out: [N,C] fp32, ids: [N], table: [V,C] bf16
  virtual void embedding_forward(float* out, const int32_t* ids, const bf16* table, int N, int C, int V) = 0;
  // dtable: [V,C] fp32 +=, dout: [N,C]
  virtual void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V) = 0;

  // ---- RMSNorm: out = x·rsqrt(mean(x²) + eps)·w ----
  // out, x: [N,C]; w: [C]; rstd: [N] written
  virtual void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) = 0;
  // dx: [N,C] overwritten; dw: [C] += (nullable)
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                const float* rstd, int N, int C) = 0;

  // ---- RoPE (HF rotate_half), in place ----
  virtual RopeTable rope_table(const fm::RopeParams& p, int max_pos, int seq_len) = 0;  // positions 0..max_pos-1
  // x: [N,H,D] rotated in place; pos: [N]
  virtual void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int N, int H, int D) = 0;
  // dx: [N,H,D] in place (the transposed rotation)
  virtual void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int N, int H, int D) = 0;

  // ---- attention (FlashAttention-2; shapes in kernels/types.h AttnShape) ----
  // out: [B,T,H,D], lse: [B,H,T]; q: [B,T,H,D], k/v: [B,S,Hkv,D]
  virtual void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                 const AttnShape& s) = 0;
  // dq, dk, dv overwritten; needs out, lse of the forward
  virtual void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                  const float* k, const float* v, const float* out, const float* lse,
                                  const AttnShape& s) = 0;
  // One query row per head against a KV cache, all S keys visible: out[H,D] = softmax(scale·q·Kᵀ)·V.
  // q: [H,D], K/V: [S,Hkv,D], scores: [H, ld_scores >= S] scratch.
  virtual void attention_decode(float* out, const float* q, const float* K, const float* V, int S, int H,
                                int Hkv, int D, float scale, float* scores, int ld_scores) = 0;

  // ---- SwiGLU: out = silu(gate)·up ----
  virtual void swiglu_forward(float* out, const float* gate, const float* up, size_t n) = 0;  // [n]
  // dgate, dup: [n] overwritten
  virtual void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                               size_t n) = 0;

  // ---- frozen linear W: [out,in] NF4 or bf16 ----
  // y[M,out] = x[M,in]·Wᵀ + beta·y   (x bf16, y fp32)
  virtual void linear_forward(float* y, const bf16* x, const FrozenWeight& W, int M, float beta) = 0;
  // dx[M,in] = dy[M,out]·W + beta·dx
  virtual void linear_backward_input(float* dx, const bf16* dy, const FrozenWeight& W, int M, float beta) = 0;
  // dW[out,in] += dyᵀ·x   (dy: [M,out], x: [M,in] bf16)
  virtual void linear_backward_weight(float* dW, const bf16* dy, const bf16* x, int M, int64_t out, int64_t in) = 0;
  // bf16 elements of one thread's NF4 dequant scratch for W [out,in] over nthr threads (planner)
  virtual size_t linear_nf4_scratch_elems(int64_t out, int64_t in, int nthr) = 0;

  // ---- LoRA: y += s·(dropout(x)·Aᵀ)·Bᵀ (kernels/cpu/lora.h has the math) ----
  // u: [N,r] written, y: [N,out] +=; A: [r,in], B: [out,r] fp32, x: [N,in] bf16
  virtual void lora_forward(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u,
                            float* y, int N) = 0;
  // dA [r,in], dB [out,r], dx [N,in] all +=; u from the forward
  virtual void lora_backward(const LoraDims& d, const float* A, const float* B, const float* u, const bf16* dy,
                             const bf16* x, float* dA, float* dB, float* dx, int N) = 0;
  // Rows per chunk of the LoRA GEMMs' fp32 scratch for a site [in -> out] and N rows (planner:
  // the scratch is [rows,in] + [rows,out] + [rows,r] fp32)
  virtual int lora_chunk_rows(int64_t in, int64_t out, int N) = 0;

  // ---- head ----
  // Fused lm_head + CE over x [M,C] bf16, W [V,C] bf16: returns the sum of losses over targets
  // != -100; dx [M,C] overwritten, dW [V,C] +=, losses [M] (all nullable), scaled by grad_scale.
  virtual double lm_head_ce(const bf16* x, const bf16* W, const int32_t* targets, int M, int C, int V,
                            float grad_scale, float* dx, float* dW, float* losses) = 0;
  // logits[M,V] = x[M,C]·Wᵀ (x, W bf16; fp32 out)
  virtual void lm_head_logits(float* logits, const bf16* x, const bf16* W, int M, int C, int V) = 0;

  // ---- optimizer (fixed chunks: results never depend on the thread count) ----
  // AdamW element update of every chunk (src/model/optim.h has the order of operations)
  virtual void adamw_update(const AdamWChunk* chunks, size_t count, const AdamWScalars& k) = 0;
  // partial[c] = Σ g² of chunk c, in fp64 with a fixed summation order
  virtual void grad_sq_sums(const GradChunk* chunks, size_t count, double* partial) = 0;
  // g *= coef in every chunk (gradient clipping)
  virtual void grad_scale(const GradChunk* chunks, size_t count, float coef) = 0;

  // ---- low rank (GaLore's projector) ----
  // C[M,N] = alpha·op(A)·op(B) + beta·C, fp32 row-major (kernels/cpu/gemm_f32.h conventions)
  virtual void gemm_f32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                        const float* B, int ldb, float beta, float* C, int ldc) = 0;
  // Thin SVD of A [m,n] fp32: U [m,k], S [k] descending, Vt [k,n], k = min(m,n)
  virtual void svd_f32(const float* A, int m, int n, float* U, float* S, float* Vt) = 0;
  // G [l, l] fp64 = Yᵀ·Y for Y [rows, l] fp32 (CholeskyQR's Gram; full symmetric)
  virtual void gram_f64(const float* Y, int rows, int l, double* G) = 0;
  // Y ← Y·L⁻ᵀ in place, L [l, l] fp64 lower triangular, solved in fp64
  virtual void tri_solve_lt_f64(float* Y, int rows, int l, const double* L) = 0;
  // symmetric A [l, l] fp64 -> eigenvalues w [l] ascending, A = eigenvectors as columns
  virtual void eigh_f64(double* A, int l, double* w) = 0;

  // ---- runtime ----
  virtual KernelScratch kernel_scratch() const = 0;
  // Initializes what the first training step would (thread pools, GEMM libraries), so the
  // planner can measure the runtime's resident memory.
  virtual void warm_up() = 0;
};

// Every op of the table, in table order (the names of the virtual functions above).
const std::vector<std::string>& backend_op_names();

// The CPU backend (kernels/cpu), a process-wide singleton: the default of every model.
Backend& cpu_backend();
// "cpu" -> cpu_backend(); "cuda" -> throws (not built / not implemented yet); else throws listing them.
Backend& backend_by_name(const std::string& name);
// Names of the backends this build can run ("cpu", and "cuda" once it exists).
std::vector<std::string> available_backends();

}  // namespace frugal
