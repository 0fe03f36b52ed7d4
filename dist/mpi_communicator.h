#pragma once
// Collectives between CPU ranks over Open MPI (Debian's libopenmpi-dev): the
// ranks of `mpirun -np N nibble ...` on one machine or many. Every collective
// is started non-blocking and waited for against the group's deadline, so a rank
// that died or hung turns into a CollectiveTimeout on the others, never a hang.
#include <chrono>
#include <memory>

#include "dist/communicator.h"

namespace nibble::dist {

// True when this process was started by an MPI launcher (mpirun/mpiexec, or a
// PMIx server such as a LeaderWorkerSet launcher's), so MPI_COMM_WORLD holds the
// other ranks.
bool launched_by_mpi();

// MPI_COMM_WORLD. Initializes MPI on the first call (threads: one at a time, from
// any thread) and finalizes it at exit. `deadline` bounds every collective.
std::unique_ptr<Communicator> make_mpi_world(std::chrono::milliseconds deadline = std::chrono::seconds(30));

}  // namespace nibble::dist
