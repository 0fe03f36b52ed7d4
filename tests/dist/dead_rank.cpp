// A rank that dies in the middle of a run (rank 1 exits abruptly, as a killed
// process would) while rank 0 waits in a collective: the launcher must end the
// whole group with an error instead of leaving rank 0 waiting. Run by ctest
// under mpirun with a time limit; the test passes when mpirun exits non-zero
// in time (WILL_FAIL) and prints rank 0's line below never.
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "dist/mpi_communicator.h"

int main() {
  using namespace nibble::dist;
  auto world = make_mpi_world(std::chrono::seconds(20));
  world->barrier();
  if (world->rank() == 1) std::raise(SIGKILL);
  try {
    world->barrier();
    std::puts("dead_rank: the barrier completed without rank 1");
    return 0;  // the failure this test exists to catch
  } catch (const CollectiveTimeout& e) {
    std::fprintf(stderr, "dead_rank: %s\n", e.what());
    world->abort_group(3);
  }
}
