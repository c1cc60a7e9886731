// export.cpp: checkpoint -> PEFT adapter dir, or base + LoRA merged into HF sharded bf16
// safetensors, streamed one tensor at a time (see export.h).
#include "src/train/export.h"

#include "src/io/atomic_file.h"


#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "src/model/checkpoint.h"
#include "src/model/lora.h"
#include "src/train/recipe.h"
#include "src/io/safetensors.h"

namespace frugal {

namespace fs = std::filesystem;

std::vector<AdapterTensor> AdapterData::views() const {
  std::vector<AdapterTensor> v;
  for (size_t i = 0; i < names.size(); ++i) v.push_back({names[i], shapes[i], data[i].data()});
  return v;
}

AdapterData adapter_from_checkpoint(const std::string& checkpoint) {
  CheckpointContents c = read_checkpoint_params(checkpoint);
  // The [lora] settings: the checkpoint's lora_* attributes, else the stored recipe's [lora].
  LoraConfig lc;
  if (c.state.has_lora) {
    lc = c.state.lora;
  } else {
    if (c.state.recipe_toml.empty()) fail(checkpoint, ": the checkpoint stores neither LoRA settings nor a recipe");
    lc = Recipe::from_string(c.state.recipe_toml, checkpoint + " (stored recipe)").lora;
  }
  AdapterData a;
  a.cfg.base_model = c.state.base_model;
  a.cfg.r = lc.rank;
  a.cfg.alpha = lc.alpha;
  a.cfg.dropout = lc.dropout;
  a.cfg.rslora = lc.rslora;
  a.cfg.target_modules = LoraConfig::expand_targets(lc.target_modules);
  a.names = std::move(c.names);
  a.shapes = std::move(c.shapes);
  a.data = std::move(c.data);
  // The stored tensors must agree with the stored rank: A [r, in], B [out, r].
  for (size_t i = 0; i < a.names.size(); ++i) {
    char which = 0;
    if (hf_name_of_peft(a.names[i], &which).empty()) continue;
    const auto& s = a.shapes[i];
    const bool ok = s.size() == 2 && (which == 'A' ? s[0] : s[1]) == a.cfg.r;
    if (!ok) fail(checkpoint, ": tensor ", a.names[i], " does not have LoRA rank ", a.cfg.r, " of the stored recipe");
  }
  return a;
}

void export_adapter(const std::string& checkpoint, const std::string& out_dir, const ExportOptions& opt) {
  AdapterData a = adapter_from_checkpoint(checkpoint);
  // Dense trainables (HF names "<module>.weight"): PEFT modules_to_save, stored as
  // base_model.model.<module>.weight (peft's saved form, without the adapter name).
  size_t n_lora = 0;
  for (std::string& n : a.names) {
    if (!hf_name_of_peft(n, nullptr).empty()) {
      n_lora++;
      continue;
    }
    const std::string suffix = ".weight";
    if (n.size() <= suffix.size() || n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      fail(checkpoint, ": trainable tensor ", n, " is neither a LoRA weight nor a module weight; a PEFT adapter cannot hold it (use --merged)");
    a.cfg.modules_to_save.push_back(n.substr(0, n.size() - suffix.size()));
    n = "base_model.model." + n;
  }
  if (n_lora == 0)
    fail(checkpoint, ": no LoRA adapter to export (train.mode = \"full\"?); use --merged");
  write_peft_adapter(out_dir, a.cfg, a.views(), opt.adapter_bf16 ? DType::BF16 : DType::F32);
}

void export_merged(const std::string& checkpoint, const std::string& out_dir, const std::string& base_model_dir,
                   const ExportOptions& opt) {
  AdapterData a = adapter_from_checkpoint(checkpoint);
  const std::string base = base_model_dir.empty() ? a.cfg.base_model : base_model_dir;
  if (base.empty()) fail(checkpoint, ": no base model recorded; pass --base DIR");
  merge_adapter_into_base(base, a, out_dir, opt);
}

// ---- streaming merge ----------------------------------------------------------------------------
namespace {



}  // namespace

void merge_adapter_into_base(const std::string& base_dir, const AdapterData& ad, const std::string& out_dir,
                             const ExportOptions& opt) {
  FRUGAL_CHECK(opt.max_shard_bytes > 0, "shard size must be positive");
  const fs::path bdir(base_dir), odir(out_dir);
  if (!fs::exists(bdir / "config.json")) fail("base model ", base_dir, ": missing config.json");
  std::error_code ec;
  fs::create_directories(odir, ec);
  if (ec) fail(out_dir, ": cannot create directory: ", ec.message());
  if (fs::equivalent(bdir, odir, ec)) fail(out_dir, ": the merged output cannot go into the base model directory");

  SafetensorsModel st(base_dir);
  const float s = ad.cfg.scale();

  // Adapter tensors per base tensor: LoRA pairs (A [r,in], B [out,r]) or full replacements
  // (other trainable tensors saved under "base_model.model.<hf name>").
  struct Lora {
    const avector<float>* A = nullptr;
    const avector<float>* B = nullptr;
    int64_t r = 0;
  };
  std::map<std::string, Lora> lora;
  std::map<std::string, const avector<float>*> replace;
  for (size_t i = 0; i < ad.names.size(); ++i) {
    const std::string& n = ad.names[i];
    char which = 0;
    const std::string hf = hf_name_of_peft(n, &which);
    if (hf.empty()) {
      const std::string pre = "base_model.model.";
      const std::string h = n.compare(0, pre.size(), pre) == 0 ? n.substr(pre.size()) : n;
      if (!st.has(h)) fail("adapter tensor ", n, " matches no tensor of the base model ", base_dir);
      if (st.get(h).shape != ad.shapes[i])
        fail("adapter tensor ", n, " has shape ", shape_str(ad.shapes[i]), ", base ", h, " has ", shape_str(st.get(h).shape));
      replace[h] = &ad.data[i];
      continue;
    }
    if (!st.has(hf)) fail("LoRA tensor ", n, ": the base model ", base_dir, " has no tensor ", hf);
    const TensorView& W = st.get(hf);
    if (W.shape.size() != 2) fail("LoRA tensor ", n, ": base tensor ", hf, " is not a matrix");
    const std::vector<int64_t> want =
        which == 'A' ? std::vector<int64_t>{ad.cfg.r, W.shape[1]} : std::vector<int64_t>{W.shape[0], ad.cfg.r};
    if (ad.shapes[i] != want)
      fail("LoRA tensor ", n, " has shape ", shape_str(ad.shapes[i]), ", expected ", shape_str(want), " for ", hf,
           " ", shape_str(W.shape), " in ", W.file);
    Lora& l = lora[hf];
    (which == 'A' ? l.A : l.B) = &ad.data[i];
    l.r = ad.cfg.r;
  }
  for (const auto& [hf, l] : lora)
    if (!l.A || !l.B) fail("LoRA weights of ", hf, ": lora_", l.A ? 'B' : 'A', " is missing");

  // Output layout from the base headers: every tensor as BF16, in writer order.
  static const uint8_t dummy = 0;  // never read: the bytes are streamed below
  SafetensorsWriter all;
  for (const std::string& name : st.names()) {
    const TensorView& t = st.get(name);
    all.add(name, DType::BF16, t.shape, &dummy, (size_t)t.numel() * sizeof(bf16));
  }
  all.set_metadata({{"format", "pt"}});

  // Each tensor goes through in chunks of whole rows (<= opt.chunk_elems elements unless one row is
  // longer), so memory stays at one chunk (fp32 + bf16) whatever the tensor size.
  avector<float> w;   // current chunk [rows, row_len] fp32
  avector<bf16> wb;   // current chunk, bf16
  stream_model_files(out_dir, all, opt.max_shard_bytes, [&](const SafetensorsWriter::Entry& e, const TensorSink& sink) {
    auto t0 = std::chrono::steady_clock::now();
    const TensorView& t = st.get(e.name);
    const int64_t n = t.numel();
    const int64_t nrows = t.shape.empty() ? 1 : t.shape[0];
    const int64_t row_len = nrows ? n / nrows : 0;
    const size_t elem_bytes = n ? t.nbytes / (size_t)n : 0;
    const int64_t chunk_rows = std::max<int64_t>(1, (int64_t)opt.chunk_elems / std::max<int64_t>(row_len, 1));
    auto rep = replace.find(e.name);
    auto lo = lora.find(e.name);
    const char* what = rep != replace.end() ? "replaced" : lo != lora.end() ? "merged" : "copy";
    for (int64_t r0 = 0; r0 < nrows; r0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, nrows - r0), cnt = rows * row_len;
      w.resize((size_t)cnt);
      wb.resize((size_t)cnt);
      if (rep != replace.end()) {
        std::copy(rep->second->begin() + r0 * row_len, rep->second->begin() + r0 * row_len + cnt, w.begin());
      } else {
        TensorView sub = t;  // rows [r0, r0 + rows) of the base tensor
        if (!sub.shape.empty()) sub.shape[0] = rows;
        sub.data = t.data + (size_t)(r0 * row_len) * elem_bytes;
        sub.nbytes = (size_t)cnt * elem_bytes;
        to_float(sub, w.data());
        release_mapped_pages(sub.data, sub.nbytes);
      }
      if (lo != lora.end()) {
        // W[o,:] += s · Σ_k B[o,k]·A[k,:] for the chunk's rows o (delta in fp32, as PEFT's W + s·(B@A)).
        const int64_t in = row_len, r = lo->second.r;
        const float* A = lo->second.A->data();
        const float* B = lo->second.B->data();
        float* W = w.data();
#pragma omp parallel
        {
          std::vector<float> delta((size_t)in);
#pragma omp for schedule(static)
          for (int64_t i0 = 0; i0 < rows; ++i0) {
            const int64_t orow = r0 + i0;
            std::fill(delta.begin(), delta.end(), 0.f);
            for (int64_t kk = 0; kk < r; ++kk) {
              const float b = B[orow * r + kk];
              const float* a = A + kk * in;
              for (int64_t i = 0; i < in; ++i) delta[i] += b * a[i];
            }
            float* row = W + i0 * in;
            for (int64_t i = 0; i < in; ++i) row[i] += s * delta[i];
          }
        }
      }
      float_to_bf16(w.data(), wb.data(), (size_t)cnt);
      sink(wb.data(), (size_t)cnt * sizeof(bf16));
    }
    if (opt.verbose) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "  %-48s %-8s %s %.2f s\n", e.name.c_str(), what, shape_str(t.shape).c_str(), sec);
    }
  });

  // config.json: the base's, with the dtype of what was written.
  {
    std::ifstream in(bdir / "config.json", std::ios::binary);
    nlohmann::ordered_json cfg;
    try {
      cfg = nlohmann::ordered_json::parse(in);
    } catch (const std::exception& e) {
      fail((bdir / "config.json").string(), ": invalid JSON: ", e.what());
    }
    if (cfg.contains("dtype")) cfg["dtype"] = "bfloat16";
    cfg["torch_dtype"] = "bfloat16";
    write_file_atomic((odir / "config.json").string(), cfg.dump(2) + "\n");
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                        "tokenizer.model"}) {
    if (!fs::exists(bdir / f)) continue;
    std::ifstream in(bdir / f, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) fail((bdir / f).string(), ": read failed");
    write_file_atomic((odir / f).string(), content);
  }
}

}  // namespace frugal
