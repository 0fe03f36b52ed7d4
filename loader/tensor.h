#pragma once
// A named, typed, shaped view of tensor bytes. The bytes either live in a mapped
// model file (zero-copy) or in a buffer the view co-owns (converted at load).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace nibble {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  // row-major, outermost first (PyTorch order)
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> owner;  // keeps the bytes alive: the mapped file or a converted buffer

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (const auto d : shape) n *= d;
    return n;
  }
  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
  }
  std::string shape_string() const;
};

// A tensor that owns float32 data, for weights converted or dequantized at load.
TensorView make_owned_f32(std::string name, std::vector<std::int64_t> shape, std::vector<float> values);
// A tensor of any plain dtype that owns its bytes (numel x dtype size), for
// weights rebuilt at load in the file's own precision (e.g. sparse -> dense).
TensorView make_owned_tensor(std::string name, DType dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes);

}  // namespace nibble
