// common.cpp: out-of-line pieces of common.h.
#include "src/common.h"

namespace frugal {

void buf_resize_view_error() {
  fail("internal: resize of a Buf that views a gathered FSDP unit (views have a fixed size)");
}

// ---- the buffer allocator hook ----------------------------------------------------------------

namespace {
BufferAllocFn g_alloc = aligned_host_alloc;
BufferFreeFn g_free = aligned_host_free;
}  // namespace

void* aligned_host_alloc(std::size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  if (!p) throw std::bad_alloc();
  return p;
}

void aligned_host_free(void* p) { std::free(p); }

void* buffer_alloc(std::size_t bytes) { return g_alloc(bytes); }
void buffer_free(void* p) { g_free(p); }

void set_buffer_allocator(BufferAllocFn alloc, BufferFreeFn free) {
  g_alloc = alloc ? alloc : aligned_host_alloc;
  g_free = free ? free : aligned_host_free;
}

}  // namespace frugal
