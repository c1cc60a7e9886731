// shard_load.cpp: sharded loading of the frozen unit buffers (see shard_load.h).
// Per unit, per tensor in layout order:
//   1. local:   bf16 / f32 entries: convert the owned element slice; NF4: quantize the owned
//               blocks slice by slice (quant::nf4_quantize on whole blocks gives the same codes
//               and absmax as on the whole tensor: a block depends only on its own elements, and
//               a slice that starts on a block boundary has the same full / partial blocks).
//   2. collective (NF4 only): all_gather the owned blocks' absmax -> absmax [nblocks] everywhere.
//   3. local:   absmax / absmax_q / nested / offset bytes in the owned range.
#include "sharding/shard_load.h"

#include <algorithm>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <type_traits>

#include "quant/nf4.h"

namespace frugal {

namespace {

size_t dtype_size(const TensorView& t) { return (size_t)dtype_bits(t.dtype) / 8; }

// Elements [i0, i1) of t as a 1-D view into the same mapping.
TensorView slice_view(const TensorView& t, int64_t i0, int64_t i1) {
  TensorView s = t;
  const size_t es = dtype_size(t);
  s.data = t.data + (size_t)i0 * es;
  s.nbytes = (size_t)(i1 - i0) * es;
  s.shape = {i1 - i0};
  return s;
}

// Byte overlap of entry e with the unit range [lo, hi), relative to the entry start: {b, e}.
std::pair<size_t, size_t> entry_overlap(const FrozenEntry& e, size_t lo, size_t hi) {
  auto [b, x] = overlap(e.offset, e.bytes, lo, hi);
  return {b - e.offset, x - e.offset};
}

// Elements [i0, i1) of t converted to T (bf16 or fp32) straight into dst (T-aligned: entries
// start on 64-byte boundaries and the shard cuts between elements), a slice of scratch_elems at a
// time so that the mapped pages read can be dropped as we go.
template <class T>
void convert_slice(const TensorView& t, int64_t i0, int64_t i1, uint8_t* dst, int64_t scratch_elems) {
  FRUGAL_CHECK((uintptr_t)dst % alignof(T) == 0, "tensor ", t.name, ": misaligned shard destination");
  T* out = reinterpret_cast<T*>(dst);
  for (int64_t c = i0; c < i1; c += scratch_elems) {
    const int64_t ce = std::min<int64_t>(c + scratch_elems, i1);
    const TensorView s = slice_view(t, c, ce);
    if constexpr (std::is_same_v<T, bf16>)
      to_bf16(s, out + (c - i0));
    else
      to_float(s, out + (c - i0));
    release_mapped_pages(s.data, s.nbytes);
  }
}

void check_source(const SafetensorsModel& st, const std::string& dir, const FrozenEntry& e) {
  if (!st.has(e.tensor)) fail("missing tensor ", e.tensor, " in model ", dir);
  const TensorView& t = st.get(e.tensor);
  if (t.shape != e.shape)
    fail("tensor ", e.tensor, " in ", t.file, " has shape ", shape_str(t.shape), ", expected ",
         shape_str(e.shape));
  if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
    fail("unsupported dtype ", dtype_name(t.dtype), " for tensor '", e.tensor, "' in ", t.file,
         " (the loader reads F32, BF16, F16)");
}

}  // namespace

std::pair<int64_t, int64_t> nf4_owned_blocks(const FrozenEntry& codes, int blocksize, size_t lo, size_t hi) {
  FRUGAL_CHECK(codes.part == FrozenPart::NF4Codes, "nf4_owned_blocks: ", codes.tensor, " entry is ",
               frozen_part_name(codes.part));
  const auto [b, e] = entry_overlap(codes, lo, hi);
  if (b == e) return {0, 0};
  const size_t bb = (size_t)blocksize / 2;  // code bytes per block
  // Entries start on `align` boundaries and shards are multiples of align (a multiple of bb), so a
  // shard boundary inside the entry is a block boundary; the entry's end may cut the last block.
  FRUGAL_CHECK(b % bb == 0 && (e % bb == 0 || e == codes.bytes), "NF4 codes of ", codes.tensor,
               ": shard bytes [", b, ", ", e, ") split a block of ", blocksize);
  return {(int64_t)(b / bb), (int64_t)((e + bb - 1) / bb)};
}

avector<float> shard_tensor_local(const TensorView& t, const UnitLayout& u, const ModelLayout& L,
                                  size_t lo, size_t hi, uint8_t* shard, int64_t scratch_elems) {
  FRUGAL_CHECK(scratch_elems > 0, "shard_tensor_local: scratch of ", scratch_elems, " elements");
  avector<float> absmax;
  for (const FrozenEntry& e : u.frozen) {
    if (e.tensor != t.name) continue;
    const auto [b, x] = entry_overlap(e, lo, hi);
    uint8_t* dst = shard + (e.offset + b - lo);
    switch (e.part) {
      case FrozenPart::BF16:
      case FrozenPart::F32: {
        const size_t es = e.part == FrozenPart::BF16 ? 2 : 4;
        if (b == x) break;
        FRUGAL_CHECK(b % es == 0 && x % es == 0, "tensor ", e.tensor, ": shard bytes [", b, ", ", x,
                     ") cut an element");
        if (e.part == FrozenPart::BF16)
          convert_slice<bf16>(t, (int64_t)(b / es), (int64_t)(x / es), dst, scratch_elems);
        else
          convert_slice<float>(t, (int64_t)(b / es), (int64_t)(x / es), dst, scratch_elems);
        break;
      }
      case FrozenPart::NF4Codes: {
        const int bs = L.opt.nf4_blocksize;
        const int64_t n = shape_numel(e.shape);
        const auto [b0, b1] = nf4_owned_blocks(e, bs, lo, hi);
        absmax.assign((size_t)(b1 - b0), 0.f);
        const int64_t chunk_blocks = std::max<int64_t>(1, scratch_elems / bs);
        avector<bf16> scratch((size_t)std::min<int64_t>(chunk_blocks * bs, std::max<int64_t>((b1 - b0) * bs, 0)));
        for (int64_t c = b0; c < b1; c += chunk_blocks) {
          const int64_t ce = std::min(c + chunk_blocks, b1);
          const int64_t i0 = c * bs, i1 = std::min<int64_t>(ce * bs, n);
          const TensorView s = slice_view(t, i0, i1);
          to_bf16(s, scratch.data());  // the old loader quantizes the bf16 values too
          release_mapped_pages(s.data, s.nbytes);
          quant::NF4Tensor q = quant::nf4_quantize(scratch.data(), {i1 - i0}, bs, /*double_quant=*/false);
          // i0 is even (bs >= 32), so the slice's packed bytes start at entry byte i0 / 2
          std::memcpy(shard + (e.offset + (size_t)i0 / 2 - lo), q.packed.data(), q.packed.size());
          std::memcpy(absmax.data() + (c - b0), q.absmax.data(), q.absmax.size() * sizeof(float));
        }
        break;
      }
      default:
        break;  // statistics: shard_nf4_stats, once the absmax of every block is known
    }
  }
  return absmax;
}

void shard_nf4_stats(const UnitLayout& u, const ModelLayout& L, const std::string& tensor,
                     const float* absmax, int64_t nblocks, size_t lo, size_t hi, uint8_t* shard) {
  // Double quantization, computed only when one of its entries overlaps [lo, hi); exactly the
  // steps of quant::nf4_quantize.
  bool need_dq = false;
  for (const FrozenEntry& e : u.frozen) {
    if (e.tensor != tensor) continue;
    const auto [b, x] = entry_overlap(e, lo, hi);
    if (b != x && (e.part == FrozenPart::NF4AbsmaxQ || e.part == FrozenPart::NF4Nested ||
                   e.part == FrozenPart::NF4Offset))
      need_dq = true;
  }
  avector<uint8_t> absmax_q;
  avector<float> nested;
  float offset = 0.f;
  if (need_dq) {
    const int nested_bs = quant::NF4Tensor{}.nested_blocksize;
    offset = nblocks > 0 ? quant::torch_mean_f32(absmax, nblocks) : 0.f;
    avector<float> centered((size_t)nblocks);
    for (int64_t i = 0; i < nblocks; ++i) centered[i] = absmax[i] - offset;
    absmax_q.assign((size_t)nblocks, 0);
    nested.assign((size_t)((nblocks + nested_bs - 1) / nested_bs), 0.f);
    quant::quantize_blockwise_dyn8(centered.data(), nblocks, nested_bs, absmax_q.data(), nested.data());
  }
  for (const FrozenEntry& e : u.frozen) {
    if (e.tensor != tensor) continue;
    const auto [b, x] = entry_overlap(e, lo, hi);
    if (b == x) continue;
    const uint8_t* src = nullptr;
    size_t src_bytes = 0;
    switch (e.part) {
      case FrozenPart::NF4Absmax: src = (const uint8_t*)absmax, src_bytes = (size_t)nblocks * 4; break;
      case FrozenPart::NF4AbsmaxQ: src = absmax_q.data(), src_bytes = absmax_q.size(); break;
      case FrozenPart::NF4Nested: src = (const uint8_t*)nested.data(), src_bytes = nested.size() * 4; break;
      case FrozenPart::NF4Offset: src = (const uint8_t*)&offset, src_bytes = 4; break;
      default: continue;
    }
    FRUGAL_CHECK(src_bytes == e.bytes, "tensor ", tensor, ": ", frozen_part_name(e.part), " has ",
                 src_bytes, " bytes, the layout says ", e.bytes, " (blocksize ", L.opt.nf4_blocksize, ")");
    std::memcpy(shard + (e.offset + b - lo), src + b, x - b);
  }
}

std::vector<avector<uint8_t>> load_frozen_shards(const std::string& model_dir, const ModelLayout& L,
                                                 int rank, const FloatAllGather& all_gather,
                                                 int64_t scratch_elems) {
  const int W = L.world;
  FRUGAL_CHECK(rank >= 0 && rank < W, "load_frozen_shards: rank ", rank, " of ", W);
  SafetensorsModel st(model_dir);
  // Every tensor is checked before the first collective: all ranks see the same files, so they
  // all throw here rather than one of them leaving the others in an all_gather.
  for (const UnitLayout& u : L.units)
    for (const FrozenEntry& e : u.frozen) check_source(st, model_dir, e);

  std::vector<avector<uint8_t>> shards(L.units.size());
  for (size_t ui = 0; ui < L.units.size(); ++ui) {
    const UnitLayout& u = L.units[ui];
    const auto [lo, hi] = shard_range(u.frozen_padded, W, rank);
    avector<uint8_t>& shard = shards[ui];
    shard.assign(u.frozen_shard, 0);
    for (size_t ei = 0; ei < u.frozen.size(); ++ei) {
      const FrozenEntry& first = u.frozen[ei];
      if (ei > 0 && u.frozen[ei - 1].tensor == first.tensor) continue;  // a tensor's parts are adjacent
      const TensorView& t = st.get(first.tensor);
      avector<float> mine = shard_tensor_local(t, u, L, lo, hi, shard.data(), scratch_elems);
      const FrozenEntry* codes = u.find(first.tensor, FrozenPart::NF4Codes);
      if (!codes) continue;
      // Every rank's block range from the layout; parts padded to the largest one.
      const int bs = L.opt.nf4_blocksize;
      const int64_t nb = (shape_numel(codes->shape) + bs - 1) / bs;
      std::vector<std::pair<int64_t, int64_t>> ranges(W);
      int64_t maxc = 0, covered = 0;
      for (int r = 0; r < W; ++r) {
        const auto [rlo, rhi] = shard_range(u.frozen_padded, W, r);
        ranges[r] = nf4_owned_blocks(*codes, bs, rlo, rhi);
        maxc = std::max(maxc, ranges[r].second - ranges[r].first);
        covered += ranges[r].second - ranges[r].first;
      }
      FRUGAL_CHECK(covered == nb && (int64_t)mine.size() == ranges[rank].second - ranges[rank].first,
                   "NF4 tensor ", first.tensor, ": ranks own ", covered, " of ", nb, " blocks");
      if (maxc == 0) continue;  // nb == 0 on every rank alike
      avector<float> send((size_t)maxc, 0.f), recv((size_t)maxc * W);
      std::copy(mine.begin(), mine.end(), send.begin());
      all_gather(std::span<const float>(send.data(), send.size()), std::span<float>(recv.data(), recv.size()));
      avector<float> absmax((size_t)nb);
      for (int r = 0; r < W; ++r)
        std::copy(recv.begin() + (size_t)r * maxc,
                  recv.begin() + (size_t)r * maxc + (size_t)(ranges[r].second - ranges[r].first),
                  absmax.begin() + ranges[r].first);
      shard_nf4_stats(u, L, first.tensor, absmax.data(), nb, lo, hi, shard.data());
    }
  }
#if defined(__GLIBC__)
  malloc_trim(0);  // hand the freed slices back: after the load a rank holds its shards, not the scratch
#endif
  return shards;
}

// ---- reference: the unit buffer from an in-memory model -----------------------------------
namespace {
struct Source {
  const bf16* bf = nullptr;        // bf16 tensors (embedding, lm_head)
  const Buf<float>* f32 = nullptr; // norms
  const FrozenWeight* W = nullptr; // decoder linears
};

Source find_source(const LlamaModel& m, const std::string& name) {
  Source s;
  if (name == "model.embed_tokens.weight") {
    s.bf = m.embed.data();
  } else if (name == "lm_head.weight") {
    FRUGAL_CHECK(!m.config().tie_word_embeddings && m.lm_head_w.size() > 0, "pack_unit_frozen: the model has no lm_head.weight");
    s.bf = m.lm_head_w.data();
  } else if (name == m.norm.name) {
    s.f32 = &m.norm.w;
  } else {
    for (const LlamaBlock& b : m.blocks) {
      for (const NormParam* n : {&b.ln1, &b.ln2})
        if (n->name == name) s.f32 = &n->w;
      for (const LinearSite* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down})
        if (l->name == name) s.W = &l->W;
    }
  }
  if (!s.bf && !s.f32 && !s.W) fail("pack_unit_frozen: the model has no tensor ", name);
  return s;
}
}  // namespace

