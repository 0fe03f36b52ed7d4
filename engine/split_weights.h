#pragma once
// What one rank of a split model maps: the stored bytes of its share
// (loader/tensor_shard.h) of its pipeline stage's tensors (engine/pipeline_stage.h),
// counted from the weight source's listing as serve splits it. `nibble inspect`
// and `nibble plan` size ranks with it, so their numbers are serve's.
#include <cstdint>
#include <functional>

#include "loader/model_source.h"

namespace nibble::engine {

struct SplitSizes {
  int tensor = 1;
  int expert = 1;
  int pipeline = 1;
  int ranks() const { return tensor * expert * pipeline; }
};

// Rank `rank` of the split: group rank rank % (tensor x expert) of stage
// rank / (tensor x expert), as cli/parallel_group.h lays the ranks out. Throws
// nibble::Error for a split the model cannot take (with the rule).
std::uint64_t rank_weight_bytes(ModelSource whole, const SplitSizes& sizes, int rank);

// The most any rank of the split maps; `open` gives the whole model afresh for each rank.
std::uint64_t max_rank_weight_bytes(const std::function<ModelSource()>& open, const SplitSizes& sizes);

}  // namespace nibble::engine
