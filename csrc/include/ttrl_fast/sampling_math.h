// Shared arithmetic of the sample_tokens op (spec: ttrl_fast/reference/sampling.py).
//
// Every function here is `__host__ __device__` under nvcc: the CUDA kernel (csrc/cuda/sampling.cu)
// calls them per thread and the CPU kernel (csrc/cpu/sampling_kernel.h) calls the very same code in
// its vectorised loops, so the CPU tests exercise the per-element arithmetic the GPU runs.
//
// Conventions of both kernels (all per row):
//   s_v  = penalized(x_v)                      fp32; banned ids are then set to -inf
//   m    = max_v s_v                           (the kept set always contains the max)
//   t_v  = scaled(s_v, m, k) = (s_v - m) * k   with k = inv_t * log2(e): z_v - z_max in base 2
// Every quantity of the op is invariant under the common shift z -> z - z_max, and working with
// (s_v - m) keeps full precision even for logits ~1e4 (z_v itself would lose all precision in fp32).
// The truncation rules are thresholds on t (the kept set is {v : t_v >= threshold, t_v > -inf}) and
// the exponential race picks the kept v with the smallest
//   race_key = E_v * 2^(-t_v),   E_v = -ln(u_v) ~ Exp(1),
// which orders the tokens exactly as z_v - log(E_v) does, with one exp2 instead of a second log.
// Uniforms are strictly inside (0, 1) (see uniform_of_hash), so E_v > 0; race_key and race_candidate
// still treat E_v == 0 (u == 1) safely.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ttrl_fast/logprob_math.h"

// Host copies have internal linkage: each CPU ISA variant compiles its own inlined copy, so the
// linker can never hand an AVX-512 body to the baseline variant.
#if defined(__CUDACC__)
#define TTRL_SAMPLING_HD __host__ __device__ __forceinline__
#else
#define TTRL_SAMPLING_HD static inline
#endif

