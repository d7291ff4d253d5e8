// Shared arithmetic of the selective log-softmax op.
//
// Every function here is `__host__ __device__`: the CUDA kernels call them per thread and the
// C++ CPU backend calls the very same code in its vectorised loops, so the CPU tests exercise the
// arithmetic the GPU runs, even on machines where the GPU kernel itself cannot run. (The CPU's
// AVX-512 variant encodes exp2_shared with vscalefps/vrndscaleps intrinsics: the same algorithm and
// polynomial; the portable encoding here is what the baseline/AVX2 variants and the GPU run, and the
// tests run every CPU variant.)
//
// Numerics (see ttrl_fast/reference/logprob.py for the spec):
//   * z_v = x_v / T. We never form z_v itself: large common offsets (x ~ 1e4) would lose all
//     precision in fp32. Instead every quantity is kept relative to the running raw row max m:
//     (x_v - m) is exact (Sterbenz) and <= 0.
//   * Sums run in base 2, which makes exp cheaper (no Cody-Waite reduction): with
//     k = inv_t * log2(e) and t_v = (x_v - m) * k,
//         s = sum_v 2^t_v,   w = sum_v 2^t_v * t_v        (fp32 accumulation always)
//     logp_y = (x_y - m) * inv_t - ln s,   entropy = ln s - ln2 * w / s.
//   * Rows containing NaN or +inf give NaN (never a plausible number); -inf entries have p = 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TTRL_HD __host__ __device__ __forceinline__
#else
#define TTRL_HD inline
#endif

namespace ttrl_fast {
namespace math {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// 2^f on [0, 1]: degree-6 polynomial fitted for minimum relative error (max 2.0e-9 in exact
// arithmetic, 8.4e-8 = 1.4 ulp evaluated by Horner in fp32). c0 = 1 and poly(1) = 2 exactly.
constexpr float kExp2C1 = 6.931470633e-01f;
constexpr float kExp2C2 = 2.402292937e-01f;
constexpr float kExp2C3 = 5.548529699e-02f;
constexpr float kExp2C4 = 9.675440378e-03f;
constexpr float kExp2C5 = 1.246779575e-03f;
constexpr float kExp2C6 = 2.161348239e-04f;

TTRL_HD float exp2_poly(float f) {
  float p = kExp2C6;
  p = p * f + kExp2C5;
  p = p * f + kExp2C4;
  p = p * f + kExp2C3;
  p = p * f + kExp2C2;
  p = p * f + kExp2C1;
  return p * f + 1.0f;
}

// 2^t for t <= ~128: t = n + f with n = floor(t), f in [0, 1), result = poly(f) * 2^n.
// Branch-free on plain floats so that g++ auto-vectorises it and nvcc runs it per thread.
// Returns 0 for t < -126 (including -inf; flushing the subnormal range changes nothing that
// matters at fp32 precision) and NaN for NaN.
TTRL_HD float exp2_shared(float t) {
  // Clamp with comparisons, not fminf/fmaxf: their NaN rules block vectorisation. A NaN t becomes
  // -127 here (finite, so the integer conversion below is defined) and is restored at the end.
  float tc = t > -127.0f ? t : -127.0f;
  tc = tc < 128.0f ? tc : 128.0f;
  // floor via the 1.5 * 2^23 round-to-nearest trick (exact for |t| < 2^22) and a correction:
  // floorf would leave the baseline x86-64 variant (no SSE4.1) with a scalar libm call.
  float n = (tc + 12582912.0f) - 12582912.0f;
  n = n > tc ? n - 1.0f : n;
  const float y = exp2_poly(tc - n);
  // 2^n from its exponent bits; n = -127 gives the bits of +0, so -inf maps to exactly 0.
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(float));
  float out = y * scale;
  out = (t != t) ? t : out;
  return out;
}

// exp(d) through the same base-2 path (used for per-entry probabilities in the backward).
TTRL_HD float exp_shared(float d) { return exp2_shared(d * kLog2e); }

// The base-2 scale of the shifted logits: t = (x - m) * log2_scale(inv_t).
TTRL_HD float log2_scale(float inv_t) { return inv_t * kLog2e; }

// Partial state of an online log-sum-exp over one row (or part of one), relative to the raw max m.
struct LseState {
  float m;  // max of the raw logits seen so far (-inf when empty)
  float s;  // sum 2^t, t = (x - m) * inv_t * log2(e)   (0 when empty; NaN poisons)
  float w;  // sum 2^t * t                               (entropy numerator, base 2)
};

TTRL_HD LseState lse_empty() { return LseState{-INFINITY, 0.0f, 0.0f}; }

// A state that poisons every merge: used when a row holds NaN or +inf.
TTRL_HD LseState lse_poison() { return LseState{NAN, NAN, NAN}; }

// e * t with the convention 0 * (-inf) = 0 (an entry with p = 0 adds nothing to the entropy).
TTRL_HD float xexp(float e, float t) { return e > 0.0f ? e * t : 0.0f; }

// Associative merge of two partial states. Order-independent up to rounding; the backends merge in
// a fixed order, so results are deterministic.
TTRL_HD LseState lse_merge(LseState a, LseState b, float inv_t) {
  if (a.s == 0.0f) return b;  // NaN s compares false: poison is never dropped
  if (b.s == 0.0f) return a;
  const float k = log2_scale(inv_t);
  const float m = fmaxf(a.m, b.m);
  const float ta = (a.m - m) * k, tb = (b.m - m) * k;  // <= 0
  const float ca = exp2_shared(ta), cb = exp2_shared(tb);
  LseState out;
  out.m = m;
  out.s = a.s * ca + b.s * cb;
  // w is relative to m: sum 2^(t+dt) (t+dt) = c * (w + s * dt) for a shift dt <= 0.
  out.w = ca * (a.w + a.s * ta) + cb * (b.w + b.s * tb);
  if (a.m != a.m || b.m != b.m) out = lse_poison();
  return out;
}

// Adds one logit to a state whose max m is already >= x (the caller rebased it first).
// A -inf logit adds exactly nothing, also to a still-empty state (where x - m would be NaN).
TTRL_HD void lse_accumulate(LseState& st, float x, float inv_t) {
  const float t = (x == -INFINITY) ? -INFINITY : (x - st.m) * log2_scale(inv_t);
  const float e = exp2_shared(t);
  st.s += e;
  st.w += xexp(e, t);
}

// Raises the state's max to m_new (>= st.m), rescaling the sums.
TTRL_HD void lse_rebase(LseState& st, float m_new, float inv_t) {
  if (st.s == 0.0f) {  // empty: nothing to rescale (avoids (-inf) - (-inf))
    st.m = m_new;
    return;
  }
  const float dt = (st.m - m_new) * log2_scale(inv_t);
  const float c = exp2_shared(dt);
  st.w = c * (st.w + st.s * dt);
  st.s = c * st.s;
  st.m = m_new;
}

// Per-row outputs of the forward pass.
struct RowResult {
  float logp;     // log p_y <= 0
  float entropy;  // H >= 0
  float max;      // saved for backward: raw row max
  float log_sum;  // saved for backward: log s
};

// Finishes a row. x_target is the raw logit at the index; target_ok is false when the index lies
// outside [0, V) (validated in Python; the kernel poisons instead of reading out of bounds).
TTRL_HD RowResult lse_finalize(LseState st, float x_target, bool target_ok, float inv_t) {
  RowResult r;
  r.max = st.m;
  r.log_sum = logf(st.s);
  float logp = (x_target - st.m) * inv_t - r.log_sum;
  // Rounding can leave logp at +1 ulp above 0 for a certain token: a log-prob is never positive.
  // (NaN > 0 is false, so NaN survives.)
  logp = logp > 0.0f ? 0.0f : logp;
  r.logp = target_ok ? logp : NAN;
  float h = r.log_sum - kLn2 * (st.w / st.s);
  r.entropy = h < 0.0f ? 0.0f : h;
  return r;
}

// log p_v for one entry, from the saved row statistics.
TTRL_HD float log_prob_of(float x, float row_max, float log_sum, float inv_t) {
  return (x - row_max) * inv_t - log_sum;
}

// d loss / d x_v for a non-target entry v, given p_v = exp(logp_v):
//   (1/T) * [ -g_logp * p_v - g_ent * p_v * (log p_v + H) ]
// The target entry adds target_grad_extra() on top.
TTRL_HD float dlogit_nontarget(float p, float logp_v, float g_logp, float g_ent, float entropy,
                               float inv_t) {
  return (-g_logp * p - g_ent * xexp(p, logp_v + entropy)) * inv_t;
}

// The same without the entropy term (the caller's entropy needs no gradient).
TTRL_HD float dlogit_nontarget_logp_only(float p, float g_logp, float inv_t) {
  return -g_logp * p * inv_t;
}

TTRL_HD float target_grad_extra(float g_logp, float inv_t) { return g_logp * inv_t; }

// bf16 <-> fp32 on raw bits (round to nearest even; NaN stays NaN).
TTRL_HD float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, sizeof(float));
  return f;
}

