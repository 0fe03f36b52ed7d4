#pragma once
// `--tensor-parallel-size N`: this process is one of the N ranks `mpirun -np N
// nibble ...` started. Joining checks the launch and that every rank runs the
// same build, model and settings before anything is loaded; then each rank
// opens its share of the model (loader/tensor_shard.h). docs/parallel.md.
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "cli/forwarding_model.h"
#include "dist/communicator.h"
#include "engine/model.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"

namespace nibble::cli {

struct TensorParallelGroup {
  // The forward's sums and logit gathers: a peer that died or hung is found
  // within the deadline.
  std::unique_ptr<dist::Communicator> tensor;
  // Rank 0's messages to the others (the KV-cache size, each step's plan): the
  // others wait for the next plan as long as rank 0 is idle.
  std::unique_ptr<dist::Communicator> plans;

  int rank() const { return tensor->rank(); }
  int size() const { return tensor->size(); }
  bool leader() const { return rank() == 0; }
};

// Nothing for size 1. Otherwise the MPI world, which must have exactly `size`
// ranks, and `identity` (what must agree across ranks: version, model, flags)
// compared: any difference is refused on every rank with both values.
// `collective_timeout` bounds every collective of the forward.
std::optional<TensorParallelGroup> join_tensor_parallel_group(
    int size, const std::string& identity, std::chrono::milliseconds collective_timeout = std::chrono::seconds(30));

// Rank 0's model under tensor parallelism. A collective that times out (a peer
// died or hung) fails the step, so its requests get the error, and then ends
// the whole group shortly after: no later step could succeed.
class GroupGuardedModel final : public ForwardingModel {
 public:
  GroupGuardedModel(engine::Model& inner, TensorParallelGroup& group) : ForwardingModel(inner), group_(group) {}

  void forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                     std::span<float> logits) override;

 private:
  TensorParallelGroup& group_;
};

// This rank's share of `source` and the model options that run it.
struct ShardedModel {
  ModelSource source;
  engine::ModelOptions options;
};
ShardedModel shard_for(ModelSource source, TensorParallelGroup& group, engine::ModelOptions options = {});

// Rank 0 tells the others a number (the KV cache's blocks) it decided.
std::int64_t share_from_leader(TensorParallelGroup& group, std::int64_t value);

}  // namespace nibble::cli
