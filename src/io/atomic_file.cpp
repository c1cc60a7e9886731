// atomic_file.cpp: temp file + fsync + rename + directory fsync (see atomic_file.h).
#include "src/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "src/common.h"

namespace fs = std::filesystem;

namespace frugal {

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string((long)::getpid()); }

namespace {
// fsync of a path opened read-only (file or directory); directories may refuse on some
// filesystems, which only costs durability, never correctness.
bool fsync_path(const std::string& p, bool is_dir) {
  int fd = ::open(p.c_str(), is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return is_dir;
  bool ok = ::fsync(fd) == 0 || is_dir;
  ::close(fd);
  return ok;
}
}  // namespace

void commit_temp_file(const std::string& tmp, const std::string& path) {
  if (!fsync_path(tmp, false)) {
    int err = errno;
    std::remove(tmp.c_str());
    fail(path, ": cannot flush ", tmp, " to disk: ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    fail(path, ": cannot rename ", tmp, " into place: ", std::strerror(err));
  }
  fs::path parent = fs::path(path).parent_path();
  fsync_path(parent.empty() ? std::string(".") : parent.string(), true);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(temp_path_for(path)) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail(path_, ": cannot create ", tmp_, ": ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n) fail(path_, ": write failed (disk full?): ", std::strerror(errno));
}

void AtomicFile::commit() {
  bool ok = std::fflush(f_) == 0;
  ok = std::fclose(f_) == 0 && ok;
  f_ = nullptr;
  if (!ok) {
    std::remove(tmp_.c_str());
    fail(path_, ": write failed (disk full?)");
  }
  commit_temp_file(tmp_, path_);
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents.data(), contents.size());
  f.commit();
}

}  // namespace frugal
