// trainer.cpp: the QLoRA training loop (see trainer.h for the step math and what a checkpoint
// must hold for an exact resume).
#include "src/train/trainer.h"

#include "src/io/atomic_file.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sharding/shard_checkpoint.h"
#include "sharding/shard_load.h"
#include "src/model/checkpoint.h"
#include "src/model/init.h"
#include "src/model/lora.h"
#include "src/model/tensors.h"
#include "src/train/galore.h"
#include "src/train/galore_per_layer.h"
#include "src/train/progress.h"

namespace frugal {

namespace fs = std::filesystem;

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;  // Linux: kilobytes
}

// ---- small file helpers -------------------------------------------------------------------


static void make_dirs(const std::string& dir, const char* what) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) fail("cannot create ", what, " '", dir, "': ", ec ? ec.message() : "not a directory");
}

static std::string model_dir_of(const Recipe& r) {
  return r.model_path.empty() ? (fs::path(r.output_dir) / "model").string() : r.model_path;
}

// ---- Trainer ------------------------------------------------------------------------------

Trainer::~Trainer() = default;

// The recipe's optimizer (optim.name). GaLore-AdamW works on the job's communicator: its
// projector refresh reduces small products over the ranks that share a tensor's rows.
static std::unique_ptr<Optimizer> make_train_optimizer(const Recipe& r, Communicator& comm, Backend& be) {
  if (r.optim_name != "galore_adamw") return make_optimizer(r.optim_name, r.adamw, be);
  if (comm.world() > 1 && r.galore.svd == "exact")
    fail(r.path, ": galore.svd = \"exact\" takes the SVD of each whole gradient on one process; under mpirun (",
         comm.world(), " ranks) use galore.svd = \"randomized\", which works on the sharded rows");
  return std::make_unique<GaloreAdamW>(r.adamw, r.galore, comm, r.seed, be);
}

