#pragma once
// The KV cache of every running sequence: a pool of fixed-size blocks per layer
// in the backend's memory (kernels::KvPool), written and copied through the
// backend's ops. Which blocks a sequence owns is the scheduler's bookkeeping
// (scheduler/block_manager.h); this holds the numbers and turns (block table,
// position) into storage.
#include <cstdint>
#include <span>
#include <string_view>

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
// Bytes one position of `config`'s model takes in a cache of `dtype`, all layers,
// keys and values (and int8's scales; MLA: the latent row alone): what the planner,
// serve's sizing and `nibble inspect` count.
std::uint64_t kv_bytes_per_token(const ModelConfig& config, KvDtype dtype);

class PagedKvCache {
 public:
  // `num_blocks` blocks of `block_size` positions for every layer, allocated by
  // `backend`, which must outlive the cache.
  PagedKvCache(kernels::Backend& backend, const ModelConfig& config, std::int32_t num_blocks,
               std::int32_t block_size, KvDtype dtype = KvDtype::Float32);

  std::int32_t num_blocks() const { return pool_.shape.num_blocks; }
  std::int32_t block_size() const { return pool_.shape.block_size; }
  KvDtype dtype() const { return pool_.shape.format; }
  std::uint64_t bytes() const { return pool_.bytes(); }
  // Bytes one position takes over all layers (keys and values).
  std::uint64_t bytes_per_token() const;

  // Stores rows [0, rows) of keys/values [rows, kv_dim] (backend memory) at
  // positions start.. of the sequence whose blocks are `block_table`.
  void store(std::int64_t layer_index, std::span<const std::int32_t> block_table, std::int64_t start,
             std::int64_t rows, const float* keys, const float* values) {
    backend_.kv_store(pool_, layer_index, block_table, start, rows, keys, values);
  }
  kernels::KvLayerView layer(std::int64_t layer_index, std::span<const std::int32_t> block_table) const {
    return pool_.layer(layer_index, block_table);
  }
  // Copy-on-write: the first `tokens` positions of block `from` into block `to`, every layer.
  void copy_block(std::int32_t from, std::int32_t to, std::int32_t tokens) {
    backend_.kv_copy_block(pool_, from, to, tokens);
  }

 private:
  kernels::Backend& backend_;
  kernels::KvPool pool_;
};

}  // namespace nibble::engine
