// rmsnorm.h: RMSNorm (SPEC §2, Llama): out = x * rsqrt(mean(x^2) + eps) * w, all fp32.
// Forward saves rstd = rsqrt(mean(x^2) + eps) per row for the backward.
#pragma once
#include "src/common.h"

namespace frugal {

// out, x: [N, C] fp32; w: [C]; rstd: [N] (written)
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
// dx: [N, C] (overwritten); dw: [C] (+=, nullable); dout, x: [N, C]; rstd: [N] from the forward.
// dx = rstd * (w*dout) - rstd^3 / C * x * sum_j(w_j*dout_j*x_j);  dw += sum_n dout*x*rstd
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C);

// naive scalar references (fp64 accumulation; the truth for tests)
void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
void rmsnorm_backward_ref(float* dx, float* dw, const float* dout, const float* x, const float* w,
                          const float* rstd, int N, int C);

}  // namespace frugal