Trainer::Trainer(const Recipe& r, Communicator* comm) : r_(r) {
  if (!comm) {
    own_comm_ = make_world_communicator();
    comm = own_comm_.get();
  }
  comm_ = comm;
  opt_ = make_train_optimizer(r_, *comm_, backend_by_name(r_.device_backend));
  // fsdp.comm_timeout, unless the environment overrides it (FRUGAL_COMM_TIMEOUT, read by the communicator)
  if (!std::getenv("FRUGAL_COMM_TIMEOUT")) comm_->set_timeout_seconds(r_.fsdp_comm_timeout);
  const int W = comm_->world();
  if (r_.micro_batch < 1) fail(r_.path, ": train.micro_batch must be >= 1, got ", r_.micro_batch);
  if (r_.grad_accum < 1) fail(r_.path, ": train.grad_accum must be >= 1, got ", r_.grad_accum);
  if (r_.seq_len < 2) fail(r_.path, ": data.seq_len must be >= 2, got ", r_.seq_len);
  if (r_.steps < 0) fail(r_.path, ": train.steps must be >= 0, got ", r_.steps);
  if (r_.output_dir.empty()) fail(r_.path, ": train.output_dir is empty");
  if (W > 1 && r_.micro_batch < W)
    fail(r_.path, ": train.micro_batch = ", r_.micro_batch, " is the global batch; it must be >= the ", W,
         " ranks (each rank takes micro_batch/W rows)");
  make_dirs(r_.output_dir, "train.output_dir");
  if (root()) write_file_atomic((fs::path(r_.output_dir) / "recipe.toml").string(), r_.to_toml());

  // model: create it from the preset when the directory has none
  const std::string dir = model_dir_of(r_);
  if (!fs::exists(fs::path(dir) / "config.json")) {
    if (r_.model_preset.empty())
      fail(r_.path, ": model.path '", dir, "' has no config.json and model.preset is not set");
    if (root()) {  // one rank creates it, the others wait at the barrier below
      std::fprintf(stderr, "frugal train: %s has no model; initializing preset '%s' there (seed %llu)\n", dir.c_str(),
                   r_.model_preset.c_str(), (unsigned long long)r_.model_init_seed);
      std::error_code ec;
      if (fs::exists(dir) && !fs::is_empty(dir, ec))  // never write into (or clean) a foreign directory
        fail(r_.path, ": model.path '", dir, "' exists, is not empty and has no config.json; remove it or "
             "point model.path at an empty or absent directory for the '", r_.model_preset, "' preset");
      init_model(LlamaConfig::preset(r_.model_preset), dir, r_.model_init_seed);
    }
  }
  comm_->barrier();
  const ModelOptions mo = r_.model_options();
  const bool lora = r_.train_mode == "lora";  // "full": no adapters, the linears themselves train
  if (W == 1) {
    model_ = std::make_unique<LlamaModel>(LlamaModel::load(dir, mo));
    if (lora) model_->add_lora(r_.lora, r_.seed);
    // dense trainables (train.mode / train.trainable): a gradient, and an fp32 master for bf16 ones
    for (const ModelTensor& t : select_trainable(model_->config(), r_.train_mode, r_.train_trainable)) {
      model_->set_trainable(t.name);
      if (!t.fp32()) model_->add_master(t.name);
    }
    params_ = model_->trainable_params();
  } else {
    // Sharded: a skeleton model whose tensors Fsdp binds just in time; this rank reads and
    // quantizes only its shard of every unit.
    const LlamaConfig cfg = LlamaConfig::load(dir);
    if (cfg.architecture != "LlamaForCausalLM")
      fail("model ", dir, ": architecture ", cfg.architecture, " is not supported (LlamaForCausalLM)");
    model_ = std::make_unique<LlamaModel>(LlamaModel::skeleton(cfg, mo));
    if (lora) model_->add_lora_skeleton(r_.lora);
    // dense trainables: masters in the units' trainable buffers, full-size grads in the model
    std::vector<std::string> dense;
    for (const ModelTensor& t : select_trainable(cfg, r_.train_mode, r_.train_trainable)) {
      model_->set_trainable(t.name);
      dense.push_back(t.name);
    }
    layout_ = std::make_unique<ModelLayout>(make_model_layout(cfg, mo, lora ? &r_.lora : nullptr, W, dense));
    auto shards = load_frozen_shards(dir, *layout_, *comm_);
    FsdpOptions fo;
    fo.prefetch = r_.fsdp_prefetch;
    fsdp_ = std::make_unique<Fsdp>(*model_, *layout_, *comm_, fo, std::move(shards));
    fsdp_->init_lora(r_.seed);
    std::vector<float*> w;
    for (const UnitLayout& u : layout_->units) w.push_back(fsdp_->train_shard(u.index));
    load_dense_shards(dir, *layout_, comm_->rank(), w);
    params_ = fsdp_->shard_params();
  }
  check_context(dir);
  if (params_.empty()) fail(r_.path, ": nothing to train (lora.target_modules selects no linear, train.trainable is empty)");
  if (r_.optim_name == "galore_adamw" && r_.galore.per_layer) {
    if (W > 1)
      fail(r_.path, ": galore.per_layer is for one process; under mpirun (", W, " ranks) FSDP already frees each "
           "unit's full gradient after its reduce-scatter (set galore.per_layer = false)");
    layer_step_ = std::make_unique<GaloreLayerStep>(*model_, dynamic_cast<GaloreAdamW&>(*opt_));
    params_ = model_->trainable_params();  // the freed linear gradients as g = nullptr
  }

  setup_data();

  sched_ = r_.schedule();
  sched_.total_steps = std::max(1, sched_.total_steps);  // a recipe that skipped validate()
  sched_.validate();
}

// data.seq_len beyond the model's trained context without RoPE scaling: positions past
// max_position_embeddings were never seen, so the run would train on garbage attention.
void Trainer::check_context(const std::string& dir) const {
  const LlamaConfig& c = model_->config();
  if (r_.seq_len > c.max_position_embeddings && c.rope.type == fm::ROPE_DEFAULT)
    fail(r_.path, ": data.seq_len = ", r_.seq_len, " exceeds max_position_embeddings = ", c.max_position_embeddings,
         " in ", (fs::path(dir) / "config.json").string(), " and the model has no rope_scaling; lower data.seq_len "
         "or set rope_scaling (e.g. linear/yarn/llama3) in that config.json");
}

