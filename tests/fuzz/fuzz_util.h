// fuzz_util.h: shared by the libFuzzer harnesses. Each harness feeds the bytes to one parser;
// frugal::Error is the only acceptable failure (any other exception escapes LLVMFuzzerTestOneInput
// and libFuzzer reports it as a crash), as are ASan/UBSan findings, leaks and -malloc_limit_mb.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

#include "src/common.h"

namespace fuzz {

// A per-process scratch directory under $TMPDIR (never the repository), removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::filesystem::path d = std::filesystem::path(t ? t : "/tmp") / ("frugal-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(scratch_dir(), ec); });
    return d;
  }();
  return dir;
}

// Writes bytes to scratch_dir()/name and returns the path.
inline std::string write_file(const std::string& name, const uint8_t* data, size_t size) {
  const std::string p = (scratch_dir() / name).string();
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return p;
}

// Runs fn; a frugal::Error is a clean rejection. Its message must not be empty (a clear error).
template <class F>
void expect_clean(F&& fn) {
  try {
    fn();
  } catch (const frugal::Error& e) {
    if (std::string_view(e.what()).empty()) std::abort();
  }
}

// Splits the input at the first occurrence of sep: [head, tail) (no separator: all head).
inline std::pair<std::string_view, std::string_view> split(const uint8_t* data, size_t size, std::string_view sep) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t at = all.find(sep);
  if (at == std::string_view::npos) return {all, {}};
  return {all.substr(0, at), all.substr(at + sep.size())};
}

}  // namespace fuzz
