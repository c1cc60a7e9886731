// device.h: CUDA backend entry points that need no CUDA types (callable from host-only code).
// Defined in kernels/cuda/*.cu; only linked when the build has CUDA (FRUGAL_HAVE_CUDA).
#pragma once
#include <cstddef>
#include <string>

#include "src/common.h"

namespace frugal::cuda {

int device_count();             // 0 when no driver or no device (never throws for that)
std::string toolkit_summary();  // CUDA runtime, cuBLAS and NCCL versions, for `frugal --version`

// fp32 -> bf16 on the device with the shared rounding (fm::float_to_bf16_bits). Host buffers in
// and out; the copy is part of the call. Mirrors frugal::float_to_bf16.
void float_to_bf16_host(const float* in, bf16* out, std::size_t n);

// C[M,N] (fp32, row-major) = A[M,K] (bf16) · B[N,K]ᵀ (bf16) through cuBLAS with fp32 accumulation.
// Host buffers; mirrors the CPU linear GEMM. Used to prove cuBLAS links and computes.
void gemm_bf16_nt_host(const bf16* A, const bf16* B, float* C, int M, int N, int K);

}  // namespace frugal::cuda
