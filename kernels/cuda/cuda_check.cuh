// cuda_check.cuh: one error-check family for CUDA runtime, cuBLAS and NCCL calls. Each macro
// throws frugal::Error naming the statement, file:line and the library's own message.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "src/common.h"

#define CUDA_CHECK(stmt)                                                                      \
  do {                                                                                        \
    cudaError_t err_ = (stmt);                                                                \
    if (err_ != cudaSuccess)                                                                  \
      throw ::frugal::Error(::frugal::str(__FILE__, ":", __LINE__, ": CUDA error in ", #stmt, \
                                          ": ", cudaGetErrorString(err_)));                   \
  } while (0)

#define CUBLAS_CHECK(stmt)                                                                      \
  do {                                                                                          \
    cublasStatus_t st_ = (stmt);                                                                \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
      throw ::frugal::Error(::frugal::str(__FILE__, ":", __LINE__, ": cuBLAS error in ", #stmt, \
                                          ": ", cublasGetStatusString(st_)));                   \
  } while (0)

#define NCCL_CHECK(stmt)                                                                      \
  do {                                                                                        \
    ncclResult_t r_ = (stmt);                                                                 \
    if (r_ != ncclSuccess)                                                                    \
      throw ::frugal::Error(::frugal::str(__FILE__, ":", __LINE__, ": NCCL error in ", #stmt, \
                                          ": ", ncclGetErrorString(r_)));                     \
  } while (0)
