// shard_load.h: sharded loading. Rank r of W builds exactly the bytes [r·shard, (r+1)·shard) of
// every unit's frozen buffer (sharding/layout.h) straight from the safetensors files: it mmaps
// them, converts only the element ranges its bytes come from, slice by slice (bounded scratch),
// quantizes the NF4 blocks whose codes it owns, and drops the pages it read. No rank ever holds a
// whole tensor: peak memory is its shard + one slice + the per-tensor block absmax arrays.
//
// NF4 (bit-identical to quant::nf4_quantize of the whole bf16 tensor, i.e. to LlamaModel::load):
//   codes of block b      depend only on block b's elements -> quantized by the codes' owner
//   absmax[b] (fp32)      computed by the codes' owner, all-gathered per tensor (every rank then
//                         holds absmax [nblocks], 4 bytes per blocksize elements)
//   double quant          offset = torch mean of absmax, absmax_q / nested from dyn8 of
//                         absmax - offset: the same computation on every rank, each keeps the
//                         bytes in its range
// Every rank takes part in every per-tensor all_gather in layout order, also when it owns none of
// the tensor's blocks (each rank's part is padded to the largest part, counts come from the layout).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sharding/comm.h"
#include "sharding/layout.h"
#include "src/common.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"

namespace frugal {

// all-gather of fp32 [n] from every rank into [W·n] (rank r's part at r·n). The Communicator form
// of load_frozen_shards passes comm.all_gather; tests can simulate ranks with threads.
using FloatAllGather = std::function<void(std::span<const float> mine, std::span<float> all)>;

// Per unit: this rank's frozen shard (L.units[u].frozen_shard bytes; padding bytes zero).
// Missing tensor / wrong shape / unsupported dtype: frugal::Error naming the tensor and the file
// (checked for every tensor before the first collective, so every rank fails the same way).
// scratch_elems bounds the slice converted at a time: 4M elements = at most 16 MB of mapped source
// pages (F32 file) resident before they are dropped, plus for NF4 an 8 MB bf16 copy of the slice and
// its 2 MB of codes. bf16 / f32 entries are converted straight into the shard.
constexpr int64_t kShardLoadScratchElems = int64_t(1) << 22;
std::vector<avector<uint8_t>> load_frozen_shards(const std::string& model_dir, const ModelLayout& L,
                                                 int rank, const FloatAllGather& all_gather,
                                                 int64_t scratch_elems = kShardLoadScratchElems);

// The real thing: rank and collectives from comm (comm.world() must equal L.world).
inline std::vector<avector<uint8_t>> load_frozen_shards(const std::string& model_dir, const ModelLayout& L,
                                                        Communicator& comm) {
  FRUGAL_CHECK(comm.world() == L.world, "load_frozen_shards: layout for ", L.world,
               " ranks, communicator has ", comm.world(), " (rank ", comm.rank(), ")");
  return load_frozen_shards(model_dir, L, comm.rank(), [&comm](std::span<const float> mine, std::span<float> all) {
    comm.all_gather<float>(mine, all);
  });
}

// Dense trainables (layout entries 'W', src/model/tensors.h): writes this rank's part of each into
// w[unit] (the unit's trainable shard, Fsdp::train_shard), fp32, the values the single-process
// model starts from: norms read as fp32, bf16-stored tensors as float(bf16(x)) (LlamaModel::load
// then add_master). Other elements of the shards are left as they are. Missing tensor / wrong
// shape: frugal::Error naming the tensor and the model dir. No collectives.
void load_dense_shards(const std::string& model_dir, const ModelLayout& L, int rank, const std::vector<float*>& w);

// ---- the pieces (exposed for tests) --------------------------------------------------------
// Blocks [b0, b1) of an NF4 tensor whose codes lie in the unit byte range [lo, hi) (the codes
// entry `codes`; shard boundaries never split a block — checked).
std::pair<int64_t, int64_t> nf4_owned_blocks(const FrozenEntry& codes, int blocksize, size_t lo, size_t hi);

// Fills the bytes of the unit byte range [lo, hi) (shard = unit bytes lo..hi) that come from the
// tensor t's entries of kind BF16 / F32 / NF4Codes: converts and quantizes slice by slice, at most
// scratch_elems elements at a time. For an NF4 tensor returns the fp32 absmax of the owned blocks
// (nf4_owned_blocks); empty otherwise.
avector<float> shard_tensor_local(const TensorView& t, const UnitLayout& u, const ModelLayout& L,
                                  size_t lo, size_t hi, uint8_t* shard, int64_t scratch_elems);

// Fills the NF4 statistics entries (absmax, or absmax_q + nested + offset) of `tensor` that fall
// in [lo, hi), from the absmax of ALL its blocks: absmax [nblocks].
void shard_nf4_stats(const UnitLayout& u, const ModelLayout& L, const std::string& tensor,
                     const float* absmax, int64_t nblocks, size_t lo, size_t hi, uint8_t* shard);

// The whole unit frozen buffer (u.frozen_padded bytes, padding zero) from a model loaded the
// whole-model way (LlamaModel::load with the layout's options): the reference for the sharded
// loader, and how a W = 1 run builds units from an in-memory model. Throws when the model's
// storage does not match the layout (other quantization options, shapes).
void pack_unit_frozen(const LlamaModel& m, const UnitLayout& u, uint8_t* out);

}  // namespace frugal
