#include "engine/paged_kv_cache.h"

#include "common/error.h"

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

// MLA caches one latent row per token and layer, which attention reads as a
// single key head and takes its values from (KvPoolShape::values_in_keys).
kernels::KvPoolShape pool_shape(const ModelConfig& config, std::int32_t num_blocks, std::int32_t block_size,
                                KvDtype dtype) {
  if (config.mla) return {config.num_layers, 1, config.mla->latent_width(), num_blocks, block_size, dtype, true};
  return {config.num_layers, config.num_kv_heads, config.head_dim, num_blocks, block_size, dtype};
}

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

std::uint64_t kv_bytes_per_token(const ModelConfig& config, KvDtype dtype) {
  const kernels::KvPoolShape shape = pool_shape(config, 1, 1, dtype);
  return kernels::kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim, dtype, shape.values_in_keys);
}

PagedKvCache::PagedKvCache(kernels::Backend& backend, const ModelConfig& config, std::int32_t num_blocks,
                           std::int32_t block_size, KvDtype dtype)
    : backend_(backend), pool_(backend.allocate_kv(pool_shape(config, num_blocks, block_size, dtype))) {}

std::uint64_t PagedKvCache::bytes_per_token() const {
  const auto& shape = pool_.shape;
  return kernels::kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim, shape.format, shape.values_in_keys);
}

}  // namespace nibble::engine
