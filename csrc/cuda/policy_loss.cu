// CUDA kernel of the GRPO-family policy loss (forward; the gradient is final in the forward).
//
// Torch-free like selective_log_softmax.cu: the torch glue lives in bindings.cpp. Every per-token
// formula goes through the shared __host__ __device__ helpers of ttrl_fast/policy_loss_math.h
// (policy_term, kl_term, aggregation_weight, vespo_phi, clipped_ratio), which the CPU backend runs
// too, so the CPU tests check the GPU's per-token math.
//
// Work decomposition: one CTA per sequence i. Thread k owns tokens t = k, k + nthreads, ... in
// every pass (so pass C re-reads exactly the gradients the same thread wrote in pass B).
//   Pass A  n_i = sum_t m, lr = sum_t m (logp - old), vs = sum_t m clamp(logp - old, -20, 20)
//           [+ sum over all Tr columns of clamp(log rho, log 1e-8, 20) for VESPO];
//           s_i = exp(lr / max(n_i, 1)) at sequence level, else 1.
//   Pass B  per token: ratio, policy term, rollout-IS factor, KL, aggregation weight; writes
//           grad_t (token level: final; sequence level: the direct d/dlogp part) and accumulates
//           the loss, G_i = sum_t w dl/dr (sequence level) and the metric sums.
//   Pass C  (sequence level only) grad_t += G_i s_i m_t / max(n_i, 1)  (d s_i / d logp_t).
// Sums are block reductions in a fixed order (per-thread strided sums, warp shuffle tree, then the
// warps' partials through shared memory in warp order): bit-for-bit deterministic, no atomics.
//
// Bytes per sequence: pass A reads 8 T (logp, old; + 4 T mask) [+ 4 Tr for VESPO's rollout term];
// pass B reads logp, old, mask, advantages, and when given ref_logp, rollout ratio, entropy
// (4 T each, L2 hits for logp/old/mask after pass A) and writes 4 T; pass C (sequence level)
// re-reads mask and grad (L1/L2) and writes 4 T. Tiny next to the log-softmax over the vocabulary.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "policy_loss.cuh"
#include "ttrl_fast/policy_loss_math.h"

namespace ttrl_fast {
namespace cuda {
namespace {

using math::PolicyLossParams;

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr int kMinThreads = 128;
// Threads a large GPU keeps resident (~128 SMs x 2048). A fixed constant, not the device's SM
// count, so that the CTA width (hence the reduction order) depends only on (B, T).
constexpr int64_t kResidentThreads = int64_t{1} << 18;
constexpr float kLog1e8 = -18.420680743952367f;  // log(1e-8), as in vespo_phi

// NaN conventions, identical to the CPU backend (csrc/cpu/policy_loss.cpp) so that the two agree
// on any input: the clamps are fminf(fmaxf(x, lo), hi) (a NaN becomes lo), and the ratio min / max
// skip NaN (a NaN ratio never replaces the running value).
__device__ __forceinline__ float clamp_f(float x, float lo, float hi) {
  return fminf(fmaxf(x, lo), hi);
}
__device__ __forceinline__ float skip_nan_min(float a, float b) { return b < a ? b : a; }
__device__ __forceinline__ float skip_nan_max(float a, float b) { return b > a ? b : a; }

// ------------------------------------------------------------------------------------------------
// Block reductions of N floats at once: slot kMinSlot reduces with min, kMaxSlot with max (-1 for
// none), every other slot with +.

template <int kMinSlot, int kMaxSlot>
__device__ __forceinline__ float combine(int k, float a, float b) {
  if (k == kMinSlot) return skip_nan_min(a, b);
  if (k == kMaxSlot) return skip_nan_max(a, b);
  return a + b;
}

template <int kMinSlot, int kMaxSlot>
__device__ __forceinline__ float identity_of(int k) {
  if (k == kMinSlot) return INFINITY;
  if (k == kMaxSlot) return -INFINITY;
  return 0.0f;
}

// Lane 0 ends with the combination of lanes 0..31, always in the same tree order.
template <int N, int kMinSlot, int kMaxSlot>
__device__ __forceinline__ void warp_reduce(float (&v)[N]) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float o = __shfl_down_sync(0xffffffffu, v[k], off);
      v[k] = combine<kMinSlot, kMaxSlot>(k, v[k], o);
    }
  }
}

