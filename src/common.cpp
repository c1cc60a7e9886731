// common.cpp: out-of-line pieces of common.h.
#include "src/common.h"

namespace frugal {

void buf_resize_view_error() {
  fail("internal: resize of a Buf that views a gathered FSDP unit (views have a fixed size)");
}

}  // namespace frugal
