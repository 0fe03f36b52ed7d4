#include "loader/quant_unpack.h"

#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "common/half.h"
#include "common/mapped_file.h"

namespace nibble::quant {

std::string shape_text(const std::vector<std::int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

TensorView require(const WeightSource& weights, const std::string& name, std::initializer_list<DType> dtypes) {
  TensorView tensor = weights.load(name);
  for (const DType dtype : dtypes) {
    if (tensor.dtype == dtype) return tensor;
  }
  std::string allowed;
  for (const DType dtype : dtypes) allowed += (allowed.empty() ? "" : " or ") + std::string(dtype_name(dtype));
  fail("tensor '{}' has dtype {}, expected {}", name, dtype_name(tensor.dtype), allowed);
}

void expect_shape(const TensorView& tensor, const std::vector<std::int64_t>& expected, std::string_view why) {
  if (tensor.shape != expected) {
    fail("tensor '{}': shape {}, expected {} ({})", tensor.name, shape_text(tensor.shape), shape_text(expected), why);
  }
}

std::vector<float> to_floats(const TensorView& tensor) {
  std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
  switch (tensor.dtype) {
    case DType::F32:
      std::memcpy(out.data(), tensor.bytes.data(), out.size() * sizeof(float));
      break;
    case DType::F16:
    case DType::BF16:
      for (std::size_t i = 0; i < out.size(); ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, tensor.bytes.data() + 2 * i, 2);
        out[i] = tensor.dtype == DType::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
      }
      break;
    default:
      fail("tensor '{}' has dtype {}, expected F16, BF16 or F32", tensor.name, dtype_name(tensor.dtype));
  }
  return out;
}

namespace {

std::uint32_t load_word(const std::byte* at) {
  std::uint32_t word;
  std::memcpy(&word, at, 4);  // mapped tensors need not be 4-byte aligned
  return word;
}

}  // namespace

std::int64_t packed_words(std::int64_t count, int bits, Packing packing) {
  if (packing == Packing::PerWord) {
    const std::int64_t per_word = 32 / bits;
    return (count + per_word - 1) / per_word;
  }
  return (count * bits + 31) / 32;
}

void unpack_codes(const std::byte* words, std::size_t word_stride, std::int64_t count, int bits, Packing packing,
                  std::uint8_t* out) {
  const std::uint32_t mask = (1u << bits) - 1;
  if (packing == Packing::PerWord || 32 % bits == 0) {
    const int per_word = 32 / bits;
    for (std::int64_t i = 0, w = 0; i < count; ++w) {
      std::uint32_t word = load_word(words + static_cast<std::size_t>(w) * word_stride);
      for (int j = 0; j < per_word && i < count; ++j, ++i) {
        out[i] = static_cast<std::uint8_t>(word & mask);
        word >>= bits;
      }
    }
    return;
  }
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint64_t bit = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(bits);
    const std::size_t w = bit / 32;
    const unsigned shift = bit % 32;
    std::uint64_t value = load_word(words + w * word_stride) >> shift;
    if (shift + static_cast<unsigned>(bits) > 32) {
      value |= static_cast<std::uint64_t>(load_word(words + (w + 1) * word_stride)) << (32 - shift);
    }
    out[i] = static_cast<std::uint8_t>(value & mask);
  }
}

void release(const std::vector<TensorView>& tensors) {
  for (const auto& tensor : tensors) release_mapped_pages(tensor.bytes);
}

std::uint64_t stored_bytes(const std::vector<TensorView>& tensors) {
  std::uint64_t total = 0;
  for (const auto& tensor : tensors) total += tensor.bytes.size();
  return total;
}

}  // namespace nibble::quant
