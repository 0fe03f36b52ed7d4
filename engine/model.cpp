#include "engine/model.h"

#include "common/error.h"

namespace nibble::engine {
namespace {

std::int32_t blocks_for(std::int64_t capacity, std::int32_t block_size) {
  if (capacity <= 0) fail("a sequence cache needs room for at least one position (got {})", capacity);
  return static_cast<std::int32_t>((capacity + block_size - 1) / block_size);
}

}  // namespace

SequenceCache::SequenceCache(const Model& model, std::int64_t capacity, std::int32_t block_size)
    : capacity_(capacity), paged_(model.make_kv_cache(blocks_for(capacity, block_size), block_size)) {
  block_table_.resize(static_cast<std::size_t>(paged_.num_blocks()));
  for (std::size_t i = 0; i < block_table_.size(); ++i) block_table_[i] = static_cast<std::int32_t>(i);
}

void Model::forward(std::span<const TokenId> tokens, std::int64_t start, SequenceCache& cache, Logits mode,
                    std::span<float> logits) {
  const auto rows = static_cast<std::int64_t>(tokens.size());
  if (rows == 0) fail("forward: no tokens");
  if (start + rows > cache.capacity()) {
    fail("sequence of {} tokens exceeds the KV cache capacity of {}", start + rows, cache.capacity());
  }
  const BatchEntry entry{tokens, start, cache.block_table(), mode};
  forward_batch(std::span(&entry, 1), cache.paged(), logits);
}

}  // namespace nibble::engine
