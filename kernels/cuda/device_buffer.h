#pragma once
// Owning handles for device memory (cudaMalloc) and page-locked host memory
// (cudaMallocHost): move-only, freed in the destructor, every call checked.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace nibble::kernels::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) { allocate(count); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  bool empty() const { return count_ == 0; }

  // Grows to at least `count` elements, discarding the contents (synchronizes the
  // device through cudaFree/cudaMalloc: call outside graph capture).
  void reserve_discard(std::size_t count) {
    if (count <= count_) return;
    release();
    allocate(count);
  }

  // Asynchronous copies on `stream`; `host` must stay valid (and, for a real
  // overlap, be page-locked) until the stream reaches the copy.
  void upload(std::span<const T> host, cudaStream_t stream, std::size_t offset = 0) {
    check_range(offset, host.size());
    if (host.empty()) return;
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(data_ + offset, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream));
  }
  void download(std::span<T> host, cudaStream_t stream, std::size_t offset = 0) const {
    check_range(offset, host.size());
    if (host.empty()) return;
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(host.data(), data_ + offset, host.size_bytes(), cudaMemcpyDeviceToHost, stream));
  }
  void fill_bytes(int value, cudaStream_t stream) {
    if (count_ > 0) NIBBLE_CUDA_CHECK(cudaMemsetAsync(data_, value, bytes(), stream));
  }

 private:
  void allocate(std::size_t count) {
    if (count == 0) return;
    void* pointer = nullptr;
    NIBBLE_CUDA_CHECK(cudaMalloc(&pointer, count * sizeof(T)));
    data_ = static_cast<T*>(pointer);
    count_ = count;
  }
  void release() noexcept {
    if (data_ != nullptr) static_cast<void>(cudaFree(data_));  // no throwing from a destructor
    data_ = nullptr;
    count_ = 0;
  }
  void check_range(std::size_t offset, std::size_t count) const {
    if (offset > count_ || count > count_ - offset) {
      throw_cuda_error(cudaErrorInvalidValue, "DeviceBuffer copy outside the buffer", __FILE__, __LINE__);
    }
  }

  T* data_ = nullptr;
  std::size_t count_ = 0;
};

template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t count) { allocate(count); }
  ~PinnedBuffer() { release(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::span<T> span() { return {data_, count_}; }

  void reserve_discard(std::size_t count) {
    if (count <= count_) return;
    release();
    allocate(count);
  }

 private:
  void allocate(std::size_t count) {
    if (count == 0) return;
    void* pointer = nullptr;
    NIBBLE_CUDA_CHECK(cudaMallocHost(&pointer, count * sizeof(T)));
    data_ = static_cast<T*>(pointer);
    count_ = count;
  }
  void release() noexcept {
    if (data_ != nullptr) static_cast<void>(cudaFreeHost(data_));
    data_ = nullptr;
    count_ = 0;
  }

  T* data_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace nibble::kernels::cuda