// Every thread ends with the CTA-wide results. blockDim.x is a multiple of 32.
template <int N, int kMinSlot, int kMaxSlot>
__device__ __forceinline__ void block_reduce_all(float (&v)[N]) {
  __shared__ float partial[kMaxThreads / kWarp][N];
  __shared__ float result[N];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  warp_reduce<N, kMinSlot, kMaxSlot>(v);
  __syncthreads();  // any earlier reader of partial / result is done
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) partial[warp][k] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = lane < nwarps ? partial[lane][k] : identity_of<kMinSlot, kMaxSlot>(k);
    warp_reduce<N, kMinSlot, kMaxSlot>(v);
    if (lane == 0) {
#pragma unroll
      for (int k = 0; k < N; ++k) result[k] = v[k];
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = result[k];
}

// Pass B accumulator slots.
enum SlotB : int {
  kLoss = 0,    // sum_t w l
  kG,           // sum_t w dl/dr (sequence level)
  kKl,          // sum_t m kl_metric
  kEnt,         // sum_t m H
  kLow,         // sum_t m low flag
  kHigh,        // sum_t m high flag
  kRegion,      // sum_t m region flag
  kCispo,       // sum_t m cispo flag
  kPhi,         // sum_t m phi
  kRatio,       // sum_t m r
  kRatioMin,    // min_t r over m > 0
  kRatioMax,    // max_t r over m > 0
  kSlotsB
};

__device__ __forceinline__ float flag(bool b) { return b ? 1.0f : 0.0f; }

// ------------------------------------------------------------------------------------------------
// The kernel. One CTA per sequence.

