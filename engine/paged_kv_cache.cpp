#include "engine/paged_kv_cache.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/cpu/kv_kernels.h"

namespace nibble::engine {

namespace {

struct KvDtypeName {
  KvDtype dtype;
  std::string_view name;
};
// Canonical names first.
constexpr KvDtypeName kKvDtypeNames[] = {
    {KvDtype::Float32, "float32"}, {KvDtype::Float16, "float16"}, {KvDtype::Int8, "int8"},
    {KvDtype::Float32, "f32"},     {KvDtype::Float32, "fp32"},    {KvDtype::Float16, "f16"},
    {KvDtype::Float16, "fp16"},    {KvDtype::Float16, "half"},
};

}  // namespace

std::string_view kv_dtype_name(KvDtype dtype) {
  for (const auto& entry : kKvDtypeNames) {
    if (entry.dtype == dtype) return entry.name;
  }
  return "unknown";
}

KvDtype parse_kv_dtype(std::string_view name) {
  for (const auto& entry : kKvDtypeNames) {
    if (entry.name == name) return entry.dtype;
  }
  fail("unknown KV cache dtype '{}' (float32, float16 or f16, int8)", name);
}

int kv_element_bytes(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::Float32:
      return 4;
    case KvDtype::Float16:
      return 2;
    case KvDtype::Int8:
      return 1;
  }
  return 4;
}

PagedKvCache::PagedKvCache(const ModelConfig& config, std::int32_t num_blocks, std::int32_t block_size, KvDtype dtype)
    : layers_(config.num_layers),
      kv_dim_(config.kv_dim()),
      kv_heads_(config.num_kv_heads),
      head_dim_(config.head_dim),
      num_blocks_(num_blocks),
      block_size_(block_size),
      dtype_(dtype) {
  if (num_blocks <= 0 || block_size <= 0) {
    fail("a paged KV cache needs blocks (got {} blocks of {} positions)", num_blocks, block_size);
  }
  const auto rows = static_cast<std::size_t>(layers_ * num_blocks_ * block_size_);
  const auto elements = rows * static_cast<std::size_t>(kv_dim_);
  switch (dtype_) {
    case KvDtype::Float32:
      keys_.resize(elements);
      values_.resize(elements);
      break;
    case KvDtype::Float16:
      keys_f16_.resize(elements);
      values_f16_.resize(elements);
      break;
    case KvDtype::Int8:
      key_codes_.resize(elements);
      value_codes_.resize(elements);
      key_scales_.resize(rows * static_cast<std::size_t>(kv_heads_));
      value_scales_.resize(key_scales_.size());
      break;
  }
}

std::uint64_t PagedKvCache::bytes_per_token() const {
  const auto elements = static_cast<std::uint64_t>(2 * layers_ * kv_dim_);
  const auto scales = dtype_ == KvDtype::Int8 ? static_cast<std::uint64_t>(2 * layers_ * kv_heads_) : 0;
  return elements * static_cast<std::uint64_t>(kv_element_bytes(dtype_)) + scales * sizeof(float);
}

std::uint64_t PagedKvCache::bytes() const {
  return bytes_per_token() * static_cast<std::uint64_t>(num_blocks_) * static_cast<std::uint64_t>(block_size_);
}

// Symmetric per head: the largest magnitude maps to 127.
void PagedKvCache::quantize_row(const float* row, std::int8_t* codes, float* scales) const {
  for (std::int64_t h = 0; h < kv_heads_; ++h) {
    const float* x = row + h * head_dim_;
    float max_abs = 0.0f;
    for (std::int64_t i = 0; i < head_dim_; ++i) max_abs = std::max(max_abs, std::abs(x[i]));
    const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
    scales[h] = scale;
    for (std::int64_t i = 0; i < head_dim_; ++i) {
      codes[h * head_dim_ + i] = static_cast<std::int8_t>(std::lrint(std::clamp(x[i] / scale, -127.0f, 127.0f)));
    }
  }
}

void PagedKvCache::check_block(std::int32_t block) const {
  if (block < 0 || block >= num_blocks_) fail("KV block {} outside the pool of {}", block, num_blocks_);
}

