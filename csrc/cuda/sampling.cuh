// Launcher of the CUDA sample_tokens kernel (sampling.cu).
//
// Plain C++ on raw pointers (no torch headers), like selective_log_softmax.cuh. The per-element
// arithmetic is the shared __host__ __device__ code of ttrl_fast/sampling_math.h, which the CPU
// backend runs too; the spec is ttrl_fast/reference/sampling.py and the raw contract is documented
// in ttrl_fast/kernels/__init__.py.
//
// Layout:
//   logits     [R, V] of `dtype`, row r at logits + r * row_stride (elements), unit stride along V
//   row_keys   [R] int64 (taken mod 2^32)           seen  [R, V] bytes (torch.bool) or nullptr
//   ban_ids    [n_ban] int64 in [0, V) or nullptr   workspace  [R, V] float32 scratch (any content)
//   tokens [R] int64, logp_raw / logp_processed / log_kept [R] float32
//
// Returns nullptr on success, or a static, human-readable error message (invalid arguments, or the
// launch status from cudaGetLastError) for the caller to raise.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "selective_log_softmax.cuh"  // DTypeCode

namespace ttrl_fast {
namespace cuda {

struct SampleTokensArgs {
  DTypeCode dtype;
  const void* logits;
  int64_t R, V, row_stride;
  const int64_t* row_keys;
  uint32_t step;  // decode step mod 2^32
  const uint8_t* seen;
  const int64_t* ban_ids;
  int64_t n_ban;
  int32_t greedy;    // 0 / 1
  int64_t top_k;     // 0 = off (>= V is off too)
  float inv_t;       // 1 / temperature (ignored when greedy)
  double top_p;      // 1 = off
  double min_p;      // 0 = off
  double penalty;    // repetition penalty, 1 = off
  float* workspace;  // [R, V]
  int64_t* tokens;
  float* logp_raw;
  float* logp_processed;
  float* log_kept;
};

// One CTA per row. Deterministic: every sum / max / argmin is a fixed-order block reduction (no
// atomics) and the CTA width depends only on V.
const char* sample_tokens_fwd_launch(const SampleTokensArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace ttrl_fast
