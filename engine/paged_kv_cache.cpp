#include "engine/paged_kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace nibble::engine {

PagedKvCache::PagedKvCache(const ModelConfig& config, std::int32_t num_blocks, std::int32_t block_size)
    : layers_(config.num_layers), kv_dim_(config.kv_dim()), num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    fail("a paged KV cache needs blocks (got {} blocks of {} positions)", num_blocks, block_size);
  }
  keys_.resize(static_cast<std::size_t>(layers_ * num_blocks_ * block_size_ * kv_dim_));
  values_.resize(keys_.size());
}

std::uint64_t PagedKvCache::bytes_per_token() const {
  return static_cast<std::uint64_t>(2 * layers_ * kv_dim_) * sizeof(float);
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
    std::copy_n(keys + r * kv_dim_, count, keys_.begin() + at);
    std::copy_n(values + r * kv_dim_, count, values_.begin() + at);
  }
}

kernels::KvLayerView PagedKvCache::layer(std::int64_t layer_index, std::span<const std::int32_t> block_table) const {
  return {keys_.data() + offset(layer_index, 0), values_.data() + offset(layer_index, 0), kv_dim_, block_table,
          block_size_};
}

void PagedKvCache::copy_block(std::int32_t from, std::int32_t to, std::int32_t tokens) {
  check_block(from);
  check_block(to);
  if (tokens < 0 || tokens > block_size_) fail("copy of {} positions into a block of {}", tokens, block_size_);
  const auto count = static_cast<std::ptrdiff_t>(tokens * kv_dim_);
  for (std::int64_t l = 0; l < layers_; ++l) {
    const auto src = static_cast<std::ptrdiff_t>(offset(l, std::int64_t{from} * block_size_));
    const auto dst = static_cast<std::ptrdiff_t>(offset(l, std::int64_t{to} * block_size_));
    std::copy_n(keys_.begin() + src, count, keys_.begin() + dst);
    std::copy_n(values_.begin() + src, count, values_.begin() + dst);
  }
}

}  // namespace nibble::engine
