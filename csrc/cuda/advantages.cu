// CUDA kernel of group advantage normalisation (GRPO's per-group reward centring / scaling).
//
// Torch-free like the other .cu files. The arithmetic is math::segment_stats and
// math::advantage_of (ttrl_fast/policy_loss_math.h), the very code the CPU backend runs.
//
// Work decomposition: one warp per group. segment_stats is a serial helper (two passes over the
// group's members, fp32 sums in member order), so lane 0 calls it as is: the group's (count, mean,
// std) are then bit-for-bit those of the CPU backend. The 32 lanes then write the members'
// advantages in parallel (advantage_of is per member). Group sizes in GRPO are small (a handful to
// a few hundred completions per prompt), and the whole op is O(N) on [N]-sized arrays, so the
// serial statistics are not worth a reduction of their own (which would also change the summation
// order relative to the CPU backend). Deterministic, no atomics.
//
// Bytes: reads each member's perm entry and reward three times (two statistic passes + the write
// pass; L1/L2 hits after the first) and writes 4 bytes per member + 12 per group.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "advantages.cuh"
#include "ttrl_fast/policy_loss_math.h"

namespace ttrl_fast {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 128;  // 4 groups per CTA
constexpr int kGroupsPerCta = kThreads / kWarp;

__global__ void __launch_bounds__(kThreads)
    group_advantages_kernel(const float* __restrict__ rewards, const int64_t* __restrict__ perm,
                            const int64_t* __restrict__ offsets, int64_t N, int64_t G,
                            int32_t mode, int32_t correction, float eps, float batch_std,
                            float* __restrict__ advantages, float* __restrict__ group_stats) {
  const int lane = threadIdx.x % kWarp;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kGroupsPerCta + threadIdx.x / kWarp;
  if (g >= G) return;  // whole warps exit together
  // Clamp the group's range into [0, N] (defence in depth: never read past perm).
  int64_t begin = offsets[g], end = offsets[g + 1];
  begin = begin < 0 ? 0 : (begin > N ? N : begin);
  end = end < begin ? begin : (end > N ? N : end);

  math::SegmentStats st{0.0f, 0.0f, 0.0f};
  if (lane == 0) st = math::segment_stats(rewards, perm, begin, end, correction);
  st.count = __shfl_sync(0xffffffffu, st.count, 0);
  st.mean = __shfl_sync(0xffffffffu, st.mean, 0);
  st.std = __shfl_sync(0xffffffffu, st.std, 0);

  for (int64_t j = begin + lane; j < end; j += kWarp) {
    const int64_t idx = perm[j];
    advantages[idx] = math::advantage_of(rewards[idx], st, mode, eps, batch_std);
  }
  if (lane == 0) {
    float* gs = group_stats + g * 3;
    gs[0] = st.count;
    gs[1] = st.mean;
    gs[2] = st.std;
  }
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* group_advantages_fwd_launch(const float* rewards, const int64_t* perm,
                                        const int64_t* offsets, int64_t N, int64_t G,
                                        int32_t mode, int32_t std_correction, float eps,
                                        float batch_std, float* advantages, float* group_stats,
                                        cudaStream_t stream) {
  if (N < 0 || G < 0) return "group_advantages_fwd (cuda): negative N or G";
  if (mode < math::kAdvGroup || mode > math::kAdvRloo)
    return "group_advantages_fwd (cuda): mode must be 0 (group), 1 (batch), 2 (none) or 3 (rloo)";
  if (G == 0) return nullptr;
  if (offsets == nullptr || group_stats == nullptr)
    return "group_advantages_fwd (cuda): null offsets/group_stats pointer";
  if (N > 0 && (rewards == nullptr || perm == nullptr || advantages == nullptr))
    return "group_advantages_fwd (cuda): null rewards/perm/advantages pointer";
  const int64_t blocks = (G + kGroupsPerCta - 1) / kGroupsPerCta;
  if (blocks > INT_MAX) return "group_advantages_fwd (cuda): too many groups";
  group_advantages_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      rewards, perm, offsets, N, G, mode, std_correction, eps, batch_std, advantages, group_stats);
  return launch_status();
}

}  // namespace cuda
}  // namespace ttrl_fast
