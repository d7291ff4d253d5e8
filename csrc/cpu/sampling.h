// Raw-pointer interface of the CPU sample_tokens kernel (no torch types: bindings.cpp validates the
// tensors, allocates the outputs and parallelises over rows). Contract: ttrl_fast/kernels/__init__.py;
// spec and float64 oracle: ttrl_fast/reference/sampling.py; shared math: ttrl_fast/sampling_math.h.
#pragma once

#include <cstdint>

#include "selective_log_softmax.h"  // DType

namespace ttrl_fast {
namespace cpu {

struct SampleArgs {
  const void* logits;  // [R, V], row r at r * row_stride elements, unit stride along V
  DType dtype;
  int64_t R, V, row_stride;
  const int64_t* row_keys;  // [R], taken mod 2^32
  uint32_t step;            // decode step mod 2^32
  const bool* seen;         // [R, V] contiguous, or nullptr
  const int64_t* ban_ids;   // [n_ban] in [0, V), or nullptr
  int64_t n_ban;
  bool greedy;
  int64_t top_k;       // 0 = off (and >= V is off)
  float inv_t;         // 1 / temperature (ignored when greedy)
  double top_p;        // 1 = off
  double min_p;        // 0 = off
  double penalty;      // repetition penalty, 1 = off
  int64_t* tokens;          // [R]
  float* logp_raw;          // [R]
  float* logp_processed;    // [R]
  float* log_kept;          // [R]
};

// Rows [begin, end); safe to call concurrently on disjoint ranges (per-thread scratch). Uses the
// widest ISA variant the CPU supports, following selected_isa() (so force_isa() applies here too).
void sample_tokens_rows(const SampleArgs& args, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace ttrl_fast
