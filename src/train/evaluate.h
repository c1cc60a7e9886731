// evaluate.h: mean next-token cross-entropy of a model over a token stream (`.ids`, `.txt`) or
// an HDF5 token dataset (`frugal eval`, and the trainer's held-out evaluation).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/io/dataset.h"
#include "src/model/model.h"

namespace frugal {

// A .ids file: whitespace-separated token ids, one stream. Non-integer text or an id outside
// [0, vocab): frugal::Error naming the file, the token index and the line.
std::vector<int32_t> read_ids_file(const std::string& path, int vocab);
struct EvalResult {
  ForwardStats stats;      // summed CE over every predicted position
  int64_t windows = 0;     // non-overlapping windows of seq_len tokens (remainder dropped)
  int64_t tokens = 0;      // windows·seq_len tokens run through the model
  double seconds = 0.0;
};
// Cuts `ids` into windows of seq_len tokens, batch windows per forward; each window of n tokens
// predicts its n-1 next tokens. Throws if not even one window fits.
EvalResult evaluate_windows(LlamaModel& m, const std::vector<int32_t>& ids, int seq_len, int batch);


// ---- evaluation of an HDF5 token dataset ----
// Each sample is its own sequence, truncated to its first seq_len tokens; position t predicts
// token t+1 only where loss_mask[t+1] = 1 (a sample's first token is never a target). `batch`
// consecutive samples per forward, right-padded (causal attention: padding changes nothing
// before it). Tokens outside [0, model vocab): frugal::Error naming the sample.
EvalResult evaluate_samples(LlamaModel& m, const TokenDataset& ds, int seq_len, int batch,
                            const std::string& where = "dataset");

}  // namespace frugal
