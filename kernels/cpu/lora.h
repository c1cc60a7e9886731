// lora.h: the LoRA adapter GEMMs on the CPU (PEFT semantics; the adapter state lives in
// src/model/lora.h). With d = LoraDims (r, in, out, s = scale, p = dropout, mask key/row0):
//   forward   u[N,r] = dropout(x)·Aᵀ,  y[N,out] += s·u·Bᵀ
//   backward  dB[out,r] += s·dyᵀ·u,  du[N,r] = s·dy·B,  dA[r,in] += duᵀ·dropout(x),
//             dx[N,in] += mask ⊙ (du·A) / (1-p)
// A: [r,in], B: [out,r] fp32 masters; x, dy bf16; u, y, dx fp32. The GEMMs run in fp32
// (kernels/cpu/gemm_f32) over row chunks of at most lora_chunk_budget() / max(in, out) rows, so
// the scratch stays a few MB; chunking depends only on the shapes, never on the thread count.
#pragma once
#include <cstdint>

#include "kernels/types.h"
#include "src/common.h"

namespace frugal {

// fp32 elements of one chunk buffer (the planner sizes the LoRA scratch with it).
int64_t lora_chunk_budget();
// Rows per chunk for a site [in -> out] and N rows: clamp(budget / max(in, out), 1, max(N, 1)).
int lora_chunk_rows(int64_t in, int64_t out, int N);

// u: [N,r] written; y: [N,out] +=.   x: [N,in] bf16
void lora_forward(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u,
                  float* y, int N);
// u: [N,r] from lora_forward; dA [r,in], dB [out,r] +=; dx [N,in] +=.   dy: [N,out], x: [N,in] bf16
void lora_backward(const LoraDims& d, const float* A, const float* B, const float* u,
                   const bf16* dy, const bf16* x, float* dA, float* dB, float* dx, int N);

// ---- naive references (fp64 accumulation, the truth for tests); same contracts ----
void lora_forward_ref(const LoraDims& d, const float* A, const float* B, const bf16* x, float* u,
                      float* y, int N);
void lora_backward_ref(const LoraDims& d, const float* A, const float* B, const float* u,
                       const bf16* dy, const bf16* x, float* dA, float* dB, float* dx, int N);

}  // namespace frugal
