#pragma once
// `--tensor-parallel-size T --expert-parallel-size E --pipeline-parallel-size P`:
// this process is one of the T x E x P ranks `mpirun -np T*E*P nibble ...`
// started. A stage's T x E ranks are neighbours and form its group (which keeps
// the chattier per-layer collectives within a node when ranks fill nodes in
// order): rank r is group rank r % (T E) of pipeline stage r / (T E), and group
// rank g is tensor rank g % T of expert group g / T. Joining checks the launch and that every rank runs the same build,
// model and settings before anything is loaded; then each rank opens its share
// of the model: its heads and MLP slice (loader/tensor_shard.h), its layers
// (engine/pipeline_stage.h). docs/parallel.md.
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "cli/forwarding_model.h"
#include "dist/communicator.h"
#include "engine/model.h"
#include "kernels/backend.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"

namespace nibble::cli {

struct ParallelSizes {
  int tensor = 1;
  int pipeline = 1;
  int micro_batches = 1;  // pipeline micro-batches per step; 0: as many as stages
  int expert = 1;         // expert groups per stage, each holding num_experts / expert routed experts
  int stage_ranks() const { return tensor * expert; }
  int ranks() const { return stage_ranks() * pipeline; }
};

struct ParallelGroup {
  ParallelSizes sizes;
  // Every rank: what ends the job when a rank fails.
  std::unique_ptr<dist::Communicator> world;
  // This stage's T x E ranks (null when that is one): the forward's sums (after
  // attention, and after the MLP or the experts, whose partial outputs every rank
  // adds its share to) and logit gathers. A peer that died or hung is found within
  // the deadline.
  std::unique_ptr<dist::Communicator> tensor;
  // This tensor rank's stages in order (null without pipeline parallelism): the
  // residual stream from stage to stage, the logits back to stage 0.
  std::unique_ptr<dist::Communicator> pipeline;
  // Rank 0's messages to the others (the KV-cache size, each step's plan): the
  // others wait for the next plan as long as rank 0 is idle.
  std::unique_ptr<dist::Communicator> plans;

  // What this rank's forward spent in collectives (tensor and pipeline groups together).
  dist::CollectiveStats forward_stats() const;

  int rank() const { return world->rank(); }
  int size() const { return world->size(); }
  // This rank's place in its stage's group (the shard layout's rank).
  int tensor_rank() const { return rank() % sizes.stage_ranks(); }
  int stage() const { return rank() / sizes.stage_ranks(); }
  bool leader() const { return rank() == 0; }
};

// The device this rank runs on: `device` as given, except that a bare "cuda" on
// a rank of a split model becomes cuda:<the rank's local index on its machine,
// from the launcher>, so a machine's ranks drive one GPU each. "cuda:N" names
// the GPU itself and wins.
std::string rank_device(const std::string& device, ParallelSizes sizes);

// Nothing when every size is 1. Otherwise the MPI world, which must have exactly
// tensor x expert x pipeline ranks, and `identity` (what must agree across ranks:
// version, model, flags) compared: any difference is refused on every rank with
// both values. `collective_timeout` bounds every collective of the forward.
// The tensor and pipeline groups move `backend`'s memory: MPI for CPU ranks,
// NCCL on the backend's stream for GPU ranks (its unique id sent over MPI);
// the plans and the world stay on MPI.
std::optional<ParallelGroup> join_parallel_group(
    ParallelSizes sizes, const std::string& identity, kernels::Backend& backend,
    std::chrono::milliseconds collective_timeout = std::chrono::seconds(30));

// Rank 0's model when the model is split. A collective that times out (a peer
// died or hung) fails the step, so its requests get the error, and then ends
// the whole group shortly after: no later step could succeed.
class GroupGuardedModel final : public ForwardingModel {
 public:
  GroupGuardedModel(engine::Model& inner, ParallelGroup& group) : ForwardingModel(inner), group_(group) {}

  void forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                     std::span<float> logits) override;

 private:
  ParallelGroup& group_;
};

// This rank's share of `source` and the model options that run it.
struct ShardedModel {
  ModelSource source;
  engine::ModelOptions options;
};
ShardedModel shard_for(ModelSource source, ParallelGroup& group, engine::ModelOptions options = {});

// Rank 0 tells the others a number (the KV cache's blocks) it decided.
std::int64_t share_from_leader(ParallelGroup& group, std::int64_t value);

}  // namespace nibble::cli
