// CUDA kernel of sample_tokens (one decode step of the rollout sampler).
//
// Torch-free like the other .cu files: the torch glue lives in bindings.cpp. Every per-element
// formula (penalty, t = (s - m) * k, exp2, the hash, the uniform, -ln u, the race key, the order-
// preserving float key) is a shared __host__ __device__ helper of ttrl_fast/sampling_math.h /
// logprob_math.h, which the CPU backend runs too.
//
// Work decomposition: one CTA per row; thread i owns v = i, i + nthreads, ... in every pass (so it
// re-reads exactly the workspace entries it wrote, except the banned ones, written after a barrier).
//   Pass 1  x -> s = penalised logits into the fp32 workspace, per-thread max of s and (when s can
//           differ from x) the online raw log-sum-exp state; bans set to -inf (then the max is
//           recomputed); block reductions. NaN / +inf are read as -inf and poison the row (NaN
//           log-probs, sampling_math.h).
//   Pass 2  S_all = sum 2^t, t = (s - m) * inv_t * log2(e); greedy: the first index with s == m.
//   Truncation (sampling only): every rule is a threshold on the order-preserving uint32 key of t.
//           top-k: the k-th largest key, found bit by bit from the MSB (32 block-wide counts of
//           key >= candidate); ties at the boundary are kept together by construction.
//           top-p: the smallest key tau with mass(key > tau, kept by top-k) < top_p * mass(kept by
//           top-k), again bit by bit (32 block-wide fp64 mass sums); this is the smallest kept tie
//           group's value, so the kept set is exactly the spec's.
//           min-p: t >= log2(min_p).
//   Pass 3  the exponential race over kept v: argmin of E_v * 2^-t_v (lowest index on exact ties),
//           fused with the kept mass. A thread computes the key (a log and an exp2) only for the
//           tokens that pass race_candidate against its own best so far.
// Reductions: warp shuffle trees, then the warps' partials in warp order: bit-for-bit
// deterministic for a given (R, V) (the CTA width depends only on V).
//
// Bytes per row: pass 1 reads V * sizeof(logits) (+ V for seen) and writes 4 V; every later pass
// re-reads the 4 V bytes of workspace (L2-resident for the rows in flight).

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "sampling.cuh"
#include "ttrl_fast/logprob_math.h"
#include "ttrl_fast/sampling_math.h"

