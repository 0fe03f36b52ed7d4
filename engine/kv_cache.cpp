#include "engine/kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace nibble::engine {

KvCache::KvCache(const ModelConfig& config, std::int64_t capacity)
    : layers_(config.num_layers),
      kv_dim_(config.kv_dim()),
      capacity_(capacity),
      keys_(static_cast<std::size_t>(layers_ * capacity * kv_dim_)),
      values_(keys_.size()) {
  if (capacity <= 0) fail("KV cache capacity must be positive (got {})", capacity);
}

void KvCache::store(std::int64_t layer, std::int64_t start, std::int64_t rows, const float* keys, const float* values) {
  if (start < 0 || start + rows > capacity_) {
    fail("KV cache overflow: positions [{}, {}) exceed the capacity of {}", start, start + rows, capacity_);
  }
  const std::size_t offset = static_cast<std::size_t>((layer * capacity_ + start) * kv_dim_);
  const std::size_t count = static_cast<std::size_t>(rows * kv_dim_);
  std::copy_n(keys, count, keys_.begin() + static_cast<std::ptrdiff_t>(offset));
  std::copy_n(values, count, values_.begin() + static_cast<std::ptrdiff_t>(offset));
}

kernels::KvLayerView KvCache::layer(std::int64_t layer) const {
  const std::size_t offset = static_cast<std::size_t>(layer * capacity_ * kv_dim_);
  return kernels::KvLayerView::floats(keys_.data() + offset, values_.data() + offset, kv_dim_);
}

}  // namespace nibble::engine
