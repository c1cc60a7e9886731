// plan.cpp: the memory planner (see plan.h for what each category counts and where the sizes
// come from). Sizes are bytes per rank; shapes are written out next to each term.
#include "src/train/plan.h"

#include "src/model/tensors.h"
#include "src/train/galore.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/model/backend.h"
#include "sharding/fsdp.h"
#include "sharding/layout.h"
#include "sharding/shard_load.h"

namespace frugal {

namespace fs = std::filesystem;

namespace {

struct Site {  // one decoder linear: W [out, in]
  const char* name;
  int64_t in, out;
};
std::vector<Site> sites_of(const LlamaConfig& c) {  // from the shared table (config.h)
  const auto lin = llama_block_linears(c, 0);
  std::vector<Site> s;
  for (size_t i = 0; i < lin.size(); i++) s.push_back({lora_site_names()[i].c_str(), lin[i].in, lin[i].out});
  return s;
}
bool targeted(const LoraConfig* lora, const char* site) {
  if (!lora) return false;
  const auto t = LoraConfig::expand_targets(lora->target_modules);
  return std::find(t.begin(), t.end(), site) != t.end();
}

std::string human(double b) {
  char t[32];
  const double a = std::fabs(b);
  if (a >= 1024.0 * 1024 * 1024) std::snprintf(t, sizeof t, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (a >= 1024.0 * 1024) std::snprintf(t, sizeof t, "%.1f MiB", b / (1024.0 * 1024));
  else if (a >= 1024.0) std::snprintf(t, sizeof t, "%.1f KiB", b / 1024.0);
  else std::snprintf(t, sizeof t, "%.0f B", b);
  return t;
}

size_t mem_total_bytes() {  // /proc/meminfo MemTotal
  std::ifstream f("/proc/meminfo");
  std::string k;
  size_t kb = 0;
  while (f >> k) {
    if (k == "MemTotal:") {
      f >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(f, rest);
  }
  return 0;
}

}  // namespace

// ---- public helpers ---------------------------------------------------------------------------

LlamaConfig plan_model_config(const Recipe& r) {
  if (!r.model_path.empty() && fs::exists(fs::path(r.model_path) / "config.json")) return LlamaConfig::load(r.model_path);
  if (!r.model_preset.empty()) return LlamaConfig::preset(r.model_preset);
  if (r.model_path.empty()) fail(r.path, ": neither model.path nor model.preset is set");
  fail(r.path, ": model.path '", r.model_path, "' has no config.json and model.preset is not set (to plan "
       "before downloading, name the shapes: --set model.preset=llama3.1-70b, llama3.1-8b, ...)");
}

size_t plan_activation_bytes(const LlamaConfig& c, const LoraConfig* lora, int B, int T, bool checkpoint) {
  // The buffers LlamaModel::prepare(B, T, for_backward = true) sizes, plus LoRA u; see model.h.
  const size_t N = (size_t)B * T, L = (size_t)c.num_hidden_layers, C = c.hidden_size, Q = c.q_dim(),
               KV = c.kv_dim(), F = c.intermediate_size, H = c.num_attention_heads;
  size_t b = 0;
  b += (L + 1) * N * C * 4;  // xs_: L+1 block inputs [N,C] f32
  // one BlockActs set: rstd1, rstd2 [N]; q, att [N,Q]; k, v [N,KV]; lse [N·H]; h [N,C];
  // gate, up [N,F] (f32); n1, n2 [N,C] bf16
  const size_t set = 4 * (2 * N + 2 * N * Q + 2 * N * KV + N * H + N * C + 2 * N * F) + 2 * (2 * N * C);
  b += (checkpoint ? 1 : L) * set;
  // scratch f32: rstdf [N]; tmpC, d_x0, dres, dtmp, dn [N,C]; act, dact, dgate, dup [N,F];
  // dq, datt [N,Q]; dk, dv [N,KV]
  b += 4 * (N + 5 * N * C + 4 * N * F + 2 * N * Q + 2 * N * KV);
  // scratch bf16: xf_bf [N,C]; x_bf [N,max(Q,F)]; dy_bf [N,max(C,Q,F)]
  b += 2 * (N * C + N * std::max(Q, F) + N * std::max({C, Q, F}));
  // LoRA u [N,r] f32 per adapter (kept for every layer, also with checkpointing)
  if (lora)
    for (const Site& s : sites_of(c))
      if (targeted(lora, s.name)) b += L * N * (size_t)lora->rank * 4;
  return b;
}

double parse_byte_size(const std::string& text) {
  std::string s;
  for (char ch : text)
    if (!std::isspace((unsigned char)ch)) s += ch;
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail("memory size '", text, "' is not a number with an optional unit (e.g. 24GiB, 80GB, 512MiB)");
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = (char)std::tolower((unsigned char)ch);
  double m = 0;
  if (unit.empty() || unit == "b") m = 1;
  else if (unit == "k" || unit == "kib") m = 1024.0;
  else if (unit == "kb") m = 1e3;
  else if (unit == "m" || unit == "mib") m = 1024.0 * 1024;
  else if (unit == "mb") m = 1e6;
  else if (unit == "g" || unit == "gib") m = 1024.0 * 1024 * 1024;
  else if (unit == "gb") m = 1e9;
  else if (unit == "t" || unit == "tib") m = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "tb") m = 1e12;
  else fail("memory size '", text, "': unknown unit '", unit, "' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  if (!(v >= 0) || !std::isfinite(v)) fail("memory size '", text, "' must be >= 0");
  return v * m;
}

size_t plan_measure_runtime_bytes() {
  // What a training step initializes besides its own buffers: the backend's runtime (on the CPU
  // the OpenMP pool and oneDNN's engine and JIT kernels; Backend::warm_up).
  cpu_backend().warm_up();
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return (size_t)std::stoull(line.substr(6)) * 1024;
  fail("plan: cannot read VmRSS from /proc/self/status");
}

const PlanRow* Plan::row(const std::string& key) const {
  for (const auto& r : rows_)
    if (r.key == key) return &r;
  return nullptr;
}

// ---- the planner ------------------------------------------------------------------------------

Plan make_plan(const Recipe& r, const PlanOptions& o) {
  FRUGAL_CHECK(o.world >= 1, "plan: --world must be >= 1, got ", o.world);
  FRUGAL_CHECK(r.micro_batch >= 1 && r.seq_len >= 2, r.path, ": train.micro_batch ", r.micro_batch,
               " / data.seq_len ", r.seq_len, " out of range");
  Plan p;
  p.recipe_path = r.path;
  p.cfg = plan_model_config(r);
  const LlamaConfig& c = p.cfg;
  p.world = o.world;
  p.fsdp = o.fsdp < 0 ? o.world > 1 : o.fsdp == 1;
  FRUGAL_CHECK(p.fsdp || o.world == 1, "plan: a single-process plan needs --world 1 (got ", o.world, ")");
  p.gpu = o.device_memory > 0;
  p.offload = p.gpu && r.fsdp_offload;
  p.threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  // train.micro_batch is the global row count of a micro-step; rank r takes ceil or floor of B/W
  p.rows = (r.micro_batch + o.world - 1) / o.world;
  p.seq_len = r.seq_len;
  p.checkpointing = r.activation_checkpointing;
  const int nthr = p.gpu ? 1 : p.threads;

  ModelOptions mo = r.model_options();
  const LoraConfig* lora = &r.lora;
  // dense trainables (train.trainable / train.mode = "full") sit in the trainable buffers: their
  // masters and grads count in the "trainables + grads" row (8 B per float), their optimizer
  // state in "optimizer state" (AdamW 8 B per float; GaLore-AdamW per tensor, galore.h)
  std::vector<std::string> dense;
  for (const ModelTensor& t : select_trainable(c, r.train_mode, r.train_trainable)) dense.push_back(t.name);
  const ModelLayout L = make_model_layout(c, mo, r.train_mode == "lora" ? lora : nullptr, p.fsdp ? o.world : 1, dense);
  const size_t N = (size_t)p.rows * p.seq_len;
  const size_t C = c.hidden_size, V = c.vocab_size, H = c.num_attention_heads;
  const size_t Hkv = c.num_key_value_heads, D = c.head_dim;

  // ---- frozen weights and gathered units
  size_t frozen = 0, gathered = 0, lora_state = 0;
  std::string frozen_note, gathered_note, lora_note;
  if (p.fsdp) {
    FsdpOptions fo;
    fo.prefetch = r.fsdp_prefetch;
    const FsdpMemory fm = fsdp_memory_model(L, fo, /*backward=*/true);
    frozen = fm.frozen_shard;
    gathered = fm.gathered_peak + fm.grad_in_flight;
    lora_state = fm.train_shard / 2;  // w, g (m, v: the optimizer row)
    frozen_note = str("1/", o.world, " of ", human((double)frozen * o.world),
                      mo.quant == QuantMode::NF4 ? " (NF4 ~0.52 B/param)" : "");
    gathered_note = str("prefetch ", fo.prefetch, ": ", human((double)fm.gathered_peak), " units + ",
                        human((double)fm.grad_in_flight), " LoRA grads in flight");
    lora_note = str(L.total_train_shard(), " shard floats x 8 B (w, g)");
  } else {
    // LlamaModel::load stores the unpadded parts; a dense trainable keeps its compute copy there
    // too (bf16, next to its fp32 master; a norm is fp32 and its own master)
    size_t fp32_dense = 0, train_numel = 0;  // the tensors' own sizes (no buffer alignment)
    for (const auto& u : L.units) {
      for (const auto& e : u.frozen) frozen += e.bytes;
      for (const TrainEntry& e : u.train) {
        train_numel += e.numel;
        if (!e.dense()) continue;
        const bool fp32 = e.shape.size() == 1;
        frozen += (fp32 ? 4 : 2) * e.numel;
        if (fp32) fp32_dense += e.numel;
      }
    }
    gathered_note = "single process: whole model resident";
    frozen_note = "whole model (single process)";
    lora_state = 8 * train_numel - 4 * fp32_dense;  // masters + grads; a norm has no master
    lora_note = str(train_numel, " trainable x 8 B (master, grad; norms 4 B)");
    if (r.optim_name == "galore_adamw" && r.galore.per_layer) {
      // src/train/galore_per_layer.h: a block's linears hold a gradient only while that block
      // steps; with grad_accum > 1 a refresh step accumulates every full gradient (the peak), and
      // the steps between hold one block plus the projected sums (the size of the m moments)
      size_t linear = 0, one_block = 0, acc = 0;
      for (const UnitLayout& u : L.units) {
        if (u.name.rfind("layers.", 0) != 0) continue;
        size_t b = 0;
        for (const TrainEntry& e : u.train) {
          if (!e.dense() || e.shape.size() != 2) continue;
          b += e.numel;
          if (galore_is_target(r.galore, e.name, e.shape))
            acc += (size_t)galore_low_rank_part(galore_side(r.galore.proj_type, e.shape[0], e.shape[1]),
                                                galore_effective_rank(r.galore.rank, e.shape[0], e.shape[1]),
                                                MatrixSplit::whole(e.shape[0], e.shape[1]), 1).size();
        }
        linear += b, one_block = std::max(one_block, b);
      }
      const size_t held = r.grad_accum > 1 ? std::max(linear, one_block + acc) : one_block;
      lora_state -= 4 * (linear - held);
      lora_note = str(L.total_train_numel(), " masters x 4 B + grads: galore.per_layer, ",
                      r.grad_accum > 1 ? "grad_accum > 1: every linear's on refresh steps"
                                       : "one block's linears at a time", " (", human(4.0 * (double)held), ")");
    }
  }
  // ---- optimizer state of the busiest rank
  const size_t train_floats = p.fsdp ? L.total_train_shard() : L.total_train_numel();
  size_t optim = 8 * train_floats;
  std::string optim_note = str("AdamW m, v: ", train_floats, p.fsdp ? " shard" : "", " floats x 8 B");
  if (r.optim_name == "galore_adamw") {
    const int Wl = p.fsdp ? o.world : 1;
    optim = 0;
    for (int rank = 0; rank < Wl; rank++) {
      size_t b = 0;
      for (const UnitLayout& u : L.units)
        for (const ParamPiece& pc : unit_pieces(u, Wl, rank)) b += galore_held_state_bytes(r.galore, pc, Wl, rank);
      optim = std::max(optim, b);
    }
    optim_note = str("GaLore-AdamW rank ", r.galore.rank, " (", r.galore.proj_type, "), ",
                     std::lround(100.0 * (double)optim / (double)std::max<size_t>(1, 8 * train_floats)),
                     "% of AdamW's ", human(8.0 * (double)train_floats));
  }
  // LoRA chunk scratch (the backend's lora_forward/backward, main thread, kept): xd [rows,in],
  // dyf [rows,out], du [rows,r], rows = Backend::lora_chunk_rows
  size_t lora_scratch = 0;
  if (r.train_mode == "lora") {  // "full": no adapters
    size_t b0 = 0, b1 = 0, b2 = 0;
    for (const Site& s : sites_of(c)) {
      if (!targeted(lora, s.name)) continue;
      const int64_t rows = cpu_backend().lora_chunk_rows(s.in, s.out, (int)N);
      b0 = std::max(b0, (size_t)rows * s.in);
      b1 = std::max(b1, (size_t)rows * s.out);
      b2 = std::max(b2, (size_t)rows * lora->rank);
    }
    lora_scratch = 4 * (b0 + b1 + b2);
  }

  // ---- dequant scratch: per thread, the largest NF4 tile of any linear (bf16)
  size_t dequant = 0;
  if (mo.quant == QuantMode::NF4) {
    size_t tile = 0;
    for (const Site& s : sites_of(c))
      tile = std::max(tile, cpu_backend().linear_nf4_scratch_elems(s.out, s.in, nthr));  // the kernels' own tiling
    dequant = (size_t)nthr * tile * 2;
  }

  // ---- activations
  const size_t act = plan_activation_bytes(c, lora, p.rows, p.seq_len, p.checkpointing);
  p.activations_other = plan_activation_bytes(c, lora, p.rows, p.seq_len, !p.checkpointing);

  // ---- logits chunk (lm_head_ce with dx, no dW): xg [RC,C] bf16, z [RC,VC] f32, G [RC,VC] bf16,
  // dxg [RC,C] f32, softmax state / lse / zt [RC], valid-row index [N] int
  const KernelScratch ks = cpu_backend().kernel_scratch();
  const size_t RC = std::min<size_t>(ks.lm_head_row_chunk, N), VC = std::min<size_t>(ks.lm_head_vocab_chunk, V);
  const size_t logits = RC * C * 2 + RC * VC * 4 + RC * VC * 2 + RC * C * 4 + RC * 16 + N * 4;

  // ---- attention backward scratch (kernels/cpu/attention.cpp): Drow [B,H,T] + per thread the dQ
  // partial [w, T, G, Dp] and tiles K, dK, dV [Bc,Dp], Kᵀ, Vᵀ [D,Bcp], Q, dO [Br,Dp], P, dS [Br,Bcp]
  size_t attn = 0;
  {
    const size_t kBr = 64, kBc = 64, kBcp = 64, Dp = (D + 15) / 16 * 16, G = H / Hkv, T = p.seq_len;
    const size_t nK = (T + kBc - 1) / kBc, npairs = (size_t)p.rows * Hkv;
    const size_t one_pair = 4 * (size_t)nthr * T * G * Dp;
    const size_t w_mem = std::max<size_t>(1, (size_t(64) << 20) / one_pair);
    const size_t w = std::clamp<size_t>((4 * nthr + nK - 1) / nK, 1, std::min(npairs, w_mem));
    const size_t per_thread = w * T * G * Dp + 3 * kBc * Dp + 2 * D * kBcp + 2 * kBr * Dp + 2 * kBr * kBcp;
    attn = 4 * ((size_t)p.rows * H * T + nthr * per_thread);
  }

  // ---- data: the trainer's dataset (synthetic patterns: max(256, B·A·16) rows of seq_len+1
  // tokens, int32 tokens + offsets + loss mask) and the step's ids/targets [A, rows, T] int32
  // (every rank holds the whole global batch's ids and targets: [A, micro_batch, T] each)
  size_t data = 2 * 4 * (size_t)r.grad_accum * r.micro_batch * r.seq_len;
  if (!r.data_path.empty() && fs::exists(r.data_path)) {
    data += (size_t)fs::file_size(r.data_path) * 9 / 4;  // int32 tokens + 1-byte mask ≈ file (int32) · 5/4, + slack
  } else if (r.data_synthetic == "patterns") {
    const size_t rows = std::max<size_t>(256, (size_t)r.micro_batch * r.grad_accum * 16);
    data += rows * ((size_t)r.seq_len + 1) * 5 + (rows + 1) * 8;
  }

  // ---- runtime
  const size_t runtime_measured = o.runtime_bytes >= 0 ? (size_t)o.runtime_bytes : plan_measure_runtime_bytes();
  const size_t runtime_host = runtime_measured + kStepRuntimeBytes + (p.fsdp ? kMpiRuntimeBytes : 0);
  // GPU: CUDA context, cuBLAS workspace and NCCL buffers on the device. Not measurable here (no
  // GPU on the build machine): 1 GiB is the usual size of a CUDA 12 context with cuBLAS loaded.
  const size_t runtime_dev = p.gpu ? (size_t(1) << 30) : 0;

  // ---- rows: (device, host). CPU: device == host, both columns hold the same figure.
  auto add = [&](const char* key, const char* label, size_t bytes, bool on_device, std::string note) {
    PlanRow row{key, label, 0, 0, std::move(note)};
    if (!p.gpu) row.device = row.host = bytes;
    else if (on_device) row.device = bytes;
    else row.host = bytes;
    p.rows_.push_back(std::move(row));
  };
  add("frozen_shard", p.fsdp ? "frozen shard" : "frozen weights", frozen, !p.offload,
      p.offload ? frozen_note + ", offloaded to pinned host memory" : frozen_note);
  add("gathered_units", "gathered units in flight", gathered, true, gathered_note);
  add("dequant_scratch", "dequant scratch", dequant, true,
      mo.quant == QuantMode::NF4 ? str(nthr, " thread(s) x one NF4 tile (bf16)") : std::string("bf16 weights: none"));
  add("trainables", "trainables + grads", lora_state + lora_scratch, true,
      lora_note + str(" + ", human((double)lora_scratch), " chunk scratch"));
  add("optimizer_state", "optimizer state", optim, true, optim_note);
  add("activations", "activations", act, true,
      str(p.checkpointing ? "checkpointed" : "not checkpointed", ", ", p.rows, " x ", p.seq_len, " tokens (",
          p.checkpointing ? "without" : "with", " checkpointing: ", human((double)p.activations_other), ")"));
  add("logits_chunk", "logits chunk", logits, true, str(RC, " rows x ", VC, " vocab"));
  add("attention_scratch", "attention scratch", attn, true, "backward dQ partials + tiles");
  add("data", "data", data, false, "token dataset + step batches");
  {
    PlanRow row{"runtime", "runtime", 0, runtime_host,
                str(o.runtime_bytes >= 0 ? "given " : "measured: this process's RSS with OpenMP + oneDNN up, ",
                    human((double)runtime_measured), " + step ", human((double)kStepRuntimeBytes),
                    p.fsdp ? str(" + MPI ", human((double)kMpiRuntimeBytes)) : std::string(),
                    p.gpu ? " (device: CUDA context + cuBLAS, estimate)" : "")};
    row.device = p.gpu ? runtime_dev : runtime_host;
    p.rows_.push_back(row);
  }
  for (const auto& row : p.rows_) p.step_device += row.device, p.step_host += row.host;
  if (!p.gpu) p.step_device = p.step_host;  // one memory: each row was put in both columns

  // ---- load phase (host): before the first step, so without the step's runtime share
  const size_t runtime_load = runtime_host - kStepRuntimeBytes;
  if (!p.fsdp) {
    // src/model/model_load.cpp: tensors in order; each one is converted to bf16 (its mapped file pages
    // still resident) and a linear is then quantized while its bf16 copy lives.
    size_t resident = 0, peak = 0;
    const size_t VC2 = V * C * 2;
    peak = std::max(peak, resident + 2 * VC2), resident += VC2;  // embed_tokens
    if (!c.tie_word_embeddings) peak = std::max(peak, resident + 2 * VC2), resident += VC2;
    resident += C * 4;
    for (int l = 0; l < c.num_hidden_layers; l++) {
      resident += 2 * C * 4;
      const auto& u = L.units[L.block_unit(l)];
      for (const Site& s : sites_of(c)) {
        const size_t n = (size_t)s.in * s.out;
        size_t stored = 0;
        for (const auto& e : u.frozen)
          if (e.tensor.find(std::string(s.name) + ".weight") != std::string::npos) stored += e.bytes;
        peak = std::max(peak, resident + 2 * n * 2);  // bf16 copy + its file pages
        if (mo.quant == QuantMode::NF4) {
          const size_t nb = (n + mo.nf4_blocksize - 1) / mo.nf4_blocksize;
          peak = std::max(peak, resident + n * 2 + stored + 2 * nb * 4);  // + absmax, centered (quant/nf4.cpp)
        }
        resident += stored;
      }
    }
    p.load_host = peak + runtime_load;
  } else {
    // sharding/shard_load.h: the shard + one slice of this rank's part of a tensor (at most
    // kShardLoadScratchElems elements: bf16 scratch + its mapped bf16 file pages + the slice's NF4
    // codes) + for an NF4 tensor its absmax: the owned blocks and all ranks' blocks (fp32)
    size_t extra = 0;
    auto tensor_extra = [&](size_t numel, bool nf4) {
      const size_t part = (numel + o.world - 1) / o.world;
      const size_t slice = std::min<size_t>(part, (size_t)kShardLoadScratchElems);
      size_t b = slice * 2 + slice * 2;
      if (nf4) b += slice / 2 + (part + numel) / mo.nf4_blocksize * 4;
      extra = std::max(extra, b);
    };
    tensor_extra(V * C, false);
    for (const Site& s : sites_of(c)) tensor_extra((size_t)s.in * s.out, mo.quant == QuantMode::NF4);
    p.load_host = frozen + extra + runtime_load;
  }

  p.host_total = std::max(p.step_host, p.load_host);
  p.device_total = p.gpu ? p.step_device : p.host_total;
  const int per_node = o.ranks_per_node > 0 ? o.ranks_per_node : o.world;
  const double host_mem = o.host_memory > 0 ? o.host_memory : (double)mem_total_bytes();
  p.host_capacity = host_mem / per_node;
  p.device_capacity = p.gpu ? o.device_memory : p.host_capacity;
  p.percent = p.device_capacity > 0 ? 100.0 * (double)p.device_total / p.device_capacity : 0;
  p.fits = p.device_capacity > 0 && (double)p.device_total <= p.device_capacity;
  p.host_fits = p.host_capacity > 0 && (double)p.host_total <= p.host_capacity;
  return p;
}

// ---- output ----------------------------------------------------------------------------------------

std::string format_plan(const Plan& p) {
  std::ostringstream o;
  const LlamaConfig& c = p.cfg;
  o << "plan: " << (p.recipe_path.empty() ? std::string("<recipe>") : p.recipe_path) << "\n";
  o << str("model: ", c.num_hidden_layers, " layers, hidden ", c.hidden_size, ", ffn ", c.intermediate_size, ", vocab ",
           c.vocab_size, ", ", c.num_parameters() / 1e6, "M parameters\n");
  o << str("ranks: ", p.world, p.fsdp ? " (FSDP)" : " (single process, whole model resident)", "; per rank ", p.rows,
           " x ", p.seq_len, " tokens per micro-step; target ",
           p.gpu ? "GPU" : str("CPU (device == host), ", p.threads, " OpenMP thread(s)"), p.offload ? ", frozen shard offloaded to host" : "", "\n\n");
  char line[512];
  std::snprintf(line, sizeof line, "%-26s %12s %12s  %s\n", "per rank", "device", "host", "");
  o << line;
  for (const auto& r : p.rows_) {
    std::snprintf(line, sizeof line, "%-26s %12s %12s  %s\n", r.label.c_str(), human((double)r.device).c_str(),
                  human((double)r.host).c_str(), r.note.c_str());
    o << line;
  }
  std::snprintf(line, sizeof line, "%-26s %12s %12s  %s\n", "total (training step)", human((double)p.step_device).c_str(),
                human((double)p.step_host).c_str(), "");
  o << line;
  std::snprintf(line, sizeof line, "%-26s %12s %12s  %s\n", "load phase (peak)", p.gpu ? "-" : human((double)p.load_host).c_str(),
                human((double)p.load_host).c_str(),
                p.fsdp ? "shard + one slice + absmax" : "converted model + one bf16 tensor + its file pages");
  o << line;
  std::snprintf(line, sizeof line, "%-26s %12s %12s\n", "peak", human((double)p.device_total).c_str(),
                human((double)p.host_total).c_str());
  o << line;
  o << str("\nfits: ", p.fits ? "yes" : "no", " (", std::round(p.percent * 10) / 10, "% of ",
           p.gpu ? "device memory " : "host memory per rank ", human(p.device_capacity), ")");
  if (p.gpu)
    o << str("\nhost: ", p.host_fits ? "fits" : "does NOT fit", " (", human((double)p.host_total), " of ",
             human(p.host_capacity), " per rank = host RAM / ranks per node; set --host-memory, --ranks-per-node)");
  o << "\n";
  return o.str();
}

nlohmann::json plan_json(const Plan& p) {
  nlohmann::ordered_json j;
  j["recipe"] = p.recipe_path;
  j["world"] = p.world;
  j["fsdp"] = p.fsdp;
  j["target"] = p.gpu ? "gpu" : "cpu";
  j["offload_params"] = p.offload;
  j["threads"] = p.threads;
  j["rows_per_rank"] = p.rows;
  j["seq_len"] = p.seq_len;
  j["activation_checkpointing"] = p.checkpointing;
  nlohmann::ordered_json cats;
  for (const auto& r : p.rows_) cats[r.key] = {{"device", r.device}, {"host", r.host}, {"note", r.note}};
  j["per_rank"] = cats;
  j["activations_other"] = p.activations_other;
  j["step"] = {{"device", p.step_device}, {"host", p.step_host}};
  j["load_host"] = p.load_host;
  j["total"] = {{"device", p.device_total}, {"host", p.host_total}};
  j["device_capacity"] = p.device_capacity;
  j["host_capacity"] = p.host_capacity;
  j["fits"] = p.fits;
  j["host_fits"] = p.host_fits;
  j["percent"] = p.percent;
  return nlohmann::json(j);
}

}  // namespace frugal