namespace ttrl_fast {
namespace cuda {
namespace {

namespace sm = ::ttrl_fast::sampling;

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

// ------------------------------------------------------------------------------------------------
// Element loads.

template <int DT>
struct Elem;

template <>
struct Elem<kFloat32> {
  using T = float;
  static __device__ __forceinline__ float load(const T* p, int64_t i) { return __ldg(p + i); }
};

template <>
struct Elem<kBFloat16> {
  using T = unsigned short;
  static __device__ __forceinline__ float load(const T* p, int64_t i) {
    return math::bf16_bits_to_float(__ldg(p + i));
  }
};

template <>
struct Elem<kFloat16> {
  using T = unsigned short;
  static __device__ __forceinline__ float load(const T* p, int64_t i) {
    return math::fp16_bits_to_float(__ldg(p + i));
  }
};

// ------------------------------------------------------------------------------------------------
// Deterministic block reductions (every thread receives the result).

struct KeyIdx {
  float key;
  long long idx;
};

template <typename T>
__device__ __forceinline__ T shfl_down(T v, int off) {
  return __shfl_down_sync(0xffffffffu, v, off);
}

template <>
__device__ __forceinline__ KeyIdx shfl_down<KeyIdx>(KeyIdx v, int off) {
  return KeyIdx{shfl_down(v.key, off), shfl_down(v.idx, off)};
}

template <>
__device__ __forceinline__ math::LseState shfl_down<math::LseState>(math::LseState v, int off) {
  return math::LseState{shfl_down(v.m, off), shfl_down(v.s, off), shfl_down(v.w, off)};
}

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v = op(v, shfl_down(v, off));
  return v;  // lane 0 holds the combination of lanes 0..31, always in the same tree order
}

// blockDim.x is a multiple of 32. `identity` pads the missing warps of the second stage.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[kMaxThreads / kWarp];
  __shared__ T result;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  v = warp_reduce(v, op);
  __syncthreads();  // earlier readers of partial / result are done
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? partial[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }  // NaN-ignoring
};
struct SumD {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct SumLL {
  __device__ long long operator()(long long a, long long b) const { return a + b; }
};
struct MinLL {
  __device__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};
struct ArgMin {  // smallest key, then lowest index
  __device__ KeyIdx operator()(KeyIdx a, KeyIdx b) const {
    return (b.key < a.key || (b.key == a.key && b.idx < a.idx)) ? b : a;
  }
};
struct LseMerge {
  float inv_t;
  __device__ math::LseState operator()(math::LseState a, math::LseState b) const {
    return math::lse_merge(a, b, inv_t);
  }
};

__device__ __forceinline__ float clamp_nonpositive(float v) { return v > 0.0f ? 0.0f : v; }

// ------------------------------------------------------------------------------------------------
// The kernel.

template <int DT>
__global__ void __launch_bounds__(kMaxThreads) sample_tokens_kernel(const SampleTokensArgs a) {
  using E = Elem<DT>;
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t V = a.V;
  const typename E::T* row = static_cast<const typename E::T*>(a.logits) + r * a.row_stride;
  float* ws = a.workspace + r * V;
  const bool greedy = a.greedy != 0;
  const float inv_t = greedy ? 1.0f : a.inv_t;
  const float k = sm::log2_scale(inv_t);
  const bool penalty = a.seen != nullptr && a.penalty != 1.0;
  const bool raw_separate = penalty || a.n_ban > 0;  // s may differ from x
  const uint8_t* seen = penalty ? a.seen + r * V : nullptr;
  const double pen = a.penalty, inv_pen = 1.0 / a.penalty;

  // Pass 1: s into the workspace, max of s, raw log-sum-exp state.
  // NaN / +inf poison the row (sampling_math.h): read as -inf, NaN log-probs.
  math::LseState raw = math::lse_empty();
  float ms = -INFINITY;
  int bad = 0;
  for (int64_t v = tid; v < V; v += nt) {
    const float x_in = E::load(row, v);
    bad |= sm::poisons_row(x_in) ? 1 : 0;
    const float x = sm::unpoisoned(x_in);
    if (raw_separate) {
      if (x > raw.m) math::lse_rebase(raw, x, inv_t);
      math::lse_accumulate(raw, x, inv_t);
    }
    const float s = penalty ? sm::penalized(x, seen[v] != 0, pen, inv_pen) : x;
    ws[v] = s;
    ms = fmaxf(ms, s);
  }
  const bool poisoned = __syncthreads_or(bad) != 0;
  if (a.n_ban > 0) {
    __syncthreads();  // every s is written
    for (int64_t i = tid; i < a.n_ban; i += nt) ws[a.ban_ids[i]] = -INFINITY;
    __syncthreads();
    ms = -INFINITY;
    for (int64_t v = tid; v < V; v += nt) ms = fmaxf(ms, ws[v]);
  }
  const float m = block_reduce(ms, MaxOp{}, -INFINITY);
  if (raw_separate) raw = block_reduce(raw, LseMerge{inv_t}, math::lse_empty());

  long long tok = 0;
  double s_all = 0.0, s_kept = 0.0;
  bool cut = false;
  if (m > -INFINITY) {
    // Pass 2: total mass; greedy: first maximum.
    float sa = 0.0f;
    long long first = LLONG_MAX;
    for (int64_t v = tid; v < V; v += nt) {
      const float s = ws[v];
      sa += math::exp2_shared(sm::scaled(s, m, k));
      if (greedy && s == m && first == LLONG_MAX) first = v;
    }
    s_all = block_reduce(static_cast<double>(sa), SumD{}, 0.0);
    if (greedy) {
      tok = block_reduce(first, MinLL{}, LLONG_MAX);
      s_kept = s_all;
    } else {
      // Truncation thresholds on the order-preserving key of t.
      const uint32_t key_neg_inf = sm::order_key(-INFINITY);
      uint32_t thr_key = key_neg_inf + 1u;  // always drop -inf
      const bool tk = a.top_k > 0 && a.top_k < V;
      const bool tp = a.top_p < 1.0;
      uint32_t key_k = 0u;
      if (tk) {  // the largest key with count(key >= it) >= k: the k-th largest
        uint32_t prefix = 0u;
        for (int b = 31; b >= 0; --b) {
          const uint32_t cand = prefix | (1u << b);
          long long c = 0;
          for (int64_t v = tid; v < V; v += nt) c += sm::order_key(sm::scaled(ws[v], m, k)) >= cand ? 1 : 0;
          c = block_reduce(c, SumLL{}, 0LL);
          if (c >= a.top_k) prefix = cand;
        }
        key_k = prefix;
        thr_key = key_k > thr_key ? key_k : thr_key;
      }
      if (tp) {  // the smallest key tau with mass(key > tau, key >= key_k) < top_p * mass(key >= key_k)
        double mk = 0.0;
        for (int64_t v = tid; v < V; v += nt) {
          const float t = sm::scaled(ws[v], m, k);
          if (sm::order_key(t) >= key_k) mk += static_cast<double>(math::exp2_shared(t));
        }
        const double target = a.top_p * block_reduce(mk, SumD{}, 0.0);
        uint32_t prefix = 0u;
        for (int b = 31; b >= 0; --b) {
          const uint32_t cand = prefix | ((1u << b) - 1u);  // bit b = 0, every lower bit 1
          double mass = 0.0;
          for (int64_t v = tid; v < V; v += nt) {
            const float t = sm::scaled(ws[v], m, k);
            const uint32_t key = sm::order_key(t);
            if (key > cand && key >= key_k) mass += static_cast<double>(math::exp2_shared(t));
          }
          mass = block_reduce(mass, SumD{}, 0.0);
          if (!(mass < target)) prefix |= 1u << b;
        }
        thr_key = prefix > thr_key ? prefix : thr_key;
      }
      if (a.min_p > 0.0) {
        const uint32_t key_m = sm::order_key(sm::min_p_threshold(a.min_p));
        thr_key = key_m > thr_key ? key_m : thr_key;
      }
      cut = thr_key != key_neg_inf + 1u;
      const float thr = sm::order_key_float(thr_key);  // kept: t >= thr (excludes -inf)

      // Pass 3: the race, fused with the kept mass.
      const uint32_t skey = sm::step_key(static_cast<uint32_t>(a.row_keys[r]), a.step);
      float sk = 0.0f;
      KeyIdx best{INFINITY, LLONG_MAX};
      for (int64_t v = tid; v < V; v += nt) {
        const float t = sm::scaled(ws[v], m, k);
        if (!(t >= thr)) continue;
        const float e = math::exp2_shared(t);
        sk += e;
        const float u = sm::uniform_of(skey, static_cast<uint32_t>(v));
        if (sm::race_candidate(u, e, best.key)) {
          const float key = sm::race_key(sm::neg_log_unit(u), t);
          if (key < best.key) best = KeyIdx{key, v};
        }
      }
      s_kept = block_reduce(static_cast<double>(sk), SumD{}, 0.0);
      best = block_reduce(best, ArgMin{}, KeyIdx{INFINITY, LLONG_MAX});
      tok = best.idx;
      if (!cut) s_all = s_kept;  // the same set: log_kept is exactly 0
    }
  }

  if (tid == 0) {
    if (tok < 0 || tok >= V) tok = 0;  // defence in depth (cannot happen with a finite max)
    const float d_tok = (ws[tok] - m) * inv_t;
    double lp_raw;
    if (raw_separate) {
      const float x_tok = E::load(row, tok);
      lp_raw = static_cast<double>((x_tok - raw.m) * inv_t) - log(static_cast<double>(raw.s));
    } else {
      lp_raw = static_cast<double>(d_tok) - log(s_all);
    }
    const double lp_proc = static_cast<double>(d_tok) - log(s_kept);
    const double lkept = (cut || !(m > -INFINITY)) ? log(s_kept / s_all) : 0.0;
    a.tokens[r] = tok;
    a.logp_raw[r] = poisoned ? NAN : clamp_nonpositive(static_cast<float>(lp_raw));
    a.logp_processed[r] = poisoned ? NAN : clamp_nonpositive(static_cast<float>(lp_proc));
    a.log_kept[r] = poisoned ? NAN : clamp_nonpositive(static_cast<float>(lkept));
  }
}

int threads_for(int64_t V) {
  if (V >= 16384) return 1024;
  if (V >= 2048) return 512;
  if (V >= 256) return 256;
  return 64;
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* sample_tokens_fwd_launch(const SampleTokensArgs& a, cudaStream_t stream) {
  if (a.R < 0 || a.V < 1) return "sample_tokens_fwd (cuda): need R >= 0 and V >= 1";
  if (a.R > INT_MAX) return "sample_tokens_fwd (cuda): R (number of rows) must be < 2^31";
  if (a.V > (int64_t{1} << 31)) return "sample_tokens_fwd (cuda): V must be <= 2^31";
  if (a.n_ban < 0 || (a.n_ban > 0 && a.ban_ids == nullptr))
    return "sample_tokens_fwd (cuda): ban_ids is null but n_ban > 0";
  if (!(a.inv_t > 0.0f) || !(a.top_p > 0.0 && a.top_p <= 1.0) || !(a.min_p >= 0.0 && a.min_p <= 1.0) ||
      !(a.penalty > 0.0) || a.top_k < 0)
    return "sample_tokens_fwd (cuda): invalid sampling parameters";
  if (a.R == 0) return nullptr;
  if (a.logits == nullptr || a.row_keys == nullptr || a.workspace == nullptr || a.tokens == nullptr ||
      a.logp_raw == nullptr || a.logp_processed == nullptr || a.log_kept == nullptr)
    return "sample_tokens_fwd (cuda): null logits/row_keys/workspace/output pointer";
  const dim3 grid(static_cast<unsigned>(a.R));
  const dim3 block(threads_for(a.V));
  switch (a.dtype) {
    case kFloat32:
      sample_tokens_kernel<kFloat32><<<grid, block, 0, stream>>>(a);
      break;
    case kBFloat16:
      sample_tokens_kernel<kBFloat16><<<grid, block, 0, stream>>>(a);
      break;
    case kFloat16:
      sample_tokens_kernel<kFloat16><<<grid, block, 0, stream>>>(a);
      break;
    default:
      return "sample_tokens_fwd (cuda): logits must be float32, bfloat16 or float16";
  }
  return launch_status();
}

}  // namespace cuda
}  // namespace ttrl_fast
