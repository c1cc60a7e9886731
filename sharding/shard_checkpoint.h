// shard_checkpoint.h: sharded training checkpoints over parallel HDF5 (MPI-IO), in the SAME
// "frugal-ckpt-v1" format as src/model/checkpoint.h: /params/<PEFT name>, /optim/<state>/<name>
// (AdamW: m, v) fp32 with the tensors' real shapes ([r,in] for A, [out,r] for B; the layout's
// padding is never stored) and the same root attributes (param_order = the layout's trainable
// entries in unit order = LlamaModel::trainable_params order). A file saved at world W loads at
// any W' (and with the single-process load_checkpoint), and vice versa: the file does not record W.
//
// Each rank writes / reads only the part of every tensor that lies in its shard of the unit's
// trainable buffer: a flat range [s, t) of a [R, C] tensor is at most three hyperslabs (partial
// first row, full rows, partial last row) OR-ed into one selection, written with independent
// MPI-IO transfers (measured faster than collective for many small tensors, see the .cpp).
//
// Crash safety as save_checkpoint: all ranks write "<path>.tmp", close it collectively, rank 0
// fsyncs it, renames it over <path> and fsyncs the directory; a barrier ends the call.
// Errors (not a checkpoint, missing/unexpected tensor, shape or LoRA rank mismatch, I/O) are
// agreed on collectively and thrown as the same frugal::Error on every rank of the communicator,
// naming the file, the tensor and the rank that saw it first; no rank is left in a collective.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "sharding/layout.h"
#include "src/model/checkpoint.h"
#include "src/model/optim.h"

namespace frugal {

// Per unit (L.units[u]): this rank's shard of the unit's trainable buffer (train_shard floats; null
// or absent for units without trainables): the fp32 master weights, stored as /params/<tensor>.
// optim: this rank's parts of the optimizer state (Optimizer::state_parts of the shard params),
// stored as /optim/<state>/<tensor> in each part's own shape (GaLore's moments and projectors are
// not the tensor's shape); every rank lists the same (state, tensor, shape) in the same order,
// writes [write_begin, write_end) and reads [begin, end) of each. May be empty when
// load_optimizer is false.
struct ShardBuffers {
  std::vector<float*> w;
  std::vector<OptimStatePart> optim;
  // The optimizer `optim` came from (nullable): its end_state_io is called once the parts are
  // written (save) or read (load with load_optimizer).
  Optimizer* optimizer = nullptr;
};

// Collective over comm (whose size must equal L.world; rank r holds shard r). With W == 1 and MPI
// not initialized, plain serial HDF5 is used. st.adam_t is stored as the 'adam_t' attribute.
void save_sharded_checkpoint(const std::string& path, const TrainState& st, const ModelLayout& L,
                             const ShardBuffers& b, MPI_Comm comm = MPI_COMM_WORLD);

// Collective over comm. Fills this rank's shards of w (and the state when load_optimizer); the padding
// is set to 0. Everything is validated before any buffer is touched. Returns the stored state
// (the caller sets its optimizer's t from adam_t).
TrainState load_sharded_checkpoint(const std::string& path, const ModelLayout& L, const ShardBuffers& b,
                                   bool load_optimizer, MPI_Comm comm = MPI_COMM_WORLD);

// The trainable tensors of a layout in checkpoint order (= param_order): name, shape, unit and
// float offset in the unit's trainable buffer.
struct LayoutTensor {
  std::string name;
  std::vector<int64_t> shape;
  int unit = 0;
  size_t offset = 0, numel = 0;
};
std::vector<LayoutTensor> layout_tensors(const ModelLayout& L);

}  // namespace frugal
