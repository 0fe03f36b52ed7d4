#pragma once
// Element types of plain (non-block-quantized) tensors, as named by safetensors.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nibble {

enum class DType : std::uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, Bool };

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype string ("F32", "BF16", ...); nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);

}  // namespace nibble
