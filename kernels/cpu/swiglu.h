// swiglu.h: the Llama MLP gate, out = silu(gate) * up, silu(g) = g * sigmoid(g); fp32.
#pragma once
#include <cstddef>

#include "src/common.h"

namespace frugal {

// out, gate, up: [n] fp32
void swiglu_forward(float* out, const float* gate, const float* up, size_t n);
// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (both overwritten)
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n);

// scalar references (fm::silu from shared_math.h)
void swiglu_forward_ref(float* out, const float* gate, const float* up, size_t n);
void swiglu_backward_ref(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n);

}  // namespace frugal
