#include "kernels/kv_pool.h"

#include "common/error.h"
#include "kernels/backend.h"

namespace nibble::kernels {

int kv_element_bytes(KvFormat format) {
  switch (format) {
    case KvFormat::Float32:
      return 4;
    case KvFormat::Float16:
      return 2;
    case KvFormat::Int8:
      return 1;
  }
  return 4;
}

std::uint64_t kv_bytes_per_token(std::int64_t layers, std::int64_t kv_heads, std::int64_t head_dim, KvFormat format,
                                 bool values_in_keys) {
  const std::int64_t arrays = values_in_keys ? 1 : 2;
  const auto elements = static_cast<std::uint64_t>(arrays * layers * kv_heads * head_dim);
  const auto scales = format == KvFormat::Int8 ? static_cast<std::uint64_t>(arrays * layers * kv_heads) : 0;
  return elements * static_cast<std::uint64_t>(kv_element_bytes(format)) + scales * sizeof(float);
}

void check_kv_store(const KvPoolShape& shape, std::int64_t layer, std::span<const std::int32_t> block_table,
                    std::int64_t start, std::int64_t rows) {
  const auto capacity = static_cast<std::int64_t>(block_table.size()) * shape.block_size;
  if (start < 0 || rows < 0 || start + rows > capacity) {
    fail("KV positions [{}, {}) exceed the sequence's {} blocks", start, start + rows, block_table.size());
  }
  if (layer < 0 || layer >= shape.layers) fail("KV layer {} outside the pool's {}", layer, shape.layers);
  if (rows == 0) return;
  const auto first = static_cast<std::size_t>(start / shape.block_size);
  const auto last = static_cast<std::size_t>((start + rows - 1) / shape.block_size);
  for (std::size_t i = first; i <= last; ++i) {
    if (block_table[i] < 0 || block_table[i] >= shape.num_blocks) {
      fail("KV block {} outside the pool of {}", block_table[i], shape.num_blocks);
    }
  }
}

void check_kv_copy(const KvPoolShape& shape, std::int32_t from, std::int32_t to, std::int32_t tokens) {
  for (const std::int32_t block : {from, to}) {
    if (block < 0 || block >= shape.num_blocks) fail("KV block {} outside the pool of {}", block, shape.num_blocks);
  }
  if (tokens < 0 || tokens > shape.block_size) fail("copy of {} positions into a block of {}", tokens, shape.block_size);
}

void for_each_block_copy(const KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens,
                         const std::function<void(std::byte* dst, const std::byte* src, std::size_t bytes)>& copy) {
  const KvPoolShape& shape = pool.shape;
  check_kv_copy(shape, from, to, tokens);
  const auto arrays = [&](const Buffer& data, std::int64_t width) {
    if (data.empty()) return;
    const auto row_bytes = static_cast<std::size_t>(width) * dtype_size(data.dtype());
    for (std::int64_t l = 0; l < shape.layers; ++l) {
      const std::int64_t first = l * shape.rows_per_layer();
      auto* base = data.data<std::byte>();
      copy(base + static_cast<std::size_t>(first + std::int64_t{to} * shape.block_size) * row_bytes,
           base + static_cast<std::size_t>(first + std::int64_t{from} * shape.block_size) * row_bytes,
           static_cast<std::size_t>(tokens) * row_bytes);
    }
  };
  arrays(pool.keys, shape.kv_dim());
  arrays(pool.values, shape.kv_dim());
  arrays(pool.key_scales, shape.kv_heads);
  arrays(pool.value_scales, shape.kv_heads);
}

KvLayerView KvPool::layer(std::int64_t layer, std::span<const std::int32_t> block_table) const {
  const std::int64_t rows = layer * shape.rows_per_layer();
  const std::int64_t at = rows * shape.kv_dim();
  // Values read from the key rows: the attention kernels take the first value_dim
  // features of each, and an int8 row's one scale serves both.
  const Buffer& value_array = shape.values_in_keys ? keys : values;
  switch (shape.format) {
    case KvFormat::Float32:
      return KvLayerView::floats(keys.data<const float>() + at, value_array.data<const float>() + at, shape.kv_dim(),
                                 block_table, shape.block_size);
    case KvFormat::Float16:
      return KvLayerView::f16(keys.data<const std::uint16_t>() + at, value_array.data<const std::uint16_t>() + at,
                              shape.kv_dim(), block_table, shape.block_size);
    case KvFormat::Int8:
      break;
  }
  const std::int64_t scales_at = rows * shape.kv_heads;
  const Buffer& value_scale_array = shape.values_in_keys ? key_scales : value_scales;
  return KvLayerView::int8(keys.data<const std::int8_t>() + at, value_array.data<const std::int8_t>() + at,
                           key_scales.data<const float>() + scales_at, value_scale_array.data<const float>() + scales_at,
                           shape.kv_dim(), block_table, shape.block_size);
}

KvPool Backend::allocate_kv(const KvPoolShape& shape) {
  if (shape.num_blocks <= 0 || shape.block_size <= 0) {
    fail("a paged KV cache needs blocks (got {} blocks of {} positions)", shape.num_blocks, shape.block_size);
  }
  if (shape.layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0) {
    fail("a paged KV cache needs layers and heads (got {} layers of {} x {})", shape.layers, shape.kv_heads,
         shape.head_dim);
  }
  KvPool pool;
  pool.shape = shape;
  const std::vector<std::int64_t> elements{shape.layers, shape.rows_per_layer(), shape.kv_dim()};
  const DType dtype = shape.format == KvFormat::Float32   ? DType::F32
                      : shape.format == KvFormat::Float16 ? DType::F16
                                                          : DType::I8;
  pool.keys = allocate(dtype, elements);
  if (!shape.values_in_keys) pool.values = allocate(dtype, elements);
  if (shape.format == KvFormat::Int8) {
    const std::vector<std::int64_t> scales{shape.layers, shape.rows_per_layer(), shape.kv_heads};
    pool.key_scales = allocate(DType::F32, scales);
    if (!shape.values_in_keys) pool.value_scales = allocate(DType::F32, scales);
  }
  return pool;
}

}  // namespace nibble::kernels
