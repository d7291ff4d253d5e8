// Launcher of the CUDA group-advantage kernel (advantages.cu).
//
// Plain C++ on raw pointers (no torch headers). The arithmetic is segment_stats / advantage_of of
// ttrl_fast/policy_loss_math.h (shared with the CPU backend); spec: ttrl_fast/reference/advantages.py;
// raw contract: ttrl_fast/kernels/__init__.py.
//
// Layout:
//   rewards      [N] float32 (NaN = unscorable: excluded from the statistics, advantage 0)
//   perm         [N] int64, sample indices ordered by group, each in [0, N) (validated by the caller)
//   offsets      [G + 1] int64: group g is perm[offsets[g] .. offsets[g + 1]) (non-decreasing,
//                within [0, N]; out-of-range offsets are clamped, never read past)
//   advantages   [N] float32: written for every sample some group lists (the caller zero-fills it
//                so that unlisted samples read 0)
//   group_stats  [G, 3] float32: (count, mean, std) per group
//   mode         math::AdvantageMode (0 group, 1 batch, 2 none, 3 rloo)
//
// Returns nullptr on success, or a static, human-readable error message.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ttrl_fast {
namespace cuda {

const char* group_advantages_fwd_launch(const float* rewards, const int64_t* perm,
                                        const int64_t* offsets, int64_t N, int64_t G,
                                        int32_t mode, int32_t std_correction, float eps,
                                        float batch_std, float* advantages, float* group_stats,
                                        cudaStream_t stream);

}  // namespace cuda
}  // namespace ttrl_fast
