#pragma once
// Keys and values of many sequences in one pool of fixed-size blocks (the paged
// KV cache of continuous batching). Which blocks a sequence owns is the
// scheduler's bookkeeping (scheduler/block_manager.h); this holds the numbers and
// turns (block table, position) into storage.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "loader/model_config.h"

namespace nibble::engine {

class PagedKvCache {
 public:
  // `num_blocks` blocks of `block_size` positions for every layer, float32.
  PagedKvCache(const ModelConfig& config, std::int32_t num_blocks, std::int32_t block_size);

  std::int32_t num_blocks() const { return num_blocks_; }
  std::int32_t block_size() const { return block_size_; }
  std::uint64_t bytes() const { return (keys_.size() + values_.size()) * sizeof(float); }
  // Bytes one position takes over all layers (keys and values).
  std::uint64_t bytes_per_token() const;

  // Stores rows [0, rows) of keys/values [rows, kv_dim] at positions start.. of
  // the sequence whose blocks are `block_table`.
  void store(std::int64_t layer_index, std::span<const std::int32_t> block_table, std::int64_t start,
             std::int64_t rows, const float* keys, const float* values);
  kernels::KvLayerView layer(std::int64_t layer_index, std::span<const std::int32_t> block_table) const;
  // Copy-on-write: the first `tokens` positions of block `from` into block `to`, every layer.
  void copy_block(std::int32_t from, std::int32_t to, std::int32_t tokens);

 private:
  std::size_t offset(std::int64_t layer_index, std::int64_t row) const {
    return static_cast<std::size_t>((layer_index * num_blocks_ * block_size_ + row) * kv_dim_);
  }
  void check_block(std::int32_t block) const;

  std::int64_t layers_;
  std::int64_t kv_dim_;
  std::int32_t num_blocks_;
  std::int32_t block_size_;
  std::vector<float> keys_;
  std::vector<float> values_;
};

}  // namespace nibble::engine
