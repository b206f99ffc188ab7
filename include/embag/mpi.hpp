// embag's sharded calls (embag/sharded.hpp) over MPI: the communicator they need, on an MPI
// communicator the caller has set up (MPI_Init before, MPI_Finalize after the last call). Built
// and installed with the library libembag_mpi when meson finds MPI (option mpi).
#pragma once

#include <mpi.h>

#include <memory>

#include "embag/sharded.hpp"

namespace embag::sharded {

// The sharded calls' collectives as MPI collectives on `comm` (not duplicated: do not run other
// collectives on it concurrently with a sharded call). all_to_all is MPI_Alltoall of the byte
// counts then MPI_Alltoallv of the bytes; all_to_all_known the MPI_Alltoallv alone, into the
// caller's buffer. Each block, and each rank's total, must stay below 2^31 bytes (MPI's int
// counts); beyond, every rank throws errc::size_overflow (and errc::size_mismatch when a rank's
// buffer would not hold what all_to_all_known delivers).
std::unique_ptr<communicator> mpi_communicator(MPI_Comm comm);

}  // namespace embag::sharded
