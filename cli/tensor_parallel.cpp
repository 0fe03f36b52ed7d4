#include "cli/tensor_parallel.h"

#include <spdlog/spdlog.h>

#include <thread>

#include "common/error.h"

#ifdef NIBBLE_WITH_MPI
#include "dist/mpi_communicator.h"
#endif

namespace nibble::cli {

std::optional<TensorParallelGroup> join_tensor_parallel_group(int size, const std::string& identity,
                                                              std::chrono::milliseconds collective_timeout) {
  if (size < 1) fail("--tensor-parallel-size must be at least 1, got {}", size);
  if (size == 1) return std::nullopt;
#ifndef NIBBLE_WITH_MPI
  (void)identity;
  (void)collective_timeout;
  fail("--tensor-parallel-size {} needs a build with Open MPI (libopenmpi-dev; cmake -DNIBBLE_MPI=ON)", size);
#else
  if (!dist::launched_by_mpi()) {
    fail("--tensor-parallel-size {} runs one process per rank: start it as `mpirun -np {} nibble ...`", size, size);
  }
  TensorParallelGroup group;
  group.tensor = dist::make_mpi_world(collective_timeout);
  // A year: as long as rank 0 is idle, the others wait for its next plan. A dead
  // rank 0 ends the job through mpirun, a hung one fails its own liveness probe.
  group.plans = dist::make_mpi_world(std::chrono::hours(24 * 365));
  if (group.size() != size) {
    fail("--tensor-parallel-size {} but mpirun started {} ranks; they must be equal", size, group.size());
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
  spdlog::info("tensor_parallel_joined rank={} size={} engine={}", group.rank(), group.size(), group.tensor->engine());
  return group;
#endif
}

ShardedModel shard_for(ModelSource source, TensorParallelGroup& group, engine::ModelOptions options) {
  const TensorShardLayout layout = plan_tensor_shard(source.config, group.rank(), group.size());
  options.tensor_shard = layout;
  options.tensor_group = group.tensor.get();
  spdlog::info("tensor_parallel_shard rank={} q_heads={}+{} kv_heads={}+{} intermediate={}+{} vocab={}+{}",
               layout.rank, layout.first_q_head, layout.q_heads, layout.first_kv_head, layout.kv_heads,
               layout.first_intermediate, layout.intermediate, layout.first_vocab, layout.vocab);
  return {shard_model_source(std::move(source), layout), options};
}

void GroupGuardedModel::forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                                      std::span<float> logits) {
  try {
    inner_.forward_batch(batch, cache, logits);
  } catch (const dist::CollectiveTimeout& e) {
    spdlog::error("tensor_parallel_group_failed rank={} size={} error=\"{}\" action=ending_every_rank", group_.rank(),
                  group_.size(), e.what());
    // The step's requests get this error (the scheduler fails the step); the
    // pause lets their error events reach the clients before the group ends.
    dist::Communicator* tensor = group_.tensor.get();
    std::thread([tensor] {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      spdlog::default_logger()->flush();
      tensor->abort_group(1);
    }).detach();
    throw;
  }
}

std::int64_t share_from_leader(TensorParallelGroup& group, std::int64_t value) {
  group.plans->broadcast(&value, 1, DType::I64, 0);
  return value;
}

}  // namespace nibble::cli
