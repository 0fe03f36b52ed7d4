#pragma once
// How attention reads one layer of a KV cache, in whatever format and memory the
// cache keeps it: contiguous or paged, float32, fp16 or int8.
#include <cstdint>
#include <span>

namespace nibble::kernels {

// How a KV cache stores its elements: float32; IEEE fp16 (half the memory, each
// element rounded once to 11 significant bits); or int8 codes with one float scale
// per (position, kv head).
enum class KvFormat : std::uint8_t { Float32, Float16, Int8 };

// One layer's keys and values as attention reads them: position t is row row(t).
// Contiguous (a sequence's own cache) or paged: the position's block from the
// sequence's block table, then its slot in the block. Row r's elements start at
// r * stride in the format's arrays: keys/values (float32), keys_f16/values_f16
// (fp16 bits), or key_codes/value_codes (int8) with the scale of (row r, kv head h)
// at key_scales/value_scales + r * kv_heads + h. Exactly one pair is set.
struct KvLayerView {
  const float* keys = nullptr;
  const float* values = nullptr;
  std::int64_t stride = 0;
  std::span<const std::int32_t> block_table;  // empty: contiguous
  std::int64_t block_size = 0;
  const std::int8_t* key_codes = nullptr;  // set: the 8-bit layout
  const std::int8_t* value_codes = nullptr;
  const float* key_scales = nullptr;
  const float* value_scales = nullptr;
  const std::uint16_t* keys_f16 = nullptr;  // set: the fp16 layout
  const std::uint16_t* values_f16 = nullptr;

  std::int64_t row(std::int64_t position) const {
    if (block_table.empty()) return position;
    return std::int64_t{block_table[static_cast<std::size_t>(position / block_size)]} * block_size +
           position % block_size;
  }
  static KvLayerView floats(const float* keys, const float* values, std::int64_t stride,
                            std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view;
    view.keys = keys;
    view.values = values;
    view.stride = stride;
    view.block_table = block_table;
    view.block_size = block_size;
    return view;
  }
  static KvLayerView f16(const std::uint16_t* keys, const std::uint16_t* values, std::int64_t stride,
                         std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view = floats(nullptr, nullptr, stride, block_table, block_size);
    view.keys_f16 = keys;
    view.values_f16 = values;
    return view;
  }
  static KvLayerView int8(const std::int8_t* key_codes, const std::int8_t* value_codes, const float* key_scales,
                          const float* value_scales, std::int64_t stride,
                          std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view = floats(nullptr, nullptr, stride, block_table, block_size);
    view.key_codes = key_codes;
    view.value_codes = value_codes;
    view.key_scales = key_scales;
    view.value_scales = value_scales;
    return view;
  }

  KvFormat format() const {
    if (key_codes != nullptr) return KvFormat::Int8;
    if (keys_f16 != nullptr) return KvFormat::Float16;
    return KvFormat::Float32;
  }
  bool quantized() const { return format() == KvFormat::Int8; }
  const float* key(std::int64_t position) const { return keys + row(position) * stride; }
  const float* value(std::int64_t position) const { return values + row(position) * stride; }
};

}  // namespace nibble::kernels
