#include "kernels/buffer.h"

#include <charconv>

#include <fmt/format.h>

#include "common/error.h"

namespace nibble::kernels {

std::string Device::name() const { return kind == DeviceKind::Cpu ? "cpu" : fmt::format("cuda:{}", index); }

Device parse_device(std::string_view text) {
  if (text == "cpu") return {DeviceKind::Cpu, 0};
  if (text == "cuda") return {DeviceKind::Cuda, 0};
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int index = -1;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (error == std::errc() && end == digits.data() + digits.size() && !digits.empty() && index >= 0) {
      return {DeviceKind::Cuda, index};
    }
  }
  fail("unknown device '{}' (cpu, cuda or cuda:N)", text);
}

Buffer::Buffer(std::shared_ptr<void> owner, void* data, Device device, DType dtype, std::vector<std::int64_t> shape)
    : owner_(std::move(owner)), data_(data), device_(device), dtype_(dtype), shape_(std::move(shape)) {}

std::int64_t Buffer::numel() const {
  if (data_ == nullptr) return 0;
  std::int64_t n = 1;
  for (const auto d : shape_) n *= d;
  return n;
}

}  // namespace nibble::kernels
