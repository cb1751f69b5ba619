#pragma once
// Picks the communicator of this process's job (core/comm.h's launch_environment()): the
// 1-rank local one for a process started alone; MPI for CPU ranks launched by mpirun or srun;
// NCCL for GPU ranks (bootstrapped over MPI under mpirun, over TCP at MASTER_ADDR:MASTER_PORT
// otherwise). A GPU rank's backend should be on device local_rank (one GPU per rank).
#include <memory>

#include "core/backend.h"
#include "core/comm.h"

namespace upcycle {

// The collective timeout (seconds) from UPCYCLE_COLLECTIVE_TIMEOUT, 600 by default: how long
// a rank waits in one collective for the others before ending the job.
double collective_timeout_seconds();

// backend: the rank's backend, whose memory the collectives move.
std::unique_ptr<Communicator> make_communicator(Backend& backend, const LaunchEnvironment& launch);

}  // namespace upcycle