// ds_ and loader_ from the recipe (the synthetic set and the shuffle order depend on r_.seed).
void Trainer::setup_data() {
  const int64_t V = model_->config().vocab_size;
  if (!r_.data_path.empty()) {
    ds_ = TokenDataset::load(r_.data_path);
  } else if (r_.data_synthetic == "patterns") {
    const int64_t rows = std::max<int64_t>(256, (int64_t)r_.micro_batch * r_.grad_accum * 16);
    ds_ = make_synthetic_patterns((int)V, (int)rows, r_.seq_len + 1, r_.seed);
    const std::string p = (fs::path(r_.output_dir) / "data.h5").string();
    if (root()) ds_.save(p);  // every rank made the same set
  } else if (!r_.data_synthetic.empty()) {
    fail(r_.path, ": data.synthetic '", r_.data_synthetic, "' is unknown (expected \"patterns\" or empty)");
  } else {
    fail(r_.path, ": no data: set data.path (an HDF5 frugal-tokens-v1 file) or data.synthetic = \"patterns\"");
  }
  const std::string where = r_.data_path.empty() ? std::string("synthetic data") : r_.data_path;
  if (ds_.num_samples() < 1) fail(where, ": dataset has no samples");
  if (ds_.vocab_size > V) fail(where, ": dataset vocab_size ", ds_.vocab_size, " exceeds the model's ", V);
  for (size_t i = 0; i < ds_.tokens.size(); i++)
    if (ds_.tokens[i] < 0 || ds_.tokens[i] >= V)
      fail(where, ": /tokens[", i, "] = ", ds_.tokens[i], " is outside the model vocabulary [0, ", V, ")");
  loader_ = std::make_unique<BatchLoader>(ds_, r_.seq_len, r_.pack, r_.shuffle, r_.seed);
}

std::string Trainer::checkpoint_dir() const { return (fs::path(r_.output_dir) / "checkpoints").string(); }

std::string Trainer::latest_checkpoint(const std::string& output_dir) {
  const fs::path latest = fs::path(output_dir) / "checkpoints" / "latest";
  std::ifstream f(latest);
  if (!f) fail("no checkpoint to resume: ", latest.string(), " does not exist");
  std::string name;
  std::getline(f, name);
  while (!name.empty() && std::isspace((unsigned char)name.back())) name.pop_back();
  if (name.empty()) fail(latest.string(), " is empty");
  const fs::path p = fs::path(output_dir) / "checkpoints" / name;
  if (!fs::exists(p)) fail(latest.string(), " names ", name, ", which does not exist");
  return p.string();
}

// "section.key" -> "value" of the key lines of an effective-recipe TOML text (Recipe::to_toml).
static std::vector<std::pair<std::string, std::string>> toml_keys(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> kv;
  std::istringstream in(text);
  std::string sec;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      sec = line.substr(1, line.find(']') - 1);
      continue;
    }
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos) kv.push_back({sec + "." + line.substr(0, eq), line.substr(eq + 3)});
  }
  return kv;
}

// This rank's master shards per unit and its optimizer-state parts, for the sharded checkpoint
// (state_parts allocates, as zeros, the state of tensors the optimizer has not stepped yet).
static ShardBuffers shard_buffers(const ModelLayout& L, Fsdp& f, Optimizer& opt) {
  ShardBuffers b;
  b.w.assign(L.units.size(), nullptr);
  for (const ParamRef& p : f.shard_params()) {
    int u = -1;
    for (const UnitLayout& ul : L.units)
      if (p.name == "fsdp/" + ul.name) u = ul.index;
    FRUGAL_CHECK(u >= 0, "internal: shard param ", p.name, " has no unit");
    b.w[u] = p.w;
  }
  b.optim = opt.state_parts(f.shard_params());
  b.optimizer = &opt;
  return b;
}