void PagedKvCache::store(std::int64_t layer_index, std::span<const std::int32_t> block_table, std::int64_t start,
                         std::int64_t rows, const float* keys, const float* values) {
  const auto capacity = static_cast<std::int64_t>(block_table.size()) * block_size_;
  if (start < 0 || start + rows > capacity) {
    fail("KV positions [{}, {}) exceed the sequence's {} blocks", start, start + rows, block_table.size());
  }
  const auto view = layer(layer_index, block_table);
  const auto count = static_cast<std::size_t>(kv_dim_);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t row = view.row(start + r);
    check_block(static_cast<std::int32_t>(row / block_size_));
    const auto at = static_cast<std::ptrdiff_t>(offset(layer_index, row));
    switch (dtype_) {
      case KvDtype::Float32:
        std::copy_n(keys + r * kv_dim_, count, keys_.begin() + at);
        std::copy_n(values + r * kv_dim_, count, values_.begin() + at);
        break;
      case KvDtype::Float16:
        // The cache is host memory, so the CPU's vector conversion serves any backend.
        kernels::cpu::store_f16(keys + r * kv_dim_, kv_dim_, keys_f16_.data() + at);
        kernels::cpu::store_f16(values + r * kv_dim_, kv_dim_, values_f16_.data() + at);
        break;
      case KvDtype::Int8: {
        const auto scales_at = scale_offset(layer_index, row);
        quantize_row(keys + r * kv_dim_, key_codes_.data() + at, key_scales_.data() + scales_at);
        quantize_row(values + r * kv_dim_, value_codes_.data() + at, value_scales_.data() + scales_at);
        break;
      }
    }
  }
}

kernels::KvLayerView PagedKvCache::layer(std::int64_t layer_index, std::span<const std::int32_t> block_table) const {
  switch (dtype_) {
    case KvDtype::Float32:
      return kernels::KvLayerView::floats(keys_.data() + offset(layer_index, 0),
                                          values_.data() + offset(layer_index, 0), kv_dim_, block_table, block_size_);
    case KvDtype::Float16:
      return kernels::KvLayerView::f16(keys_f16_.data() + offset(layer_index, 0),
                                       values_f16_.data() + offset(layer_index, 0), kv_dim_, block_table, block_size_);
    case KvDtype::Int8:
      break;
  }
  return kernels::KvLayerView::int8(key_codes_.data() + offset(layer_index, 0), value_codes_.data() + offset(layer_index, 0),
                                    key_scales_.data() + scale_offset(layer_index, 0),
                                    value_scales_.data() + scale_offset(layer_index, 0), kv_dim_, block_table,
                                    block_size_);
}

void PagedKvCache::copy_block(std::int32_t from, std::int32_t to, std::int32_t tokens) {
  check_block(from);
  check_block(to);
  if (tokens < 0 || tokens > block_size_) fail("copy of {} positions into a block of {}", tokens, block_size_);
  // Every array the dtype allocated (the others are empty), so no dtype is left out.
  const auto copy = [](auto& data, std::size_t src, std::size_t dst, std::int64_t count) {
    if (data.empty()) return;
    std::copy_n(data.begin() + static_cast<std::ptrdiff_t>(src), count, data.begin() + static_cast<std::ptrdiff_t>(dst));
  };
  for (std::int64_t l = 0; l < layers_; ++l) {
    const std::int64_t src_row = std::int64_t{from} * block_size_, dst_row = std::int64_t{to} * block_size_;
    const std::size_t src = offset(l, src_row), dst = offset(l, dst_row);
    const std::int64_t elements = tokens * kv_dim_;
    copy(keys_, src, dst, elements);
    copy(values_, src, dst, elements);
    copy(keys_f16_, src, dst, elements);
    copy(values_f16_, src, dst, elements);
    copy(key_codes_, src, dst, elements);
    copy(value_codes_, src, dst, elements);
    copy(key_scales_, scale_offset(l, src_row), scale_offset(l, dst_row), tokens * kv_heads_);
    copy(value_scales_, scale_offset(l, src_row), scale_offset(l, dst_row), tokens * kv_heads_);
  }
}

}  // namespace nibble::engine
