#include "cli/parallel_group.h"

#include <spdlog/spdlog.h>

#include <thread>

#include "common/error.h"
#include "engine/pipeline_stage.h"
#include "kernels/backend_factory.h"

#ifdef NIBBLE_WITH_MPI
#include "dist/mpi_communicator.h"
#endif
#ifdef NIBBLE_WITH_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace nibble::cli {

#ifdef NIBBLE_WITH_MPI
namespace {

// `host_group` as a group that moves `backend`'s memory: itself for CPU ranks,
// for GPU ranks an NCCL communicator over the same ranks on the backend's
// stream, bootstrapped over `host_group` (which is not needed afterwards).
std::unique_ptr<dist::Communicator> on_backend(std::unique_ptr<dist::Communicator> host_group,
                                               kernels::Backend& backend, std::chrono::milliseconds deadline) {
  if (backend.host_visible_memory()) return host_group;
#ifdef NIBBLE_WITH_NCCL
  auto* stream = static_cast<CUstream_st*>(kernels::work_stream(backend));
  return dist::make_nccl_communicator(*host_group, backend.device().index, stream, deadline);
#else
  (void)deadline;
  fail("ranks on the {} backend need NCCL, which this build lacks (it comes with the CUDA backend)", backend.name());
#endif
}

}  // namespace
#endif

std::string rank_device(const std::string& device, ParallelSizes sizes) {
  if (device != "cuda" || sizes.ranks() == 1) return device;
#ifdef NIBBLE_WITH_MPI
  if (const auto local = dist::launcher_local_rank()) return fmt::format("cuda:{}", *local);
#endif
  return device;
}

std::optional<ParallelGroup> join_parallel_group(ParallelSizes sizes, const std::string& identity,
                                                 kernels::Backend& backend,
                                                 std::chrono::milliseconds collective_timeout) {
  if (sizes.tensor < 1) fail("--tensor-parallel-size must be at least 1, got {}", sizes.tensor);
  if (sizes.pipeline < 1) fail("--pipeline-parallel-size must be at least 1, got {}", sizes.pipeline);
  if (sizes.expert < 1) fail("--expert-parallel-size must be at least 1, got {}", sizes.expert);
  if (sizes.micro_batches < 0) fail("--pipeline-micro-batches must be at least 1, got {}", sizes.micro_batches);
  if (sizes.micro_batches == 0) sizes.micro_batches = sizes.pipeline;
  if (sizes.ranks() == 1) return std::nullopt;
  const int ranks = sizes.ranks();
#ifndef NIBBLE_WITH_MPI
  (void)identity;
  (void)backend;
  (void)collective_timeout;
  fail("a model split over {} ranks needs a build with Open MPI (libopenmpi-dev; cmake -DNIBBLE_MPI=ON)", ranks);
#else
  if (!dist::launched_by_mpi()) {
    fail("--tensor-parallel-size {} x --expert-parallel-size {} x --pipeline-parallel-size {} runs one process per "
         "rank: start it as `mpirun -np {} nibble ...`", sizes.tensor, sizes.expert, sizes.pipeline, ranks);
  }
  ParallelGroup group;
  group.sizes = sizes;
  group.world = dist::make_mpi_world(collective_timeout);
  // A year: as long as rank 0 is idle, the others wait for its next plan. A dead
  // rank 0 ends the job through mpirun, a hung one fails its own liveness probe.
  group.plans = dist::make_mpi_world(std::chrono::hours(24 * 365));
  if (group.size() != ranks) {
    fail("--tensor-parallel-size {} x --expert-parallel-size {} x --pipeline-parallel-size {} needs {} ranks but "
         "mpirun started {}; they must be equal", sizes.tensor, sizes.expert, sizes.pipeline, ranks, group.size());
  }
  // Every rank compares rank 0's identity with its own; all learn whether any differed.
  std::string leader = identity;
  dist::broadcast_bytes(*group.plans, leader, 0);
  std::int32_t differs = leader != identity ? 1 : 0;
  group.plans->all_reduce(&differs, 1, DType::I32, dist::ReduceOp::Max);
  if (differs != 0) {
    if (leader != identity) {
      fail("rank {} runs \"{}\" but rank 0 runs \"{}\": every rank needs the same nibble, model and settings",
           group.rank(), identity, leader);
    }
    fail("another rank runs a different nibble, model or settings than rank 0 (\"{}\"); see its error", identity);
  }
  // split() is collective over the world: every rank makes both, in this order.
  auto tensor = group.world->split(group.stage(), group.tensor_rank());
  auto pipeline = group.world->split(group.tensor_rank(), group.stage());
  // Every rank makes the tensor group's NCCL communicator before the pipeline
  // group's: each creation waits for the group's other ranks.
  if (sizes.stage_ranks() > 1) group.tensor = on_backend(std::move(tensor), backend, collective_timeout);
  if (sizes.pipeline > 1) group.pipeline = on_backend(std::move(pipeline), backend, collective_timeout);
  const dist::Communicator* forward = group.tensor ? group.tensor.get() : group.pipeline.get();
  spdlog::info("parallel_group_joined rank={} size={} tensor_rank={} expert_rank={} stage={} tensor={} expert={} "
               "pipeline={} engine={} device={}", group.rank(), group.size(), group.tensor_rank() % sizes.tensor,
               group.tensor_rank() / sizes.tensor, group.stage(), sizes.tensor, sizes.expert, sizes.pipeline,
               forward->engine(), backend.device().name());
  return group;
#endif
}