TTRL_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(float));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (f != f) ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

// IEEE fp16 <-> fp32 on raw bits, branch-free (selects only) so that the loops vectorise.
TTRL_HD float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(h) & 0x7FFFu;
  const uint32_t shifted = em << 13;
  float magnitude;  // exponent rebias by 2^112 covers normals and subnormals alike
  memcpy(&magnitude, &shifted, sizeof(float));
  magnitude *= 5.192296858534828e33f;  // 2^112
  uint32_t u;
  memcpy(&u, &magnitude, sizeof(float));
  u = (em >= 0x7C00u) ? (shifted | 0x7F800000u) : u;  // inf / NaN keep their payload
  u |= sign;
  float f;
  memcpy(&f, &u, sizeof(float));
  return f;
}

TTRL_HD uint16_t float_to_fp16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(float));
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  // Subnormal halves: adding 0.5 (as 2^-1 scaled magic) lets the FPU round the mantissa for us.
  const uint32_t denorm_magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  float denorm_magic;
  memcpy(&denorm_magic, &denorm_magic_bits, sizeof(float));
  float as_float;
  memcpy(&as_float, &u, sizeof(float));
  const float sum = as_float + denorm_magic;
  uint32_t sum_bits;
  memcpy(&sum_bits, &sum, sizeof(float));
  const uint32_t sub = sum_bits - denorm_magic_bits;
  // Normal halves: rebias the exponent and round the mantissa to nearest even.
  const uint32_t mant_odd = (u >> 13) & 1u;
  const uint32_t normal = (u + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + mant_odd) >> 13;
  uint32_t out = (u < (113u << 23)) ? sub : normal;
  out = (u >= (143u << 23)) ? ((u > 0x7F800000u) ? 0x7E00u : 0x7C00u) : out;  // overflow/inf/NaN
  return static_cast<uint16_t>(out | (sign >> 16));
}

}  // namespace math
}  // namespace ttrl_fast
