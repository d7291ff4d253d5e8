// Memory for logits-sized CPU outputs (gradients): huge-page backed and reused across calls.
//
// A fresh 0.5 GB gradient from the system allocator costs one page fault per 4 KiB page plus the
// kernel zeroing every page: on the 2-core reference machine that is several times the backward
// kernel itself, on every training step. Two remedies, both invisible to callers:
//  * 2 MiB-aligned blocks advised MADV_HUGEPAGE (one fault per 2 MiB), and
//  * a one-slot cache of the most recently released block, reused by the next request that fits
//    (the CPU counterpart of PyTorch's CUDA caching allocator). It holds at most
//    TTRL_FAST_CPU_CACHE_MB megabytes (default 4096; 0 disables) and release_cached() empties it.
#pragma once

#include <cstddef>

namespace ttrl_fast {
namespace cpu {

struct LargeBlock {
  void* ptr;        // nullptr if the allocation failed
  size_t capacity;  // bytes actually owned (>= the request)
};

// A block of at least `bytes` (from the cache when one fits); give it back with release_block().
LargeBlock acquire_block(size_t bytes);
void release_block(LargeBlock block);

// Frees the cached block, if any; returns the bytes freed.
size_t release_cached();

// Bytes currently held by the cache.
size_t cached_bytes();

}  // namespace cpu
}  // namespace ttrl_fast