void Trainer::resume(const std::string& path) {
  TrainState st;
  if (fsdp_) {
    ShardBuffers sb = shard_buffers(*layout_, *fsdp_, *opt_);
    st = load_sharded_checkpoint(path, *layout_, sb, true);
  } else {
    st = load_checkpoint(path, params_, opt_.get());
  }
  // The adapter's function must be the one that was trained (rank and targets are checked by the
  // tensor shapes/names; alpha, rsLoRA and dropout are not visible in them).
  if (st.has_lora) {
    const LoraConfig& a = st.lora;
    const LoraConfig& b = r_.lora;
    if (a.alpha != b.alpha || a.rslora != b.rslora || a.dropout != b.dropout)
      fail(path, ": the checkpoint's LoRA (alpha ", a.alpha, ", rslora ", a.rslora, ", dropout ", a.dropout,
           ") differs from the recipe's (alpha ", b.alpha, ", rslora ", b.rslora, ", dropout ", b.dropout,
           "); resume with the recipe the checkpoint was trained with");
  }
  // Other recipe changes are allowed (e.g. more train.steps) but break exact continuation: say so.
  if (!st.recipe_toml.empty()) {
    const auto was = toml_keys(st.recipe_toml), now = toml_keys(r_.to_toml());
    std::string diff;
    for (const auto& [k, v] : now) {
      if (k == "train.output_dir" || k == "train.log_every" || k.rfind("checkpoint.", 0) == 0) continue;
      for (const auto& [k2, v2] : was)
        if (k2 == k && v2 != v) diff += "\n  " + k + ": " + v2 + " -> " + v;
    }
    if (!diff.empty() && verbose && root())
      std::fprintf(stderr, "frugal train: warning: the recipe differs from the one %s was trained with:%s\n",
                   path.c_str(), diff.c_str());
  }
  if (st.seed != r_.seed) {
    // the seed fixes the shuffle order and the dropout masks: the checkpoint's wins
    std::fprintf(stderr, "frugal train: %s was trained with seed %llu (recipe: %llu); continuing with %llu\n",
                 path.c_str(), (unsigned long long)st.seed, (unsigned long long)r_.seed, (unsigned long long)st.seed);
    r_.seed = st.seed;
    setup_data();
  }
  opt_->set_t(st.adam_t);
  loader_->restore(st.cursor);
  step_ = st.step;
  tokens_seen_ = st.tokens_seen;
  if (!fsdp_) model_->sync_trainables();
  resumed_ = true;
  if (verbose && root()) std::fprintf(stderr, "frugal train: resumed from %s at step %lld\n", path.c_str(), (long long)step_);
}

void Trainer::save(const std::string& path) {
  TrainState st;
  st.step = step_;
  st.adam_t = opt_->t();
  st.seed = r_.seed;
  st.cursor = loader_->cursor();
  st.tokens_seen = tokens_seen_;
  st.recipe_toml = r_.to_toml();
  st.base_model = fs::absolute(model_dir_of(r_)).string();
  if (fsdp_)
    save_sharded_checkpoint(path, st, *layout_, shard_buffers(*layout_, *fsdp_, *opt_));
  else
    save_checkpoint(path, st, params_, *opt_);
}

std::vector<std::pair<std::string, avector<float>>> Trainer::gather_lora() {
  std::vector<std::pair<std::string, avector<float>>> out;
  if (!fsdp_) {
    for (const ParamRef& p : params_) out.push_back({p.name, avector<float>(p.w, p.w + p.numel)});
    return out;
  }
  for (const UnitLayout& u : layout_->units) {
    if (!u.train_padded) continue;
    avector<float> full(u.train_padded);
    fsdp_->gather_trainable(u.index, full.data());
    for (const TrainEntry& e : u.train)
      out.push_back({e.name, avector<float>(full.data() + e.offset, full.data() + e.offset + e.numel)});
  }
  return out;
}

