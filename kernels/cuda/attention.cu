// attention.cu: FlashAttention-2 forward/backward on the device (SPEC §6), the mirror of
// kernels/cpu/attention.cpp: the same bottom-right masks (fm::attn_visible), key/query ranges
// (fm::attn_key_range / fm::attn_query_range, fully masked tiles skipped), online softmax
// (fm::online_softmax_*) and probabilities (fm::attn_prob). Simple and correct over fast:
//   forward : block = (b, h, query tile of kFwdBr rows), one thread per query row; K/V tiles of
//             kFwdBc keys staged in shared memory; O accumulated in shared memory (fp32).
//   backward: block = (b, kv head, key tile of kBwdBc keys), one thread per key (single writer of
//             dK/dV); per query tile of kBwdBr rows: P, dV, dP, dS, dK per thread, dS staged in
//             shared memory, then dQ += dS·K with fp32 atomics into the zeroed dq.
// Shared-memory rows have stride D+1 so per-thread rows fall in distinct banks.
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_buffer.cuh"

namespace frugal::cuda {

namespace {

constexpr int kFwdBr = 32, kFwdBc = 32;  // forward: query rows (threads) x keys per tile
constexpr int kBwdBc = 32, kBwdBr = 16;  // backward: keys (threads) x query rows per tile

struct Params {
  int B, T, S, H, Hkv, D, G, left, right;
  float tau;
};

Params make_params(const AttnShape& s) {
  return Params{s.B, s.T, s.S, s.H, s.Hkv, s.D, s.H / s.Hkv, s.window_left, s.window_right,
                attention_scale(s)};
}

// ---- forward ------------------------------------------------------------------------------------
// smem: Qs [Br, D+1], Os [Br, D+1], Ks [Bc, D+1], Vs [Bc, D+1]
__global__ void attention_forward_kernel(float* __restrict__ out, float* __restrict__ lse,
                                         const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v, Params p) {
  extern __shared__ float sm[];
  const int ld = p.D + 1;
  float* Qs = sm;
  float* Os = Qs + kFwdBr * ld;
  float* Ks = Os + kFwdBr * ld;
  float* Vs = Ks + kFwdBc * ld;
  const int it = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / p.G, tid = threadIdx.x;
  const int i0 = it * kFwdBr, i1 = min(p.T, i0 + kFwdBr), nr = i1 - i0;
  const size_t qrow = (size_t)p.H * p.D, kvrow = (size_t)p.Hkv * p.D;

  for (int idx = tid; idx < kFwdBr * p.D; idx += blockDim.x) {
    const int r = idx / p.D, d = idx % p.D;
    Qs[r * ld + d] = r < nr ? q[((size_t)b * p.T + i0 + r) * qrow + (size_t)h * p.D + d] : 0.f;
    Os[r * ld + d] = 0.f;
  }
  __syncthreads();  // Qs/Os rows were filled by other threads
  fm::OnlineSoftmax st = fm::online_softmax_init();
  const int i = i0 + tid;
  int klo, khi;
  fm::attn_key_range(i0, i1, p.T, p.S, p.left, p.right, &klo, &khi);

  for (int j0 = klo; j0 < khi; j0 += kFwdBc) {
    const int kc = min(khi - j0, kFwdBc);
    __syncthreads();  // previous tile fully consumed
    for (int idx = tid; idx < kc * p.D; idx += blockDim.x) {
      const int r = idx / p.D, d = idx % p.D;
      const size_t g = ((size_t)b * p.S + j0 + r) * kvrow + (size_t)kvh * p.D + d;
      Ks[r * ld + d] = k[g];
      Vs[r * ld + d] = v[g];
    }
    __syncthreads();
    if (tid < nr) {
      float s[kFwdBc];
      float m_tile = -INFINITY;
#pragma unroll
      for (int j = 0; j < kFwdBc; ++j) {
        s[j] = -INFINITY;
        if (j < kc && fm::attn_visible(i, j0 + j, p.T, p.S, p.left, p.right)) {
          float dot = 0.f;
          for (int d = 0; d < p.D; ++d) dot += Qs[tid * ld + d] * Ks[j * ld + d];
          s[j] = p.tau * dot;
        }
        m_tile = fmaxf(m_tile, s[j]);
      }
      const float alpha = fm::online_softmax_rescale(st, m_tile);
#pragma unroll
      for (int j = 0; j < kFwdBc; ++j) {
        s[j] = fm::attn_prob(s[j], st.m);
        st.l += s[j];
      }
      for (int d = 0; d < p.D; ++d) {
        float acc = Os[tid * ld + d] * alpha;
#pragma unroll
        for (int j = 0; j < kFwdBc; ++j)
          if (j < kc) acc += s[j] * Vs[j * ld + d];
        Os[tid * ld + d] = acc;
      }
    }
  }
  if (tid < nr) {
    const float inv = st.l > 0.f ? 1.0f / st.l : 0.f;  // fully masked row → O = 0
    float* o = out + ((size_t)b * p.T + i) * qrow + (size_t)h * p.D;
    for (int d = 0; d < p.D; ++d) o[d] = Os[tid * ld + d] * inv;
    lse[((size_t)b * p.H + h) * p.T + i] = fm::online_softmax_lse(st);
  }
}

// ---- backward -----------------------------------------------------------------------------------
// Drow[b, h, t] = Σ_d dO·O, one thread per (b, t, h).
__global__ void attention_bwd_dot_kernel(float* __restrict__ Drow, const float* __restrict__ dout,
                                         const float* __restrict__ out, Params p) {
  const size_t row = blockIdx.x * (size_t)blockDim.x + threadIdx.x;  // (b·T + t)·H + h
  if (row >= (size_t)p.B * p.T * p.H) return;
  const int h = (int)(row % p.H), t = (int)(row / p.H % p.T), b = (int)(row / p.H / p.T);
  float acc = 0.f;
  for (int d = 0; d < p.D; ++d) acc += dout[row * p.D + d] * out[row * p.D + d];
  Drow[((size_t)b * p.H + h) * p.T + t] = acc;
}

// smem: Ks, Vs, dKs, dVs [Bc, D+1]; Qs, dOs [Br, D+1]; dSs [Br, Bc]; lses, Ds [Br]
__global__ void attention_backward_kernel(float* __restrict__ dq, float* __restrict__ dk,
                                          float* __restrict__ dv, const float* __restrict__ dout,
                                          const float* __restrict__ q, const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const float* __restrict__ lse,
                                          const float* __restrict__ Drow, Params p) {
  extern __shared__ float sm[];
  const int ld = p.D + 1;
  float* Ks = sm;
  float* Vs = Ks + kBwdBc * ld;
  float* dKs = Vs + kBwdBc * ld;
  float* dVs = dKs + kBwdBc * ld;
  float* Qs = dVs + kBwdBc * ld;
  float* dOs = Qs + kBwdBr * ld;
  float* dSs = dOs + kBwdBr * ld;
  float* lses = dSs + kBwdBr * kBwdBc;
  float* Ds = lses + kBwdBr;
  const int jt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const int j0 = jt * kBwdBc, j1 = min(p.S, j0 + kBwdBc), kc = j1 - j0, j = j0 + tid;
  const size_t qrow = (size_t)p.H * p.D, kvrow = (size_t)p.Hkv * p.D;

  for (int idx = tid; idx < kBwdBc * p.D; idx += blockDim.x) {
    const int r = idx / p.D, d = idx % p.D;
    const size_t g = ((size_t)b * p.S + j0 + r) * kvrow + (size_t)kvh * p.D + d;
    Ks[r * ld + d] = r < kc ? k[g] : 0.f;
    Vs[r * ld + d] = r < kc ? v[g] : 0.f;
    dKs[r * ld + d] = 0.f;
    dVs[r * ld + d] = 0.f;
  }
  int qlo, qhi;
  fm::attn_query_range(j0, j1, p.T, p.S, p.left, p.right, &qlo, &qhi);

  for (int g = 0; g < p.G; ++g) {
    const int h = kvh * p.G + g;
    for (int i0 = qlo; i0 < qhi; i0 += kBwdBr) {
      const int nr = min(qhi - i0, kBwdBr);
      __syncthreads();  // previous tile's Qs/dOs/dSs fully consumed
      for (int idx = tid; idx < nr * p.D; idx += blockDim.x) {
        const int r = idx / p.D, d = idx % p.D;
        const size_t gq = ((size_t)b * p.T + i0 + r) * qrow + (size_t)h * p.D + d;
        Qs[r * ld + d] = q[gq];
        dOs[r * ld + d] = dout[gq];
      }
      for (int r = tid; r < nr; r += blockDim.x) {
        lses[r] = lse[((size_t)b * p.H + h) * p.T + i0 + r];
        Ds[r] = Drow[((size_t)b * p.H + h) * p.T + i0 + r];
      }
      __syncthreads();
      for (int r = 0; r < nr; ++r) {
        float ds = 0.f;
        if (tid < kc) {
          const int i = i0 + r;
          float s = -INFINITY;
          if (fm::attn_visible(i, j, p.T, p.S, p.left, p.right)) {
            float dot = 0.f;
            for (int d = 0; d < p.D; ++d) dot += Qs[r * ld + d] * Ks[tid * ld + d];
            s = p.tau * dot;
          }
          const float pr = fm::attn_prob(s, lses[r]);  // LSE = -inf (fully masked row) → 0
          if (pr != 0.f) {
            float dp = 0.f;
            for (int d = 0; d < p.D; ++d) dp += dOs[r * ld + d] * Vs[tid * ld + d];
            ds = p.tau * pr * (dp - Ds[r]);
            for (int d = 0; d < p.D; ++d) {
              dVs[tid * ld + d] += pr * dOs[r * ld + d];
              dKs[tid * ld + d] += ds * Qs[r * ld + d];
            }
          }
        }
        dSs[r * kBwdBc + tid] = ds;
      }
      __syncthreads();
      // dQ[nr, D] += dS[nr, kc] · K[kc, D]
      for (int idx = tid; idx < nr * p.D; idx += blockDim.x) {
        const int r = idx / p.D, d = idx % p.D;
        float acc = 0.f;
        for (int jj = 0; jj < kc; ++jj) acc += dSs[r * kBwdBc + jj] * Ks[jj * ld + d];
        atomicAdd(dq + ((size_t)b * p.T + i0 + r) * qrow + (size_t)h * p.D + d, acc);
      }
    }
  }
  __syncthreads();
  if (tid < kc) {
    const size_t g = ((size_t)b * p.S + j) * kvrow + (size_t)kvh * p.D;
    for (int d = 0; d < p.D; ++d) {
      dk[g + d] = dKs[tid * ld + d];
      dv[g + d] = dVs[tid * ld + d];
    }
  }
}

// Opt in to more than 48 KB of dynamic shared memory, or throw naming D when it cannot fit.
void prepare_smem(const void* kernel, size_t bytes, const char* who, int D) {
  int dev = 0, max_optin = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes > (size_t)max_optin)
    fail(who, ": head dim D=", D, " needs ", bytes, " bytes of shared memory per block; device ",
         dev, " allows ", max_optin);
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

}  // namespace

void launch_attention_forward(float* out, float* lse, const float* q, const float* k,
                              const float* v, const AttnShape& s, void* stream) {
  attention_check_shape(s, "cuda::launch_attention_forward");
  const Params p = make_params(s);
  const size_t smem = sizeof(float) * (size_t)(p.D + 1) * (2 * kFwdBr + 2 * kFwdBc);
  prepare_smem((const void*)attention_forward_kernel, smem, "cuda::launch_attention_forward", p.D);
  dim3 grid((unsigned)((p.T + kFwdBr - 1) / kFwdBr), (unsigned)p.H, (unsigned)p.B);
  attention_forward_kernel<<<grid, kFwdBr, smem, (cudaStream_t)stream>>>(out, lse, q, k, v, p);
  CUDA_CHECK(cudaGetLastError());
}

void launch_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                               const float* k, const float* v, const float* out, const float* lse,
                               const AttnShape& s, void* stream) {
  attention_check_shape(s, "cuda::launch_attention_backward");
  const Params p = make_params(s);
  cudaStream_t st = (cudaStream_t)stream;
  const size_t smem = sizeof(float) * ((size_t)(p.D + 1) * (4 * kBwdBc + 2 * kBwdBr) +
                                       (size_t)kBwdBr * kBwdBc + 2 * kBwdBr);
  prepare_smem((const void*)attention_backward_kernel, smem, "cuda::launch_attention_backward", p.D);
  const size_t nrows = (size_t)p.B * p.T * p.H;
  struct StreamScratch {  // stream-ordered scratch, freed on scope exit (also when a check throws)
    float* p = nullptr;
    cudaStream_t st;
    ~StreamScratch() {
      if (p) cudaFreeAsync(p, st);
    }
  } scratch{nullptr, st};
  CUDA_CHECK(cudaMallocAsync((void**)&scratch.p, nrows * sizeof(float), st));
  float* Drow = scratch.p;
  CUDA_CHECK(cudaMemsetAsync(dq, 0, nrows * p.D * sizeof(float), st));  // dQ accumulates atomically
  attention_bwd_dot_kernel<<<(unsigned)((nrows + 255) / 256), 256, 0, st>>>(Drow, dout, out, p);
  CUDA_CHECK(cudaGetLastError());
  dim3 grid((unsigned)((p.S + kBwdBc - 1) / kBwdBc), (unsigned)p.Hkv, (unsigned)p.B);
  attention_backward_kernel<<<grid, kBwdBc, smem, st>>>(dq, dk, dv, dout, q, k, v, lse, Drow, p);
  CUDA_CHECK(cudaGetLastError());
  scratch.p = nullptr;
  CUDA_CHECK(cudaFreeAsync(Drow, st));
}

