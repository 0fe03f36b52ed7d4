#include "engine/split_weights.h"

#include <algorithm>
#include <utility>

#include "engine/pipeline_stage.h"
#include "loader/tensor_shard.h"

namespace nibble::engine {

std::uint64_t rank_weight_bytes(ModelSource whole, const SplitSizes& sizes, int rank) {
  const int group = sizes.tensor * sizes.expert;
  const PipelineStage stage = plan_pipeline_stage(whole.config.num_layers, rank / group, sizes.pipeline, 1);
  const bool tied = whole.config.tie_word_embeddings;
  ModelSource share = std::move(whole);
  if (group > 1) {
    const TensorShardLayout layout = plan_tensor_shard(share.config, rank % group, sizes.tensor, sizes.expert);
    share = shard_model_source(std::move(share), layout);
  }
  std::uint64_t bytes = 0;
  for (const auto& info : share.weights->list()) {
    if (stage_keeps(stage, info.name, tied)) bytes += info.stored_bytes;
  }
  return bytes;
}

std::uint64_t max_rank_weight_bytes(const std::function<ModelSource()>& open, const SplitSizes& sizes) {
  std::uint64_t most = 0;
  for (int rank = 0; rank < sizes.ranks(); ++rank) most = std::max(most, rank_weight_bytes(open(), sizes, rank));
  return most;
}

}  // namespace nibble::engine
