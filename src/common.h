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

// Elements of a tensor of that shape (1 for a scalar []).
inline int64_t shape_numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

inline constexpr int32_t kIgnoreIndex = -100;  // target value of a position without loss

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

// The allocator of every avector and Buf: 64-byte aligned host memory by default. A backend that
// wants its host buffers elsewhere (e.g. pinned memory for copies to a device) installs its pair
// with set_buffer_allocator() once, before the first allocation; nullptrs restore the default.
// buffer_alloc throws std::bad_alloc.
using BufferAllocFn = void* (*)(std::size_t bytes);
using BufferFreeFn = void (*)(void* p);
void* buffer_alloc(std::size_t bytes);
void buffer_free(void* p);
void set_buffer_allocator(BufferAllocFn alloc, BufferFreeFn free);
void* aligned_host_alloc(std::size_t bytes);  // the default pair (64-byte aligned_alloc / free)
void aligned_host_free(void* p);

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
  static_assert(Align <= 64, "buffer_alloc aligns to 64 bytes");
  T* allocate(std::size_t n) { return static_cast<T*>(buffer_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) { buffer_free(p); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};

// avector<T>: std::vector with 64-byte aligned storage.
template <class T>
using avector = std::vector<T, AlignedAllocator<T>>;

// Makes v exactly n elements, reallocating (and dropping the old storage) only when the size
// differs: activation and gradient buffers follow the batch shape without keeping a larger
// capacity. New elements are value-initialized; a kept buffer keeps its contents.
template <class T>
void resize_exact(avector<T>& v, std::size_t n) {
  if (v.size() != n) {
    avector<T>().swap(v);
    v.resize(n);
  }
}

// Makes v at least n elements (reallocating fresh when it must grow, never shrinking): reusable
// scratch that is bounded by its largest use.
template <class T>
void grow_to(avector<T>& v, std::size_t n) {
  if (v.size() < n) {
    avector<T>().swap(v);
    v.resize(n);
  }
}

// Bytes held by a vector-like buffer (size() elements).
template <class V>
std::size_t vec_bytes(const V& v) {
  return v.size() * sizeof(v[0]);
}

// Buf<T>: 64-byte aligned storage that either owns its elements (an avector) or views memory owned
// elsewhere. FSDP (sharding/fsdp.h) binds a block's weights to slices of the unit buffer it has
// just all-gathered, without copying, and unbinds them when the unit is freed. Copying a Buf
// copies the elements (a copy of a view owns its copy); resize() of a view is an error.
template <class T>
class Buf {
 public:
  Buf() = default;
  Buf(avector<T> v) : own_(std::move(v)) { sync(); }  // NOLINT: implicit, like assigning a vector
  Buf(const Buf& o) : own_(o.begin(), o.end()) { sync(); }
  Buf(Buf&& o) noexcept { take(std::move(o)); }
  Buf& operator=(const Buf& o) {
    if (this != &o) {
      avector<T> c(o.begin(), o.end());
      own_ = std::move(c);
      sync();
    }
    return *this;
  }
  Buf& operator=(Buf&& o) noexcept {
    if (this != &o) take(std::move(o));
    return *this;
  }
  Buf& operator=(avector<T> v) {
    own_ = std::move(v);
    sync();
    return *this;
  }
  // View n elements at p (not owned); frees any owned storage.
  void view(T* p, std::size_t n) {
    avector<T>().swap(own_);
    p_ = p, n_ = n, view_ = true;
  }
  bool is_view() const { return view_; }
  // Frees owned storage or drops the view: size() == 0 afterwards.
  void reset() {
    avector<T>().swap(own_);
    sync();
  }
  void resize(std::size_t n, const T& x = T()) {
    check_owned();
    own_.resize(n, x);
    sync();
  }
  void assign(std::size_t n, const T& x) {
    avector<T>(n, x).swap(own_);
    sync();
  }
  template <class It>
  void assign(It b, It e) {
    avector<T>(b, e).swap(own_);
    sync();
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T& operator[](std::size_t i) { return p_[i]; }
  const T& operator[](std::size_t i) const { return p_[i]; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }
  const T* begin() const { return p_; }
  const T* end() const { return p_ + n_; }
  T& back() { return p_[n_ - 1]; }
  const T& back() const { return p_[n_ - 1]; }

 private:
  void sync() { p_ = own_.data(), n_ = own_.size(), view_ = false; }
  void take(Buf&& o) {
    own_ = std::move(o.own_);
    p_ = o.p_, n_ = o.n_, view_ = o.view_;
    o.p_ = nullptr, o.n_ = 0, o.view_ = false;
  }
  void check_owned() const;
  avector<T> own_;
  T* p_ = nullptr;
  std::size_t n_ = 0;
  bool view_ = false;
};
[[noreturn]] void buf_resize_view_error();
template <class T>
void Buf<T>::check_owned() const {
  if (view_) buf_resize_view_error();
}

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
