// cmd_inspect.cpp: `frugal inspect FILE.safetensors|DIR [--json]` lists the metadata of each file
// and one line per tensor (name, dtype, shape, bytes), then the total parameters and bytes.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "src/cli/cli.h"
#include "src/common.h"
#include "src/io/safetensors.h"

namespace frugal {

namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
};

std::string shape_text(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

void run_inspect(const InspectOptions& o) {
  SafetensorsModel model(o.path);
  const bool sharded = model.files().size() > 1;
  int64_t total_params = 0;
  uint64_t total_bytes = 0;
  std::vector<std::string> names = model.names();
  for (const std::string& n : names) {
    const TensorView& t = model.get(n);
    total_params += t.numel();
    total_bytes += t.nbytes;
  }
  if (o.json) {
    nlohmann::ordered_json j;
    j["path"] = o.path;
    j["files"] = nlohmann::ordered_json::array();
    for (const auto& f : model.files()) {
      nlohmann::ordered_json jf;
      jf["path"] = f->path();
      jf["metadata"] = f->metadata();
      jf["tensors"] = f->tensors().size();
      j["files"].push_back(jf);
    }
    j["tensors"] = nlohmann::ordered_json::array();
    for (const std::string& n : names) {
      const TensorView& t = model.get(n);
      nlohmann::ordered_json jt;
      jt["name"] = t.name;
      jt["dtype"] = dtype_name(t.dtype);
      jt["shape"] = t.shape;
      jt["numel"] = t.numel();
      jt["bytes"] = t.nbytes;
      jt["file"] = t.file;
      j["tensors"].push_back(jt);
    }
    j["total_parameters"] = total_params;
    j["total_bytes"] = total_bytes;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  for (const auto& f : model.files()) {
    std::printf("file %s: %zu tensors, header %zu bytes, file %zu bytes\n", f->path().c_str(),
                f->tensors().size(), f->header_size(), f->file_size());
    for (const auto& [k, v] : f->metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  }
  size_t w = 4;
  for (const std::string& n : names) w = std::max(w, n.size());
  for (const std::string& n : names) {
    const TensorView& t = model.get(n);
    std::printf("%-*s  %-6s %-20s %14zu bytes", (int)w, n.c_str(), dtype_name(t.dtype),
                shape_text(t.shape).c_str(), t.nbytes);
    if (sharded) {
      std::string f = t.file;
      size_t slash = f.find_last_of('/');
      std::printf("  %s", slash == std::string::npos ? f.c_str() : f.c_str() + slash + 1);
    }
    std::printf("\n");
  }
  std::printf("total: %zu tensors, %lld parameters, %llu bytes (%.3f GB)\n", names.size(),
              (long long)total_params, (unsigned long long)total_bytes, (double)total_bytes / 1e9);
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto opt = std::make_shared<InspectOptions>();
  CLI::App* sub = app.add_subcommand("inspect", "list the tensors of a safetensors file or model directory");
  sub->add_option("path", opt->path, "FILE.safetensors, a model directory, or model.safetensors.index.json")
      ->required();
  sub->add_flag("--json", opt->json, "print JSON instead of text");
  sub->callback([opt]() { run_inspect(*opt); });
}

}  // namespace frugal