StepMetrics Trainer::train_step() {
  const auto t0 = std::chrono::steady_clock::now();
  const int B = r_.micro_batch, T = r_.seq_len, A = r_.grad_accum;
  const size_t rows = (size_t)B * T;
  // all micro-batches first: the step's target count sets the gradient scale
  ids_.resize(A * rows);
  targets_.resize(A * rows);
  for (int j = 0; j < A; j++) loader_->next(B, ids_.data() + j * rows, targets_.data() + j * rows);
  // every rank holds the whole global batch's ids (cheap), so n is the global target count
  const int64_t n = count_targets(targets_.data(), targets_.size());
  const float gscale = n > 0 ? (float)(1.0 / (double)n) : 1.f;  // no targets: all grads are 0
  zero_grads(params_, model_->backend());  // per-layer: the linears' are freed (null), allocated as zeros
  const float lr = sched_.at(step_);
  if (layer_step_) layer_step_->begin(A, lr);
  // this rank's rows of every micro-batch
  const int W = comm_->world(), rank = comm_->rank();
  const int b0 = (int)((int64_t)B * rank / W), b1 = (int)((int64_t)B * (rank + 1) / W);
  ForwardStats st;
  for (int j = 0; j < A; j++) {
    model_->set_dropout_rng(r_.seed, (uint64_t)step_ * A + j, (uint64_t)b0 * T);
    Batch b;
    b.B = b1 - b0;
    b.T = T;
    b.ids = ids_.data() + j * rows + (size_t)b0 * T;
    b.targets = targets_.data() + j * rows + (size_t)b0 * T;
    if (layer_step_) layer_step_->next_micro_batch();  // each block steps in its backward at the last
    st += model_->forward_backward(b, gscale);
    if (fsdp_) fsdp_->reduce_dense_grads();  // dense trainables' grads into this rank's shards
  }
  if (fsdp_) {
    double v[2] = {st.loss_sum, (double)st.n_targets};
    comm_->all_reduce(std::span<double>(v, 2));
    st.loss_sum = v[0];
    st.n_targets = (int64_t)v[1];
  }
  const double loss = st.mean();
  if (!std::isfinite(loss)) fail("training diverged: loss is ", loss, " at step ", step_);
  StepMetrics m{};
  m.step = step_;
  m.loss = loss;
  m.lr = lr;
  if (layer_step_) {
    m.grad_norm = std::sqrt(layer_step_->finish());  // the blocks stepped during the backward
  } else if (fsdp_) {
    // torch.nn.utils.clip_grad_norm_ over the shards: the norm is global, the scaling local
    m.grad_norm = fsdp_->global_grad_norm();
    clip_grads(params_, r_.grad_clip, m.grad_norm, model_->backend());
    opt_->step(params_, m.lr);
  } else {
    m.grad_norm = clip_grad_norm(params_, r_.grad_clip, model_->backend());
    opt_->step(params_, m.lr);
  }
  if (!fsdp_) model_->sync_trainables();  // bf16 compute copies of the updated masters
  step_++;
  m.tokens = (int64_t)(A * rows);
  tokens_seen_ += (double)m.tokens;
  m.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.tokens_per_s = m.step_seconds > 0 ? m.tokens / m.step_seconds : 0.0;
  m.peak_rss_bytes = peak_rss_bytes();
  if (fsdp_) m.peak_rss_bytes = comm_->all_reduce_value<int64_t>((int64_t)m.peak_rss_bytes, CommOp::Max);
  return m;
}

void Trainer::write_checkpoint_rotating() {
  const std::string dir = checkpoint_dir();
  make_dirs(dir, "checkpoint directory");
  const std::string name = "step-" + std::to_string(step_) + ".h5";
  save((fs::path(dir) / name).string());  // collective when sharded
  if (!root()) return;
  write_file_atomic((fs::path(dir) / "latest").string(), name + "\n");
  if (r_.checkpoint_keep <= 0) return;  // keep all
  std::vector<std::pair<int64_t, fs::path>> ck;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.size() > 8 && f.rfind("step-", 0) == 0 && f.substr(f.size() - 3) == ".h5") {
      const std::string num = f.substr(5, f.size() - 8);
      // only this run's past: a higher step is another run's file (a fresh run in an old dir)
      if (!num.empty() && num.size() < 18 && std::all_of(num.begin(), num.end(), ::isdigit) && std::stoll(num) <= step_)
        ck.push_back({std::stoll(num), e.path()});
    }
  }
  std::sort(ck.begin(), ck.end());
  for (size_t i = 0; i + r_.checkpoint_keep < ck.size(); i++) {
    std::error_code ec;
    fs::remove(ck[i].second, ec);
  }
}

