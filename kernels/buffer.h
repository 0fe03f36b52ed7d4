#pragma once
// Memory a backend owns: where it lives (Device) and one typed, shaped handle to
// it (Buffer). The engine holds its activations, its KV pool and its small
// weights (norms, biases) as Buffers a backend allocated, so the same model runs
// on any device without knowing which; only a backend dereferences the pointers.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"

namespace nibble::kernels {

enum class DeviceKind : std::uint8_t { Cpu, Cuda };

struct Device {
  DeviceKind kind = DeviceKind::Cpu;
  int index = 0;  // which GPU; 0 for the CPU

  std::string name() const;  // "cpu", "cuda:0"
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda" (GPU 0) or "cuda:N"; throws nibble::Error naming the accepted forms.
Device parse_device(std::string_view text);

// A backend's memory, typed and shaped (row-major, outermost first). Copies share
// the same memory; the last one frees it through the backend's deleter. A buffer
// may also view memory someone else keeps alive (the CPU backend's uploads of
// mapped weights), which it then never frees.
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::shared_ptr<void> owner, void* data, Device device, DType dtype, std::vector<std::int64_t> shape);

  bool empty() const { return data_ == nullptr; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }
  void* raw() const { return data_; }

 private:
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  Device device_;
  DType dtype_ = DType::F32;
  std::vector<std::int64_t> shape_;
};

}  // namespace nibble::kernels
