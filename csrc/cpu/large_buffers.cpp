#include "large_buffers.h"

#include <cstdlib>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ttrl_fast {
namespace cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

size_t cache_limit_bytes() {
  static const size_t limit = [] {
    const char* env = std::getenv("TTRL_FAST_CPU_CACHE_MB");
    const long long mb = env != nullptr ? std::atoll(env) : 4096;
    return mb > 0 ? static_cast<size_t>(mb) << 20 : size_t(0);
  }();
  return limit;
}

std::mutex g_mutex;
LargeBlock g_cached{nullptr, 0};  // guarded by g_mutex

}  // namespace

LargeBlock acquire_block(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    // Reuse only blocks not much larger than the request, so one huge block cannot pin memory
    // for a stream of small requests.
    if (g_cached.ptr != nullptr && g_cached.capacity >= bytes && g_cached.capacity <= 2 * bytes + kHugePage) {
      LargeBlock block = g_cached;
      g_cached = LargeBlock{nullptr, 0};
      return block;
    }
  }
  const size_t capacity = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kHugePage, capacity) != 0) return LargeBlock{nullptr, 0};
#if defined(__linux__)
  madvise(ptr, capacity, MADV_HUGEPAGE);  // advisory: failure just means 4 KiB pages
#endif
  return LargeBlock{ptr, capacity};
}

void release_block(LargeBlock block) {
  if (block.ptr == nullptr) return;
  void* evicted = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (block.capacity <= cache_limit_bytes()) {
      evicted = g_cached.ptr;  // keep the newest: it matches the shapes in use now
      g_cached = block;
    } else {
      evicted = block.ptr;
    }
  }
  std::free(evicted);
}

size_t release_cached() {
  LargeBlock old{nullptr, 0};
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    old = g_cached;
    g_cached = LargeBlock{nullptr, 0};
  }
  std::free(old.ptr);
  return old.capacity;
}

size_t cached_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_cached.capacity;
}

}  // namespace cpu
}  // namespace ttrl_fast
