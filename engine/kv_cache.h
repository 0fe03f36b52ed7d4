#pragma once
// Keys and values of one sequence, contiguous per layer. The paged, shared cache of
// the batching scheduler replaces this behind the same KvLayerView reads.
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "loader/model_config.h"

namespace nibble::engine {

class KvCache {
 public:
  // Room for `capacity` positions of every layer, float32.
  KvCache(const ModelConfig& config, std::int64_t capacity);

  std::int64_t capacity() const { return capacity_; }
  std::uint64_t bytes() const { return (keys_.size() + values_.size()) * sizeof(float); }
  // Stores rows [0, rows) of keys/values [rows, kv_dim] at positions start.. of `layer`.
  void store(std::int64_t layer, std::int64_t start, std::int64_t rows, const float* keys, const float* values);
  kernels::KvLayerView layer(std::int64_t layer) const;

 private:
  std::int64_t layers_;
  std::int64_t kv_dim_;
  std::int64_t capacity_;
  std::vector<float> keys_;
  std::vector<float> values_;
};

}  // namespace nibble::engine