__global__ void __launch_bounds__(kMaxThreads)
    policy_loss_fwd_kernel(const float* __restrict__ logp, const float* __restrict__ old_logp,
                           const float* __restrict__ adv, const float* __restrict__ mask,
                           const float* __restrict__ ref_logp, const float* __restrict__ rollout,
                           const float* __restrict__ entropy, int T, int Ta, int Tr,
                           const PolicyLossParams p, float* __restrict__ grad,
                           float* __restrict__ seq_stats) {
  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int64_t row = i * static_cast<int64_t>(T);
  const bool on_policy = p.on_policy != 0;
  const bool seq_level = p.sequence_level != 0;
  const bool vespo = p.loss_type == math::kVespo;

  // ---- Pass A: n_i, sum m log-ratio, VESPO's log-weight sum.
  float a[3] = {0.0f, 0.0f, 0.0f};
  for (int t = tid; t < T; t += nt) {
    const int64_t o = row + t;
    const float m = __ldg(mask + o);
    const float d = !on_policy ? __ldg(logp + o) - __ldg(old_logp + o)
                               : (seq_level ? math::on_policy_log_ratio(__ldg(logp + o)) : 0.0f);
    a[0] += m;
    a[1] += m * d;
    a[2] += m * clamp_f(d, -20.0f, 20.0f);
  }
  if (vespo && rollout != nullptr) {
    const float* rr = rollout + i * static_cast<int64_t>(Tr);
    for (int t = tid; t < Tr; t += nt) a[2] += clamp_f(logf(__ldg(rr + t)), kLog1e8, 20.0f);
  }
  block_reduce_all<3, -1, -1>(a);
  const float n = a[0];
  const float n_clamped = fmaxf(n, 1.0f);
  const float vs = a[2];
  const float s = seq_level ? expf(a[1] / n_clamped) : 1.0f;

  // ---- Pass B: per-token loss, gradient, metrics.
  const float* adv_row = adv + i * static_cast<int64_t>(Ta);
  const float* rho_row = rollout != nullptr ? rollout + i * static_cast<int64_t>(Tr) : nullptr;
  const bool use_rho = rollout != nullptr && !vespo;
  const float lo = 1.0f - p.eps_low, hi = 1.0f + p.eps_high;
  float b[kSlotsB];
#pragma unroll
  for (int k = 0; k < kSlotsB; ++k) b[k] = 0.0f;
  b[kRatioMin] = INFINITY;
  b[kRatioMax] = -INFINITY;

  for (int t = tid; t < T; t += nt) {
    const int64_t o = row + t;
    const float m = __ldg(mask + o);
    const float lp = __ldg(logp + o);
    const float r = seq_level ? s : (on_policy ? math::on_policy_ratio(lp) : expf(lp - __ldg(old_logp + o)));
    const float A = __ldg(adv_row + (Ta == 1 ? 0 : t));
    const float phi = vespo ? math::vespo_phi(p, vs, A) : 0.0f;
    const float rho = use_rho ? __ldg(rho_row + (Tr == 1 ? 0 : t)) : 1.0f;
    const float ref = p.kl_estimator != math::kKlNone ? __ldg(ref_logp + o) : 0.0f;
    const math::TokenLoss tl = math::token_loss(p, r, A, lp, phi, rho, ref);
    const float l = tl.loss, dl_dr = tl.d_ratio, dl_dlogp = tl.d_logp, kl_metric = tl.kl_metric;
    const float w = math::aggregation_weight(p, m, n);
    b[kLoss] += w * l;
    float g;
    if (seq_level) {
      b[kG] += w * dl_dr;
      g = w * dl_dlogp;
    } else {
      g = w * (dl_dr * r + dl_dlogp);
    }
    grad[o] = g;

    b[kKl] += m * kl_metric;
    if (entropy != nullptr) b[kEnt] += m * __ldg(entropy + o);
    const float c1 = math::clipped_ratio(p, r);
    const bool low = c1 < lo && A < 0.0f;
    const bool high = c1 > hi && A > 0.0f;
    b[kLow] += m * flag(low);
    b[kHigh] += m * flag(high);
    b[kRegion] += m * flag(low || high);
    b[kCispo] += m * flag(r > p.eps_high && A > 0.0f);
    b[kPhi] += m * phi;
    b[kRatio] += m * r;
    if (m > 0.0f) {
      b[kRatioMin] = skip_nan_min(b[kRatioMin], r);
      b[kRatioMax] = skip_nan_max(b[kRatioMax], r);
    }
  }
  block_reduce_all<kSlotsB, kRatioMin, kRatioMax>(b);

  // ---- Pass C (sequence level): d s_i / d logp_t = s_i m_t / max(n_i, 1), through G_i.
  if (seq_level) {
    const float scale = b[kG] * s / n_clamped;  // G_i s_i / max(n_i, 1)
    for (int t = tid; t < T; t += nt) {
      const int64_t o = row + t;
      grad[o] += scale * __ldg(mask + o);
    }
  }

  if (tid == 0) {
    // Flags and phi at (s_i, A_i0): the [B, 1] convention of sequence-level IS.
    const float r0 = s;
    const float A0 = Ta > 0 ? __ldg(adv_row) : 0.0f;
    const float c10 = math::clipped_ratio(p, r0);
    const bool low0 = c10 < lo && A0 < 0.0f;
    const bool high0 = c10 > hi && A0 > 0.0f;
    float* st = seq_stats + i * kPolicyLossStatCols;
    st[0] = b[kLoss];
    st[1] = n;
    st[2] = b[kKl];
    st[3] = b[kEnt];
    st[4] = b[kLow];
    st[5] = b[kHigh];
    st[6] = b[kRegion];
    st[7] = flag(low0);
    st[8] = flag(high0);
    st[9] = flag(low0 || high0);
    st[10] = b[kCispo];
    st[11] = flag(r0 > p.eps_high && A0 > 0.0f);
    st[12] = b[kPhi];
    st[13] = vespo ? math::vespo_phi(p, vs, A0) : 0.0f;
    st[14] = b[kRatio];
    st[15] = b[kRatioMin];
    st[16] = b[kRatioMax];
    st[17] = s;
  }
}