// ---- host-buffer wrappers ------------------------------------------------------------------------
void attention_forward_host(float* out, float* lse, const float* q, const float* k,
                            const float* v, const AttnShape& s) {
  attention_check_shape(s, "cuda::attention_forward_host");
  const size_t nq = (size_t)s.B * s.T * s.H * s.D, nkv = (size_t)s.B * s.S * s.Hkv * s.D;
  const size_t nl = (size_t)s.B * s.H * s.T;
  DeviceBuffer<float> dq_(q, nq), dk_(k, nkv), dv_(v, nkv), dout_(nq), dl_(nl);
  launch_attention_forward(dout_.data(), dl_.data(), dq_.data(), dk_.data(), dv_.data(), s, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  dout_.download(out, nq);
  dl_.download(lse, nl);
}

void attention_backward_host(float* dq, float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             const AttnShape& s) {
  attention_check_shape(s, "cuda::attention_backward_host");
  const size_t nq = (size_t)s.B * s.T * s.H * s.D, nkv = (size_t)s.B * s.S * s.Hkv * s.D;
  const size_t nl = (size_t)s.B * s.H * s.T;
  DeviceBuffer<float> g_(dout, nq), q_(q, nq), k_(k, nkv), v_(v, nkv), o_(out, nq), l_(lse, nl);
  DeviceBuffer<float> dq_(nq), dk_(nkv), dv_(nkv);
  launch_attention_backward(dq_.data(), dk_.data(), dv_.data(), g_.data(), q_.data(), k_.data(), v_.data(), o_.data(),
                            l_.data(), s, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  dq_.download(dq, nq);
  dk_.download(dk, nkv);
  dv_.download(dv, nkv);
}

}  // namespace frugal::cuda
