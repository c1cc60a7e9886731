// device_buffer.cuh: DeviceBuffer<T>, an owning device allocation of n elements of T (plain
// cudaMalloc, never managed memory), freed on scope exit, also when a CUDA_CHECK throws. Movable,
// not copyable. Errors go through CUDA_CHECK (kernels/cuda/cuda_check.cuh); the destructor does
// not throw. Host <-> device copies are synchronous (cudaMemcpy) and checked against size().
#pragma once
#include <cstddef>
#include <utility>

#include "kernels/cuda/cuda_check.cuh"

namespace frugal::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // n elements, uninitialized; n == 0 still allocates one element so data() is a valid pointer.
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), (n ? n : 1) * sizeof(T)));
  }
  // n elements copied from host.
  DeviceBuffer(const T* host, std::size_t n) : DeviceBuffer(n) { upload(host, n); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  T* data() const { return p_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }

  // host[0, n) -> device[0, n)
  void upload(const T* host, std::size_t n) {
    FRUGAL_CHECK(n <= n_, "DeviceBuffer::upload: ", n, " elements into a buffer of ", n_);
    if (n) CUDA_CHECK(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  // device[0, n) -> host[0, n)
  void download(T* host, std::size_t n) const {
    FRUGAL_CHECK(n <= n_, "DeviceBuffer::download: ", n, " elements from a buffer of ", n_);
    if (n) CUDA_CHECK(cudaMemcpy(host, p_, n * sizeof(T), cudaMemcpyDeviceToHost));
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace frugal::cuda
