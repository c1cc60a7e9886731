// gpu_test_util.h: shared by the CUDA cross-checks tests/gpu_<op>.cpp (label `gpu`), which skip
// where no device exists.
#pragma once
#include <gtest/gtest.h>

#include "kernels/cuda/device.h"
#include "tests/op_test_util.h"

#define SKIP_WITHOUT_GPU() \
  if (frugal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"
