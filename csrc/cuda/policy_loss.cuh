// Launcher of the CUDA GRPO-family policy loss kernel (policy_loss.cu).
//
// Plain C++ on raw pointers (no torch headers), like selective_log_softmax.cuh. The arithmetic is
// the shared __host__ __device__ code of ttrl_fast/policy_loss_math.h, which the CPU backend runs
// too; the spec is ttrl_fast/reference/policy_loss.py and the raw contract is documented in
// ttrl_fast/kernels/__init__.py.
//
// Layout (every array float32, contiguous, row-major):
//   logp, old_logp, mask, ref_logp, entropy, grad_logp   [B, T]   element (i, t) at i * T + t
//   advantages                                           [B, Ta]  Ta in {1, T}
//   rollout_is_ratio                                     [B, Tr]  Tr in {1, T}
//   seq_stats                                            [B, 18]  columns as in the raw contract
// Optional inputs are nullptr when absent: old_logp (only when params.on_policy; it is ignored when
// on_policy is set), ref_logp (only when params.kl_estimator == kKlNone), rollout_is_ratio (Tr is
// then ignored), entropy.
//
// Returns nullptr on success, or a static, human-readable error message (invalid arguments, or
// the launch status from cudaGetLastError) for the caller to raise.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "ttrl_fast/policy_loss_math.h"

namespace ttrl_fast {
namespace cuda {

// Number of seq_stats columns.
constexpr int kPolicyLossStatCols = 18;

// Forward (which is final: the loss is a scalar, so d loss / d logp is produced here).
//   grad_logp[i, t] = d loss / d logp[i, t]
//   seq_stats[i, :] = the 18 per-sequence statistics of the raw contract
// Deterministic: every sum is a fixed-order block reduction (no atomics); the CTA width depends
// only on (B, T).
const char* policy_loss_fwd_launch(const float* logp, const float* old_logp,
                                   const float* advantages, const float* mask,
                                   const float* ref_logp, const float* rollout_is_ratio,
                                   const float* entropy, int64_t B, int64_t T, int64_t Ta,
                                   int64_t Tr, math::PolicyLossParams params, float* grad_logp,
                                   float* seq_stats, cudaStream_t stream);

}  // namespace cuda
}  // namespace ttrl_fast
