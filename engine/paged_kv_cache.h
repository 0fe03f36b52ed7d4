#pragma once
// Keys and values of many sequences in one pool of fixed-size blocks (the paged
// KV cache of continuous batching). Which blocks a sequence owns is the
// scheduler's bookkeeping (scheduler/block_manager.h); this holds the numbers and
// turns (block table, position) into storage.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/huge_pages.h"
#include "kernels/backend.h"
#include "loader/model_config.h"

namespace nibble::engine {

// float32; fp16, half the memory for a rounding of each element to 11 significant
// bits (logits within ~0.06 % on SmolLM2); or int8 codes with one float scale per
// (position, kv head): 4x less memory than float32 (for head_dim 64, 3.8x with the
// scales) at a larger cost in accuracy. The kernels' KvFormat, so the two never
// disagree.
using KvDtype = kernels::KvFormat;

// "float32", "float16", "int8": what --kv-cache-dtype takes and logs print.
std::string_view kv_dtype_name(KvDtype dtype);
// The name or an alias (f32, fp32, f16, fp16, half); throws nibble::Error naming the choices.
KvDtype parse_kv_dtype(std::string_view name);
// Bytes of one cached element, not counting int8's per-head scales.
int kv_element_bytes(KvDtype dtype);

class PagedKvCache {
 public:
  // `num_blocks` blocks of `block_size` positions for every layer.
  PagedKvCache(const ModelConfig& config, std::int32_t num_blocks, std::int32_t block_size,
               KvDtype dtype = KvDtype::Float32);

  std::int32_t num_blocks() const { return num_blocks_; }
  std::int32_t block_size() const { return block_size_; }
  KvDtype dtype() const { return dtype_; }
  std::uint64_t bytes() const;
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
  // Element offset of a row (layer, pool row); scale offsets are the same times kv_heads / kv_dim.
  std::size_t offset(std::int64_t layer_index, std::int64_t row) const {
    return static_cast<std::size_t>((layer_index * num_blocks_ * block_size_ + row) * kv_dim_);
  }
  std::size_t scale_offset(std::int64_t layer_index, std::int64_t row) const {
    return static_cast<std::size_t>((layer_index * num_blocks_ * block_size_ + row) * kv_heads_);
  }
  void check_block(std::int32_t block) const;
  void quantize_row(const float* row, std::int8_t* codes, float* scales) const;

  std::int64_t layers_;
  std::int64_t kv_dim_;
  std::int64_t kv_heads_;
  std::int64_t head_dim_;
  std::int32_t num_blocks_;
  std::int32_t block_size_;
  KvDtype dtype_;
  // Only the dtype's arrays are allocated; the others stay empty. On huge pages:
  // attention walks a few rows in each of thousands of pages every step.
  template <typename T>
  using Pool = std::vector<T, LargeAllocator<T>>;
  Pool<float> keys_, values_;                        // Float32
  Pool<std::uint16_t> keys_f16_, values_f16_;        // Float16
  Pool<std::int8_t> key_codes_, value_codes_;        // Int8
  Pool<float> key_scales_, value_scales_;
};

}  // namespace nibble::engine