// ------------------------------------------------------------------------------------------------
// Launch configuration.

// Threads per CTA: 128, widened (up to 1024) only for long sequences when there are too few of
// them to fill the GPU. Depends on (B, T) alone, so results are reproducible run to run.
int pick_threads(int64_t B, int64_t T) {
  int threads = kMinThreads;
  while (threads < kMaxThreads && T >= static_cast<int64_t>(threads) * 16 &&
         B * threads * 2 <= kResidentThreads)
    threads *= 2;
  return threads;
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public launcher.

const char* policy_loss_fwd_launch(const float* logp, const float* old_logp,
                                   const float* advantages, const float* mask,
                                   const float* ref_logp, const float* rollout_is_ratio,
                                   const float* entropy, int64_t B, int64_t T, int64_t Ta,
                                   int64_t Tr, math::PolicyLossParams params, float* grad_logp,
                                   float* seq_stats, cudaStream_t stream) {
  if (B < 0 || T < 0) return "policy_loss_fwd (cuda): negative B or T";
  if (B > INT_MAX) return "policy_loss_fwd (cuda): B (number of sequences) must be < 2^31";
  if (T > INT_MAX) return "policy_loss_fwd (cuda): T must be < 2^31";
  if (Ta != 1 && Ta != T) return "policy_loss_fwd (cuda): advantages must have 1 or T columns";
  if (rollout_is_ratio != nullptr && Tr != 1 && Tr != T)
    return "policy_loss_fwd (cuda): rollout_is_ratio must have 1 or T columns";
  if (params.loss_type < math::kPpoClip || params.loss_type > math::kVespo)
    return "policy_loss_fwd (cuda): loss_type must be 0 (ppo clip), 1 (cispo), 2 (sapo) or 3 (vespo)";
  if (params.aggregation < math::kSeqMeanTokenMean || params.aggregation > math::kSeqMeanTokenSum)
    return "policy_loss_fwd (cuda): aggregation must be 0, 1 or 2";
  if (params.kl_estimator < math::kKlNone || params.kl_estimator > math::kK3)
    return "policy_loss_fwd (cuda): kl_estimator must be 0 (none), 1 (k1), 2 (k2) or 3 (k3)";
  if (B == 0) return nullptr;
  if (logp == nullptr || advantages == nullptr || mask == nullptr || grad_logp == nullptr ||
      seq_stats == nullptr)
    return "policy_loss_fwd (cuda): null logp/advantages/mask/grad_logp/seq_stats pointer";
  if (!params.on_policy && old_logp == nullptr)
    return "policy_loss_fwd (cuda): old_logp is required unless on_policy is set";
  if (params.kl_estimator != math::kKlNone && ref_logp == nullptr)
    return "policy_loss_fwd (cuda): ref_logp is required when kl_estimator != 0";
  const int threads = pick_threads(B, T);
  policy_loss_fwd_kernel<<<static_cast<unsigned>(B), threads, 0, stream>>>(
      logp, params.on_policy ? nullptr : old_logp, advantages, mask, ref_logp, rollout_is_ratio,
      entropy, static_cast<int>(T), static_cast<int>(Ta),
      rollout_is_ratio != nullptr ? static_cast<int>(Tr) : 0, params, grad_logp, seq_stats);
  return launch_status();
}

}  // namespace cuda
}  // namespace ttrl_fast
