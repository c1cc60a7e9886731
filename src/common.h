// common.h: errors, aligned buffers and the bf16 storage type used across frugal (host only).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/shared_math.h"

namespace frugal {

// Library code throws frugal::Error; only main() decides to exit. The message names the
// file/key/tensor at fault; FRUGAL_CHECK adds the source location for programming errors.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, const T& v, const R&... r) {
  os << v;
  append(os, r...);
}
}  // namespace detail

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  detail::append(os, a...);
  return os.str();
}

// "[2, 3]": tensor shapes in error messages (PyTorch's spelling).
template <class I>
std::string shape_str(const std::vector<I>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

template <class... A>
[[noreturn]] void fail(const A&... a) {
  throw Error(str(a...));
}

}  // namespace frugal

// FRUGAL_CHECK(cond, "message ", value, ...): throws frugal::Error with file:line.
#define FRUGAL_CHECK(cond, ...)                                                               \
  do {                                                                                        \
    if (!(cond))                                                                              \
      throw ::frugal::Error(::frugal::str(__FILE__, ":", __LINE__, ": check failed: " #cond   \
                                          ": ", __VA_ARGS__));                                \
  } while (0)

namespace frugal {

// 64-byte aligned allocator so AVX-512 loads and oneDNN buffers are aligned.
template <class T, std::size_t Align = 64>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, Align>&) {}
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Align>;
  };
  T* allocate(std::size_t n) {
    std::size_t bytes = (n * sizeof(T) + Align - 1) / Align * Align;
    void* p = std::aligned_alloc(Align, bytes ? bytes : Align);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};

// avector<T>: std::vector with 64-byte aligned storage.
template <class T>
using avector = std::vector<T, AlignedAllocator<T>>;

// bf16 storage type: the upper 16 bits of an IEEE fp32. Conversions live in shared_math.h
// (round to nearest even, NaN kept quiet) so CPU and CUDA code round identically.
struct bf16 {
  uint16_t bits;
  bf16() = default;
  static bf16 from_float(float f) {
    bf16 b;
    b.bits = fm::float_to_bf16_bits(f);
    return b;
  }
  float to_float() const { return fm::bf16_bits_to_float(bits); }
};
static_assert(sizeof(bf16) == 2);

void float_to_bf16(const float* in, bf16* out, std::size_t n);  // vectorized where available
void bf16_to_float(const bf16* in, float* out, std::size_t n);

}  // namespace frugal
