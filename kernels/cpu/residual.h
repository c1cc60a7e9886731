// residual.h: the residual add of the decoder block, y += x (fp32), and zeroing.
#pragma once
#include <cstddef>

namespace frugal {

void residual_add(float* y, const float* x, size_t n);      // y, x: [n] fp32; y += x
void residual_add_ref(float* y, const float* x, size_t n);  // scalar reference
void zero_forward(float* x, size_t n);                      // x: [n] = 0

}  // namespace frugal
