#pragma once
// The paged KV cache's storage: for every layer, `num_blocks` blocks of
// `block_size` positions, each position holding the keys and values of every KV
// head in one of the KvFormats. A backend allocates it in its own memory
// (Backend::allocate_kv) and writes it (Backend::kv_store, kv_copy_block); the
// attention kernels read it through KvLayerView. Which blocks a sequence owns is
// the scheduler's bookkeeping, not this.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "kernels/kv_view.h"
#include "kernels/buffer.h"

namespace nibble::kernels {

struct KvPoolShape {
  std::int64_t layers = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int32_t num_blocks = 0;
  std::int32_t block_size = 0;
  KvFormat format = KvFormat::Float32;
  // The cache stores one row per position and the values are a prefix of it (MLA:
  // the latent [c_kv ; k_rope], values c_kv): no values array, values read from
  // the keys. kv_store then takes no values.
  bool values_in_keys = false;

  std::int64_t kv_dim() const { return kv_heads * head_dim; }
  std::int64_t rows_per_layer() const { return std::int64_t{num_blocks} * block_size; }
};

// Bytes of one cached element, not counting int8's per-head scales.
int kv_element_bytes(KvFormat format);
// Bytes one position takes over all `layers` (keys and values, int8's scales
// included; keys alone when the values are read from them): the one formula the
// planner, the cache and `nibble inspect` share.
std::uint64_t kv_bytes_per_token(std::int64_t layers, std::int64_t kv_heads, std::int64_t head_dim, KvFormat format,
                                 bool values_in_keys = false);

// Checks a kv_store / kv_copy_block call against the pool before any backend
// writes: positions inside the table, layer and block ids inside the pool. Throws
// nibble::Error naming what is out of range.
void check_kv_store(const KvPoolShape& shape, std::int64_t layer, std::span<const std::int32_t> block_table,
                    std::int64_t start, std::int64_t rows);
void check_kv_copy(const KvPoolShape& shape, std::int32_t from, std::int32_t to, std::int32_t tokens);

struct KvPool;

// Copy-on-write as byte ranges: for every array the pool's format allocated and
// every layer, `copy(dst, src, bytes)` once with the first `tokens` rows of block
// `from` and of block `to`. Backends supply the copy (memcpy, cudaMemcpyAsync).
void for_each_block_copy(const KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens,
                         const std::function<void(std::byte* dst, const std::byte* src, std::size_t bytes)>& copy);

// Element arrays [layer][pool row][kv_dim] of the format (the others stay empty;
// values too when values_in_keys), and for int8 the scales [layer][pool row][kv_head].
struct KvPool {
  KvPoolShape shape;
  Buffer keys;
  Buffer values;
  Buffer key_scales;    // Int8 only
  Buffer value_scales;  // Int8 only

  std::uint64_t bytes() const {
    return keys.bytes() + values.bytes() + key_scales.bytes() + value_scales.bytes();
  }
  // Layer `layer` as attention reads it, positions mapped through `block_table`.
  KvLayerView layer(std::int64_t layer, std::span<const std::int32_t> block_table) const;
};

}  // namespace nibble::kernels