void pack_unit_frozen(const LlamaModel& m, const UnitLayout& u, uint8_t* out) {
  std::memset(out, 0, u.frozen_padded);
  for (const FrozenEntry& e : u.frozen) {
    const Source s = find_source(m, e.tensor);
    const int64_t n = shape_numel(e.shape);
    const void* src = nullptr;
    size_t bytes = 0;
    auto nf4 = [&]() -> const quant::NF4Tensor& {
      if (!s.W || s.W->kind != FrozenWeight::Kind::NF4)
        fail("pack_unit_frozen: ", e.tensor, " is not NF4 in the model, the layout has ", frozen_part_name(e.part));
      return s.W->q;
    };
    switch (e.part) {
      case FrozenPart::BF16:
        if (s.bf) {
          src = s.bf, bytes = (size_t)n * 2;
        } else if (s.W && s.W->kind == FrozenWeight::Kind::BF16) {
          src = s.W->w.data(), bytes = s.W->w.size() * 2;
        }
        break;
      case FrozenPart::F32:
        if (s.f32) src = s.f32->data(), bytes = s.f32->size() * 4;
        break;
      case FrozenPart::NF4Codes: src = nf4().packed.data(), bytes = nf4().packed.size(); break;
      case FrozenPart::NF4Absmax:
        FRUGAL_CHECK(!nf4().double_quant, "pack_unit_frozen: ", e.tensor, " is double-quantized, the layout is not");
        src = nf4().absmax.data(), bytes = nf4().absmax.size() * 4;
        break;
      case FrozenPart::NF4AbsmaxQ:
        FRUGAL_CHECK(nf4().double_quant, "pack_unit_frozen: ", e.tensor, " is not double-quantized, the layout is");
        src = nf4().absmax_q.data(), bytes = nf4().absmax_q.size();
        break;
      case FrozenPart::NF4Nested:
        src = nf4().nested_absmax.data(), bytes = nf4().nested_absmax.size() * 4;
        break;
      case FrozenPart::NF4Offset: src = &nf4().offset, bytes = 4; break;
    }
    if (!src) fail("pack_unit_frozen: ", e.tensor, " has no ", frozen_part_name(e.part), " storage in the model");
    if (bytes != e.bytes)
      fail("pack_unit_frozen: ", e.tensor, " ", frozen_part_name(e.part), " has ", bytes,
           " bytes in the model, the layout says ", e.bytes);
    std::memcpy(out + e.offset, src, bytes);
  }
}

