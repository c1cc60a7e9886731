// mpi_check.h: MPI_CHECK(call) throws frugal::Error naming the call, file:line, this process's world
// rank and MPI's own message (MPI_Error_string). Communicators set MPI_ERRORS_RETURN so failures
// come back as codes instead of aborting inside the library; MPI-IO (parallel HDF5) calls use the
// same macro.
#pragma once
#include <mpi.h>

#include <string>

#include "src/common.h"

namespace frugal {

// "MPI_ERR_TRUNCATE: message truncated" style text for an MPI error code.
inline std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return str("MPI error code ", code);
  return std::string(buf, len);
}

// World rank for messages; -1 when MPI is not (or no longer) initialized.
inline int mpi_check_rank() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin) return -1;
  int r = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

}  // namespace frugal

#define MPI_CHECK(call)                                                                              \
  do {                                                                                               \
    int mpi_rc_ = (call);                                                                            \
    if (mpi_rc_ != MPI_SUCCESS)                                                                      \
      throw ::frugal::Error(::frugal::str(__FILE__, ":", __LINE__, ": rank ", ::frugal::mpi_check_rank(), \
                                          ": MPI error in ", #call, ": ",                            \
                                          ::frugal::mpi_error_string(mpi_rc_)));                     \
  } while (0)
