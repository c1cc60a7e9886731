// test_util.h: helpers shared by the test binaries (header only; each test_*.cpp is its own binary).
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "src/common.h"
#include "src/io/safetensors.h"

namespace frugal::test_util {

// A per-process scratch directory under the system temp dir, removed when the binary exits.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() / ("frugal_test_" + tag + "_" + std::to_string(::getpid()))) {}
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::filesystem::path& dir() const { return dir_; }
  std::string path(const std::string& name) const {  // creates the directory on first use
    std::filesystem::create_directories(dir_);
    return (dir_ / name).string();
  }

 private:
  std::filesystem::path dir_;
};

// Expects fn() to throw frugal::Error whose message contains every needle.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << needles[0];
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// A golden fixture's tensor as fp32 (any stored dtype); a missing name fails naming the file.
inline std::vector<float> fixture_f32(const SafetensorsFile& f, const std::string& name) {
  const TensorView* t = f.find(name);
  if (!t) fail("fixture ", f.path(), " has no tensor ", name);
  std::vector<float> out(t->numel());
  to_float(*t, out.data());
  return out;
}

}  // namespace frugal::test_util
