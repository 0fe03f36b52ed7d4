#include "loader/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nibble {

std::string TensorView::shape_string() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

TensorView make_owned_f32(std::string name, std::vector<std::int64_t> shape, std::vector<float> values) {
  auto storage = std::make_shared<std::vector<float>>(std::move(values));
  TensorView view;
  view.name = std::move(name);
  view.dtype = DType::F32;
  view.shape = std::move(shape);
  view.bytes = std::as_bytes(std::span<const float>(*storage));
  view.owner = storage;
  return view;
}

TensorView make_owned_tensor(std::string name, DType dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes) {
  auto storage = std::make_shared<std::vector<std::byte>>(std::move(bytes));
  TensorView view;
  view.name = std::move(name);
  view.dtype = dtype;
  view.shape = std::move(shape);
  view.bytes = std::span<const std::byte>(*storage);
  view.owner = storage;
  return view;
}

}  // namespace nibble
