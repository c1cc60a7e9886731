// embedding.h: token embedding lookup. out[n, :] = table[ids[n], :] (bf16 table -> fp32 rows);
// backward scatter-adds the row gradients into an fp32 table gradient.
#pragma once
#include <cstdint>

#include "src/common.h"

namespace frugal {

// out: [N, C] fp32, ids: [N] int32, table: [V, C] bf16. An id outside [0, V) throws, naming it.
void embedding_forward(float* out, const int32_t* ids, const bf16* table, int N, int C, int V);
// dtable: [V, C] fp32 (+=), dout: [N, C] fp32. Threads split C, so repeated ids never race.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V);

// naive scalar references (the truth for tests)
void embedding_forward_ref(float* out, const int32_t* ids, const bf16* table, int N, int C, int V);
void embedding_backward_ref(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V);

}  // namespace frugal
