// attention.h (CUDA): FlashAttention-2 forward and backward on the device, mirroring
// kernels/cpu/attention.cpp (same masks, key/query ranges, tile skipping and online-softmax
// helpers from kernels/shared_math.h). Free of CUDA types; defined in kernels/cuda/attention.cu
// and linked only when the build has CUDA (FRUGAL_HAVE_CUDA).
#pragma once
#include "kernels/cpu/attention.h"

namespace frugal::cuda {

// Device pointers, layouts as in kernels/cpu/attention.h: q [B,T,H,D], k/v [B,S,Hkv,D],
// out [B,T,H,D], lse [B,H,T], fp32. stream: a cudaStream_t (nullptr = default stream).
// Throws frugal::Error on a bad shape or when D needs more shared memory than the device has.
void launch_attention_forward(float* out, float* lse, const float* q, const float* k,
                              const float* v, const AttnShape& s, void* stream = nullptr);
// dq, dk, dv are overwritten. Allocates a [B,H,T] fp32 workspace (D = rowsum(dO∘O)) on the
// stream; dQ is accumulated with fp32 atomics (after a memset), dK/dV have one writer per tile.
void launch_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                               const float* k, const float* v, const float* out, const float* lse,
                               const AttnShape& s, void* stream = nullptr);

// Host-buffer wrappers for tests: copy in, launch, copy out, synchronize.
void attention_forward_host(float* out, float* lse, const float* q, const float* k,
                            const float* v, const AttnShape& s);
void attention_backward_host(float* dq, float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             const AttnShape& s);

}  // namespace frugal::cuda
