#pragma once
// Collectives between CPU ranks over Open MPI (Debian's libopenmpi-dev): the
// ranks of `mpirun -np N nibble ...` on one machine or many. Every collective
// is started non-blocking and waited for against the group's deadline, so a rank
// that died or hung turns into a CollectiveTimeout on the others, never a hang.
#include <chrono>
#include <memory>
#include <optional>

#include "dist/communicator.h"

namespace nibble::dist {

// True when this process was started by an MPI launcher (mpirun/mpiexec, or a
// PMIx server such as a LeaderWorkerSet launcher's), so MPI_COMM_WORLD holds the
// other ranks.
bool launched_by_mpi();

// This process's index among the ranks the launcher started on its machine
// (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID, Slurm's
// SLURM_LOCALID): which of the machine's GPUs a rank drives. Nothing when no
// launcher said.
std::optional<int> launcher_local_rank();

// MPI_COMM_WORLD. Initializes MPI on the first call (threads: one at a time, from
// any thread) and finalizes it at exit. `deadline` bounds every collective.
std::unique_ptr<Communicator> make_mpi_world(std::chrono::milliseconds deadline = std::chrono::seconds(30));

}  // namespace nibble::dist
