#pragma once
// Collectives between GPU ranks over NCCL (from the installed CUDA toolkit),
// built only with the CUDA backend. Buffers are device memory; every call is
// enqueued on the CUDA backend's stream, ordered with the kernels around it, and
// returns without waiting. barrier() waits (stream included) against the
// group's deadline, watching NCCL's asynchronous errors: a peer that died or hung
// becomes a CollectiveTimeout there, and the communicator is aborted.
#include <chrono>
#include <memory>

#include "dist/communicator.h"

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace nibble::dist {

// One NCCL rank per process: rank and size are `bootstrap`'s (a host
// communicator, e.g. make_mpi_world(), over which rank 0's NCCL unique id is
// broadcast). `device` is the CUDA device this rank drives, `stream` the CUDA
// backend's stream.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, CUstream_st* stream,
                                                     std::chrono::milliseconds deadline = std::chrono::seconds(30));

}  // namespace nibble::dist
