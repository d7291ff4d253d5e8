// Launchers of the CUDA selective log-softmax kernels (selective_log_softmax.cu).
//
// Plain C++ on raw pointers: no torch headers, so that the .cu compiles in seconds with nvcc and
// the torch-facing glue (bindings.cpp) is compiled by the host compiler alone.
//
// Layout (see the raw contract in ttrl_fast/kernels/__init__.py):
//   logits   [A, B, V] of `dtype`, element (a, b, v) at logits + a * stride0 + b * stride1 + v
//            (strides in elements, last dimension contiguous; any other strides allowed).
//   row r = a * B + b indexes every per-row array: index[r], mask[r], logp[r], entropy[r],
//   stats[2 r] (raw row max), stats[2 r + 1] (log-sum), grad_logp[r], grad_entropy[r].
//   grad_logits is a fresh contiguous [A, B, V] tensor of `dtype`: row r at grad_logits + r * V.
//
// Every launcher returns nullptr on success, or a static, human-readable error message (invalid
// arguments, or the launch status from cudaGetLastError) for the caller to raise.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ttrl_fast {
namespace cuda {

// Element type of logits / grad_logits.
enum DTypeCode : int {
  kFloat32 = 0,
  kBFloat16 = 1,
  kFloat16 = 2,
};

// Forward. Per row r:
//   logp[r]      = log_softmax(logits[r] * inv_temperature)[index[r]]  (NaN if index[r] not in [0, V))
//   entropy[r]   = entropy of that distribution            (skipped when entropy == nullptr)
//   stats[2r]    = raw max of logits[r], stats[2r+1] = log sum_v exp((x_v - max) * inv_temperature)
// Masked rows (mask != nullptr && mask[r] == 0) get 0 everywhere and their logits are not read.
// mask: one byte per row (torch.bool), nullptr = all rows active.
const char* selective_log_softmax_fwd_launch(DTypeCode dtype, const void* logits, int64_t A,
                                             int64_t B, int64_t V, int64_t stride0,
                                             int64_t stride1, const int64_t* index,
                                             const uint8_t* mask, float inv_temperature,
                                             float* logp, float* entropy, float* stats,
                                             cudaStream_t stream);

// Backward. grad_logits[r, v] = d loss / d logits[r, v] given d loss / d logp[r] (grad_logp,
// nullptr = zeros) and d loss / d entropy[r] (grad_entropy, nullptr = zeros; `entropy`, the
// forward's output, is only read when grad_entropy != nullptr). `stats` is the forward's output.
// Masked rows get zeros. grad_logits is contiguous [A, B, V] of `dtype`.
const char* selective_log_softmax_bwd_launch(DTypeCode dtype, const float* grad_logp,
                                             const float* grad_entropy, const void* logits,
                                             int64_t A, int64_t B, int64_t V, int64_t stride0,
                                             int64_t stride1, const int64_t* index,
                                             const uint8_t* mask, const float* stats,
                                             const float* entropy, float inv_temperature,
                                             void* grad_logits, cudaStream_t stream);

}  // namespace cuda
}  // namespace ttrl_fast