namespace ttrl_fast {
namespace sampling {

constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr float kLog2e = 1.44269504088896341f;
// ln 2 split so that e * kLn2Hi is exact for |e| < 2^8 (kLn2Hi has 16 significant bits).
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765e-06f;

TTRL_SAMPLING_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

TTRL_SAMPLING_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// ------------------------------------------------------------------------------------------------
// Counter-based noise: mix32, the step key, the token's uniform. All uint32 arithmetic (mod 2^32).

TTRL_SAMPLING_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// step_key = mix32(row_key ^ mix32(step + golden)); row_key and step are taken mod 2^32, as the
// reference's masks do.
TTRL_SAMPLING_HD uint32_t step_key(uint32_t row_key, uint32_t step) {
  return mix32(row_key ^ mix32(step + kGolden));
}

TTRL_SAMPLING_HD uint32_t token_hash(uint32_t skey, uint32_t token) {
  return mix32(skey ^ (token * kGolden));
}

// u = ((h >> 9) + 0.5) * 2^-23, exact in fp32: (h >> 9) < 2^23 converts exactly, + 0.5 needs 24 bits
// (exact), the scaling by a power of two is exact. u is in [2^-24, 1 - 2^-24]: never 0, never 1.
TTRL_SAMPLING_HD float uniform_of_hash(uint32_t h) {
  return (static_cast<float>(static_cast<int32_t>(h >> 9)) + 0.5f) * 1.1920928955078125e-07f;
}

TTRL_SAMPLING_HD float uniform_of(uint32_t skey, uint32_t token) {
  return uniform_of_hash(token_hash(skey, token));
}

// -ln(u) for u in [2^-25, 1], accurate to ~1 ulp relative (also for u near 1, where the result is
// tiny): u = 2^e * m with m in (sqrt(1/2), sqrt(2)], f = m - 1 (exact), ln(1 + f) = f - f^2/2 +
// f^3 Q(f) with Q a degree-7 fit (relative error < 6e-9 on the interval), e * ln 2 in two parts.
// Branch-free (selects only) so the CPU loops vectorise. Returns 0 for u == 1.
TTRL_SAMPLING_HD float neg_log_unit(float u) {
  const uint32_t bits = float_bits(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  uint32_t mb = (bits & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  const bool high = mb > 0x3FB504F3u;                // m > sqrt(2): use m / 2 and e + 1
  mb = high ? mb - 0x00800000u : mb;
  e = high ? e + 1 : e;
  const float f = bits_float(mb) - 1.0f;  // in (-0.293, 0.415], exact (Sterbenz)
  float q = -7.634492964e-02f;
  q = q * f + 1.276157498e-01f;
  q = q * f + -1.316018254e-01f;
  q = q * f + 1.420175880e-01f;
  q = q * f + -1.662335694e-01f;
  q = q * f + 2.000122666e-01f;
  q = q * f + -2.500081956e-01f;
  q = q * f + 3.333333135e-01f;
  const float f2 = f * f;
  const float ln1pf = f + f2 * (f * q - 0.5f);
  const float ef = static_cast<float>(e);
  const float ln_u = ef * kLn2Hi + (ef * kLn2Lo + ln1pf);
  return -ln_u;
}

// The race key of a kept token: E * 2^-t (smallest wins). E == 0 (u == 1) gives 0, never 0 * inf.
// t <= 0 is finite for kept tokens; 2^-t saturates to +inf below t = -128 (such a token cannot win).
TTRL_SAMPLING_HD float race_key(float neg_log_u, float t) {
  return neg_log_u > 0.0f ? neg_log_u * math::exp2_shared(-t) : 0.0f;
}

// Candidate filter of the race, with no transcendental: for a kept token with e = 2^t,
//   race_key < best  <=>  E < best * e   =>   1 - u < best * e      (E = -ln u >= 1 - u).
// best * e is inflated by 2^-12, far more than the few-ulp errors of the fp32 evaluations on either
// side, so the filter never rejects a token whose computed key would beat `best`; only the (rare)
// candidates pay for the log and the exp2 of their key: about ln(V) tokens per row. best = +inf
// admits every token with e > 0; a token with e == 0 (t < -126) is never admitted: its key exceeds
// 2^-24 * 2^126, far above the row max's key (<= -ln(2^-25) < 18), so it can never win. u == 1
// (key 0) is always admitted.
TTRL_SAMPLING_HD bool race_candidate(float u, float e, float best) {
  return u >= 1.0f || (1.0f - u) < best * e * (1.0f + 1.0f / 4096.0f);
}

// ------------------------------------------------------------------------------------------------
// Per-logit transforms.

// Poisoned rows (the contract of every backend; spec: ttrl_fast/reference/sampling.py): a row holding
// NaN or +inf logits has no distribution. Such an entry is read as -inf (probability 0), so the max,
// the sums, the truncation and the race stay defined and the token is drawn from the row's other
// entries (in [0, V) always); all three log-probs of the row are then NaN.
TTRL_SAMPLING_HD bool poisons_row(float x) { return !(x < INFINITY); }  // NaN or +inf
TTRL_SAMPLING_HD float unpoisoned(float x) { return x < INFINITY ? x : -INFINITY; }

// HF repetition penalty on a seen token: x / p if x > 0 else x * p. Evaluated in double and rounded
// once (x * (1/p) in double differs from x / p by ~1e-16 relative), so s is the fp32 rounding of
// the reference's float64 value.
TTRL_SAMPLING_HD float penalized(float x, bool seen, double penalty, double inv_penalty) {
  const double xd = static_cast<double>(x);
  const float pen = static_cast<float>(x > 0.0f ? xd * inv_penalty : xd * penalty);
  return seen ? pen : x;
}

// t = (s - m) * k, k = inv_t * log2(e): z - z_max in base 2 (-inf for banned / -inf logits).
TTRL_SAMPLING_HD float scaled(float s, float m, float k) { return (s - m) * k; }

TTRL_SAMPLING_HD float log2_scale(float inv_t) { return inv_t * kLog2e; }

// Order-preserving encoding of a float as uint32 (a < b <=> key(a) < key(b) for non-NaN values;
// +0 and -0 differ, which never matters here since t = (s - m) * k is never -0).
TTRL_SAMPLING_HD uint32_t order_key(float f) {
  const uint32_t b = float_bits(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

TTRL_SAMPLING_HD float order_key_float(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// The min-p threshold on t: keep t >= log2(min_p) (z_v >= z_max + log(min_p)). Returns the smallest
// float >= log2(min_p) so that the fp32 comparison never keeps a value the exact rule drops.
TTRL_SAMPLING_HD float min_p_threshold(double min_p) {
  const double l2 = log2(min_p);
  float thr = static_cast<float>(l2);
  if (static_cast<double>(thr) < l2) thr = nextafterf(thr, INFINITY);
  return thr;
}

}  // namespace sampling
}  // namespace ttrl_fast