void load_dense_shards(const std::string& model_dir, const ModelLayout& L, int rank, const std::vector<float*>& w) {
  if (L.dense.empty()) return;
  SafetensorsModel st(model_dir);
  for (const UnitLayout& u : L.units) {
    const auto [lo, hi] = shard_range(u.train_padded, L.world, rank);
    for (const TrainEntry& e : u.train) {
      if (!e.dense()) continue;
      check_source(st, model_dir, FrozenEntry{e.site, FrozenPart::F32, e.shape, 0, 0});
      const auto [b, en] = overlap(e.offset, e.numel, lo, hi);
      if (b == en) continue;
      FRUGAL_CHECK(w.size() > (size_t)u.index && w[u.index], "load_dense_shards: no trainable shard for unit ", u.name);
      float* dst = w[u.index] + (b - lo);
      const TensorView& t = st.get(e.site);
      const int64_t i0 = (int64_t)(b - e.offset), i1 = (int64_t)(en - e.offset);
      if (e.shape.size() == 1) {  // a norm weight: fp32 in the model
        convert_slice<float>(t, i0, i1, reinterpret_cast<uint8_t*>(dst), kShardLoadScratchElems);
      } else {  // bf16 in the model: the master starts at float(bf16(x))
        avector<bf16> tmp((size_t)(i1 - i0));
        convert_slice<bf16>(t, i0, i1, reinterpret_cast<uint8_t*>(tmp.data()), kShardLoadScratchElems);
        for (int64_t k = 0; k < i1 - i0; k++) dst[k] = tmp[(size_t)k].to_float();
      }
    }
  }
}

}  // namespace frugal