static std::string metrics_json(const StepMetrics& m) {
  nlohmann::ordered_json j = {{"step", m.step},
                              {"loss", m.loss},
                              {"lr", m.lr},
                              {"grad_norm", m.grad_norm},
                              {"tokens_per_s", m.tokens_per_s},
                              {"step_seconds", m.step_seconds},
                              {"peak_rss_bytes", m.peak_rss_bytes},
                              {"tokens", m.tokens}};
  return j.dump();
}

void Trainer::run(int64_t max_steps) {
  const int64_t end = max_steps >= 0 ? std::min<int64_t>(r_.steps, max_steps) : r_.steps;
  const fs::path mpath = fs::path(r_.output_dir) / "metrics.jsonl";
  // a fresh run starts the file; a resumed one keeps the lines of the steps before it
  const bool rt = root();  // rank 0 writes metrics and logs
  if (rt) {
    std::vector<std::string> keep;
    if (resumed_) {
      std::ifstream in(mpath);
      for (std::string line; std::getline(in, line);) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.contains("step") && j["step"].get<int64_t>() < step_) keep.push_back(line);
      }
    }
    std::string text;
    for (auto& l : keep) text += l + "\n";
    write_file_atomic(mpath.string(), text);
  }
  if (rt && !resumed_ && verbose && fs::exists(fs::path(checkpoint_dir()) / "latest"))
    std::fprintf(stderr, "frugal train: warning: %s already has checkpoints (a previous run); starting from step 0 "
                 "anyway (use --resume auto to continue it)\n", r_.output_dir.c_str());
  std::FILE* mf = rt ? std::fopen(mpath.c_str(), "a") : nullptr;
  if (rt && !mf) fail("cannot append to ", mpath.string());
  const bool tty = rt && verbose && ProgressBar::stderr_is_tty();
  ProgressBar bar(end, step_);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t start = step_;
  int64_t last_ckpt = -1;
  double last_loss = NAN;
  try {
    while (step_ < end) {
      StepMetrics m = train_step();
      last_loss = m.loss;
      if (mf) {
        std::fprintf(mf, "%s\n", metrics_json(m).c_str());
        std::fflush(mf);
      }
      char line[256];
      std::snprintf(line, sizeof line, "loss %.4f lr %.2e grad_norm %.3f tok/s %.0f step %.3fs rss %.0f MB", m.loss,
                    m.lr, m.grad_norm, m.tokens_per_s, m.step_seconds, m.peak_rss_bytes / 1048576.0);
      if (tty) {
        bar.update(step_, line);
      } else if (rt && verbose && (r_.log_every <= 1 || step_ % r_.log_every == 0 || step_ == end)) {
        std::fprintf(stderr, "step %lld/%lld %s eta %s\n", (long long)step_, (long long)end, line,
                     format_duration(bar.eta_seconds(step_)).c_str());
      }
      if (r_.checkpoint_every > 0 && step_ % r_.checkpoint_every == 0) {
        write_checkpoint_rotating();
        last_ckpt = step_;
      }
    }
  } catch (...) {
    if (mf) std::fclose(mf);
    if (tty) bar.finish();
    throw;
  }
  if (mf) std::fclose(mf);
  if (tty) bar.finish();
  if (last_ckpt != step_ && step_ > start) write_checkpoint_rotating();
  if (rt && verbose) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "frugal train: %lld steps in %.1f s, final loss %.4f, checkpoint %s/step-%lld.h5\n",
                 (long long)(step_ - start), sec, last_loss, checkpoint_dir().c_str(), (long long)step_);
  }
}

}  // namespace frugal
