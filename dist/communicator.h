#pragma once
// Collectives between the ranks of a sharded model (tensor and pipeline
// parallel): the one interface the engine's parallel blocks and the serving loop
// use, whatever engine moves the bytes. Implementations wrap an existing
// collective library, never hand-rolled sockets: Open MPI for CPU ranks
// (mpi_communicator.h), NCCL for GPU ranks (nccl_communicator.h), and a
// one-rank identity for unsharded runs. docs/parallel.md says why these.
//
// Buffers live where the communicator's ranks compute: host memory for MPI,
// device memory for NCCL. Every rank of the group calls the same collectives in
// the same order with the same counts; a rank that does not (dead, hung, a bug)
// makes the others' call fail with CollectiveTimeout after the group's deadline
// instead of waiting forever.
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/dtype.h"
#include "common/error.h"

namespace nibble::dist {

enum class ReduceOp : std::uint8_t { Sum, Max };

// A collective did not complete within the group's deadline: a peer died, hung or
// called a different collective. The group is unusable afterwards; the caller
// reports it and calls abort_group().
class CollectiveTimeout : public Error {
 public:
  using Error::Error;
};

enum class Collective : std::uint8_t { AllReduce, AllGather, ReduceScatter, Broadcast, Send, Recv, Barrier };
inline constexpr std::size_t kCollectiveKinds = 7;
std::string_view collective_name(Collective collective);

// What a rank spent in collectives, per kind, since the communicator was made
// (metrics: per-rank collective time and bytes).
struct CollectiveStats {
  struct Counter {
    std::uint64_t calls = 0;
    std::uint64_t bytes = 0;  // this rank's payload (what it sends or contributes)
    double seconds = 0;       // wall time inside the call, waiting included
  };
  std::array<Counter, kCollectiveKinds> by_kind{};
  Counter& operator[](Collective c) { return by_kind[static_cast<std::size_t>(c)]; }
  const Counter& operator[](Collective c) const { return by_kind[static_cast<std::size_t>(c)]; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view engine() const = 0;  // "mpi", "nccl", "single"
  // True when the buffers every collective takes are device memory (NCCL's), false
  // for host memory (MPI's, the one-rank identity's).
  virtual bool device_memory() const { return false; }

  // In place: every rank ends with the element-wise reduction of all ranks' data.
  // All ranks get bit-identical results.
  virtual void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  // recv = rank 0's `count` elements, then rank 1's, ...; recv holds size() * count.
  virtual void all_gather(const void* send, void* recv, std::int64_t count, DType dtype) = 0;
  // send holds size() * count elements; rank r gets the reduction of every rank's
  // r-th slice of `count` elements.
  virtual void reduce_scatter(const void* send, void* recv, std::int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void broadcast(void* data, std::int64_t count, DType dtype, int root) = 0;
  virtual void send(const void* data, std::int64_t count, DType dtype, int peer) = 0;
  virtual void recv(void* data, std::int64_t count, DType dtype, int peer) = 0;
  virtual void barrier() = 0;

  // A sub-group of this one: ranks passing the same `color` form a group, ordered
  // by `key` (the tensor-parallel group of a pipeline stage, the stage group of a
  // tensor rank). Collective: every rank of this group calls it.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Ends every rank of the group (after a CollectiveTimeout, or when this rank
  // cannot go on): nothing can be salvaged from a group a collective hung in.
  [[noreturn]] virtual void abort_group(int exit_code) = 0;

  const CollectiveStats& stats() const { return stats_; }

 protected:
  CollectiveStats stats_;
};

// Host bytes of unknown length from `root` to every rank (a serialized step plan):
// the length first, then the bytes. Host-memory communicators only.
void broadcast_bytes(Communicator& communicator, std::string& bytes, int root);

// The group's view of one process: rank 0 of 1, every collective the identity.
// What an unsharded run uses, so code paths need no "if sharded".
std::unique_ptr<Communicator> make_single_rank_communicator();

// Checks shared by the implementations: count >= 0, a peer/root inside the group,
// a dtype the operation can reduce. Throw nibble::Error naming the call.
void check_count(std::string_view call, std::int64_t count);
void check_rank(std::string_view call, std::string_view what, int rank, int size);

}  // namespace nibble::dist
