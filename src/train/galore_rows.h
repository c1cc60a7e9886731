// galore_rows.h: internals shared by galore_projector.cpp (layout, exact SVD, project) and
// galore_randomized.cpp (range finder): this rank's rows of a row-split G (galore_projector.h)
// and the small dense helpers both use. Not part of the API.
//
// A rank's rows are row0..row1 of G; its first and last may be split rows (shared with other
// ranks). Locally they are a zero-padded block Gl [row1 - row0, n]: this rank's elements at their
// place, zeros elsewhere, so that a sum over ranks of per-row products counts every element once.
// A row is "owned" by the rank holding its first element (rows own_row0..own_row1).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sharding/comm.h"
#include "src/model/backend.h"
#include "src/train/galore_projector.h"

namespace frugal::galore_detail {

inline int64_t local_rows(const MatrixSplit& s) { return s.row1() - s.row0(); }
inline int64_t own_row0(const MatrixSplit& s) { return (int64_t)((s.begin() + s.n - 1) / s.n); }
inline int64_t own_row1(const MatrixSplit& s) { return (int64_t)((s.end() + s.n - 1) / s.n); }

// Gl: [row1 - row0, n] fp32 (see above): g itself when this rank holds whole rows, else a
// zero-padded copy.
struct LocalBlock {
  std::vector<float> padded;  // empty when g is used as is
  const float* data = nullptr;
};
LocalBlock local_block(const MatrixSplit& s, const float* g);

// y: [row1 - row0, w] per-row partial values -> the split rows summed over the ranks that share
// them (one all-reduce of [split rows, w], over the whole communicator; none when W = 1).
void sum_split_rows(const MatrixSplit& s, float* y, int w, Communicator& comm);

// C [M, N] = op(A)·op(B) (+ beta·C), fp32, through the backend (kernels/cpu/gemm_f32.h
// conventions); K = 0 (a rank holding no rows) gives the empty sum.
void gemm(Backend& be, bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc);

// The randomized refresh (galore_projector.h): vt [r, n] (replicated) and u [row1 - row0, r]
// (this rank's rows of U[:, :r]) of G's top r singular triplets, before the sign convention.
void randomized_svd(const MatrixSplit& s, const float* g, int r, const ProjectorOptions& o,
                    const std::string& tensor, int64_t step, Communicator& comm, Backend& be,
                    std::vector<float>& vt, std::vector<float>& u);

}  // namespace frugal::galore_detail