dist::CollectiveStats ParallelGroup::forward_stats() const {
  dist::CollectiveStats total;
  for (const auto* group : {tensor.get(), pipeline.get()}) {
    if (group == nullptr) continue;
    const dist::CollectiveStats stats = group->stats();
    for (std::size_t kind = 0; kind < dist::kCollectiveKinds; ++kind) {
      total.by_kind[kind].calls += stats.by_kind[kind].calls;
      total.by_kind[kind].bytes += stats.by_kind[kind].bytes;
      total.by_kind[kind].seconds += stats.by_kind[kind].seconds;
    }
  }
  return total;
}

ShardedModel shard_for(ModelSource source, ParallelGroup& group, engine::ModelOptions options) {
  if (group.sizes.pipeline > 1) {
    const engine::PipelineStage stage = engine::plan_pipeline_stage(source.config.num_layers, group.stage(),
                                                                    group.sizes.pipeline, group.sizes.micro_batches);
    options.pipeline_stage = stage;
    options.pipeline_group = group.pipeline.get();
    spdlog::info("pipeline_stage rank={} stage={} of={} layers={}..{} micro_batches={}", group.rank(), stage.stage,
                 stage.stages, stage.first_layer, stage.end_layer - 1, stage.micro_batches);
  }
  if (group.sizes.stage_ranks() == 1) return {std::move(source), options};
  const TensorShardLayout layout =
      plan_tensor_shard(source.config, group.tensor_rank(), group.sizes.tensor, group.sizes.expert);
  options.tensor_shard = layout;
  options.tensor_group = group.tensor.get();
  spdlog::info("tensor_parallel_shard rank={} q_heads={}+{} kv_heads={}+{} intermediate={}+{} vocab={}+{} "
               "experts={}+{} expert_intermediate={}+{}",
               group.rank(), layout.first_q_head, layout.q_heads, layout.first_kv_head, layout.kv_heads,
               layout.first_intermediate, layout.intermediate, layout.first_vocab, layout.vocab, layout.first_expert,
               layout.experts, layout.first_expert_intermediate, layout.expert_intermediate);
  return {shard_model_source(std::move(source), layout), options};
}

void GroupGuardedModel::forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                                      std::span<float> logits) {
  try {
    inner_.forward_batch(batch, cache, logits);
  } catch (const dist::CollectiveTimeout& e) {
    spdlog::error("parallel_group_failed rank={} size={} error=\"{}\" action=ending_every_rank", group_.rank(),
                  group_.size(), e.what());
    // The step's requests get this error (the scheduler fails the step); the
    // pause lets their error events reach the clients before the group ends.
    dist::Communicator* world = group_.world.get();
    std::thread([world] {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      spdlog::default_logger()->flush();
      world->abort_group(1);
    }).detach();
    throw;
  }
}

std::int64_t share_from_leader(ParallelGroup& group, std::int64_t value) {
  group.plans->broadcast(&value, 1, DType::I64, 0);
  return value;
}

}  // namespace nibble::cli
