// atomic_file.h: files appear whole or not at all. Everything frugal writes (models, adapters,
// datasets, checkpoints, metadata) goes to "<path>.tmp.<pid>" first, is fsynced, then renamed onto
// the final name and the directory fsynced, so a crash never leaves a half-written file.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>

namespace frugal {

// Temporary name for `path` (same directory, so the rename is atomic).
std::string temp_path_for(const std::string& path);

// Makes a finished temporary file durable and moves it onto `path`: fsync(tmp), rename, fsync(dir).
// Errors name `path`; on error the temporary file is removed.
void commit_temp_file(const std::string& tmp, const std::string& path);

// A binary file written through stdio under a temporary name. commit() publishes it; the
// destructor removes the temporary file if commit() was never reached (an exception unwound).
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, std::size_t n);  // errors name the final path ("disk full?")
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
};

// Whole small file (JSON, text) written atomically.
void write_file_atomic(const std::string& path, std::string_view contents);

}  // namespace frugal
