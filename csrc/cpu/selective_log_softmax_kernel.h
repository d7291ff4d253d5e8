// Vectorised CPU kernels for selective log-softmax, compiled once per ISA.
//
// Included by selective_log_softmax_{avx512,avx2,baseline}.cpp, each of which defines
// TTRL_ISA_NS (the namespace of its variant) and a `#pragma GCC target` before including this
// file, so the same source becomes three object files and the dispatcher picks one at run time.
//
// Per row of V logits of element size E (bytes):
//   forward  reads V*E once (+ the target logit), writes 16 bytes (logp, entropy, 2 stats)
//   backward reads V*E once, writes V*E (the gradient)
// A row is processed in chunks of kChunk elements that stay in L1: a max pass over the chunk,
// then one exp per element. Each chunk is reduced to its own LseState and merged into the row's
// with the shared lse_merge(), so only one exp per element is paid (no per-element rescaling).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "selective_log_softmax.h"
#include "ttrl_fast/logprob_math.h"

namespace ttrl_fast {
namespace cpu {
namespace TTRL_ISA_NS {

using math::LseState;

constexpr int64_t kChunk = 2048;  // 8 KiB of fp32: the chunk's second pass hits L1

// Element types as stored in memory (16-bit types are raw bits, converted with the shared helpers).
struct bf16_bits {
  uint16_t x;
};
struct fp16_bits {
  uint16_t x;
};

template <typename T>
inline float load_float(const T* p, int64_t i);
template <>
inline float load_float<float>(const float* p, int64_t i) { return p[i]; }
template <>
inline float load_float<bf16_bits>(const bf16_bits* p, int64_t i) {
  return math::bf16_bits_to_float(p[i].x);
}
template <>
inline float load_float<fp16_bits>(const fp16_bits* p, int64_t i) {
  return math::fp16_bits_to_float(p[i].x);
}

template <typename T>
inline void store_float(T* p, int64_t i, float v);
template <>
inline void store_float<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
inline void store_float<bf16_bits>(bf16_bits* p, int64_t i, float v) {
  p[i].x = math::float_to_bf16_bits(v);
}
template <>
inline void store_float<fp16_bits>(fp16_bits* p, int64_t i, float v) {
  p[i].x = math::float_to_fp16_bits(v);
}

// NaN-ignoring max (NaN is caught later: it poisons the exp sum).
inline float chunk_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// Returns a pointer to n fp32 values of the chunk (the source itself for fp32, else `buf`) and
// their max in *max_out: for 16-bit types one pass converts and reduces.
template <typename T>
inline const float* chunk_as_float_with_max(const T* src, int64_t n, float* buf, float* max_out) {
  if constexpr (std::is_same<T, float>::value) {
    *max_out = chunk_max(src, n);
    return src;
  } else {
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) {
      const float v = load_float(src, i);
      buf[i] = v;
      m = v > m ? v : m;
    }
    *max_out = m;
    return buf;
  }
}

// Returns a pointer to n fp32 values of the chunk: the source itself for fp32, else `buf`.
template <typename T>
inline const float* chunk_as_float(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same<T, float>::value) {
    (void)n;
    (void)buf;
    return src;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = load_float(src, i);
    return buf;
  }
}

inline bool chunk_has_nan(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (x[i] != x[i]) return true;
  return false;
}

#if defined(TTRL_CPU_AVX512_INTRINSICS)
#include "selective_log_softmax_avx512_loops.h"
#else
// s = sum 2^t and w = sum 2^t * t over a chunk, t = (x - m) * k (see logprob_math.h).
template <bool kEntropy>
inline void chunk_sums(const float* x, int64_t n, float m, float k, float& s_out, float& w_out) {
  float s = 0.0f, w = 0.0f;
#pragma omp simd reduction(+ : s, w)
  for (int64_t i = 0; i < n; ++i) {
    const float t = (x[i] - m) * k;
    const float e = math::exp2_shared(t);
    s += e;
    if (kEntropy) w += math::xexp(e, t);
  }
  s_out = s;
  w_out = w;
}

// Gradient of one chunk of a row, all entries treated as non-target (the caller fixes the target).
template <bool kEntropy>
inline void grad_chunk(const float* x, float* out, int64_t n, float row_max,  // x may equal out
                       float log_sum, float inv_t, float g_logp, float g_ent, float h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float lp = math::log_prob_of(x[i], row_max, log_sum, inv_t);
    const float p = math::exp_shared(lp);
    out[i] = kEntropy ? math::dlogit_nontarget(p, lp, g_logp, g_ent, h, inv_t)
                      : math::dlogit_nontarget_logp_only(p, g_logp, inv_t);
  }
}
#endif

// The chunk's own LseState, relative to its own max m.
template <bool kEntropy>
inline LseState chunk_state(const float* x, int64_t n, float m, float inv_t) {
  if (m == -std::numeric_limits<float>::infinity()) {
    // Every entry is -inf (p = 0, contributes nothing) or NaN (must poison the row).
    return chunk_has_nan(x, n) ? math::lse_poison() : math::lse_empty();
  }
  LseState st{m, 0.0f, 0.0f};
  chunk_sums<kEntropy>(x, n, m, math::log2_scale(inv_t), st.s, st.w);
  return st;
}

template <typename T, bool kEntropy>
void forward_rows_typed(const ForwardArgs& a, int64_t begin, int64_t end) {
  const T* base = static_cast<const T*>(a.logits.data);
  const int64_t V = a.logits.V;
  alignas(64) float buf[kChunk];
  for (int64_t r = begin; r < end; ++r) {
    if (a.mask != nullptr && !a.mask[r]) {  // masked: no vocab pass at all
      a.logp[r] = 0.0f;
      if (kEntropy) a.entropy[r] = 0.0f;
      a.stats[2 * r] = 0.0f;
      a.stats[2 * r + 1] = 0.0f;
      continue;
    }
    const T* row = base + a.logits.offset(r);
    LseState st = math::lse_empty();
    for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
      const int64_t n = std::min(kChunk, V - c0);
#if defined(TTRL_CPU_DIRECT_BF16)
      if constexpr (std::is_same<T, bf16_bits>::value) {
        const float m = chunk_max_bf16(row + c0, n);
        LseState cs{m, 0.0f, 0.0f};
        if (m == -std::numeric_limits<float>::infinity()) {  // rare: all -inf or NaN; check on fp32
          cs = chunk_has_nan(chunk_as_float(row + c0, n, buf), n) ? math::lse_poison() : math::lse_empty();
        } else {
          chunk_sums_bf16<kEntropy>(row + c0, n, m, math::log2_scale(a.inv_t), cs.s, cs.w);
        }
        st = math::lse_merge(st, cs, a.inv_t);
        continue;
      }
#endif
      float m;
      const float* x = chunk_as_float_with_max(row + c0, n, buf, &m);
      st = math::lse_merge(st, chunk_state<kEntropy>(x, n, m, a.inv_t), a.inv_t);
    }
    const int64_t y = a.index[r];
    const bool target_ok = y >= 0 && y < V;
    const float x_target = target_ok ? load_float(row, y) : 0.0f;
    const math::RowResult res = math::lse_finalize(st, x_target, target_ok, a.inv_t);
    a.logp[r] = res.logp;
    if (kEntropy) a.entropy[r] = res.entropy;
    a.stats[2 * r] = res.max;
    a.stats[2 * r + 1] = res.log_sum;
  }
}

// Gradient of one chunk, written in the logits' dtype through an fp32 scratch for 16-bit types.
template <typename T, bool kEntropy>
inline void backward_chunk(const float* x, T* out, int64_t n, float row_max, float log_sum, float inv_t,
                           float g_logp, float g_ent, float h, float* scratch) {
  if constexpr (std::is_same<T, float>::value) {
    grad_chunk<kEntropy>(x, out, n, row_max, log_sum, inv_t, g_logp, g_ent, h);
  } else {
    grad_chunk<kEntropy>(x, scratch, n, row_max, log_sum, inv_t, g_logp, g_ent, h);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store_float(out, i, scratch[i]);
  }
}

template <typename T, bool kEntropy>
void backward_rows_typed(const BackwardArgs& a, int64_t begin, int64_t end) {
  const T* base = static_cast<const T*>(a.logits.data);
  T* grad = static_cast<T*>(a.grad_logits);
  const int64_t V = a.logits.V;
  const float inv_t = a.inv_t;
  alignas(64) float buf[kChunk];
  alignas(64) float scratch[kChunk];
  for (int64_t r = begin; r < end; ++r) {
    T* out = grad + r * V;
    if (a.mask != nullptr && !a.mask[r]) {
      std::memset(static_cast<void*>(out), 0, sizeof(T) * V);
      continue;
    }
    const T* row = base + a.logits.offset(r);
    const float row_max = a.stats[2 * r], log_sum = a.stats[2 * r + 1];
    const float g_logp = a.grad_logp != nullptr ? a.grad_logp[r] : 0.0f;
    const float g_ent = kEntropy ? a.grad_entropy[r] : 0.0f;
    const float h = kEntropy ? a.entropy[r] : 0.0f;
    // The target logit is read before the vocabulary loop, so the gradient may overwrite the logits
    // in place (grad_logits == logits, used by the fused LM head on its own scratch tile).
    const int64_t y = a.index[r];
    const bool has_target = y >= 0 && y < V;
    const float x_target = has_target ? load_float(row, y) : 0.0f;
    for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
      const int64_t n = std::min(kChunk, V - c0);
      const float* x = chunk_as_float(row + c0, n, buf);
      backward_chunk<T, kEntropy>(x, out + c0, n, row_max, log_sum, inv_t, g_logp, g_ent, h, scratch);
    }
    if (has_target) {  // the target entry: recompute in fp32, add the indicator term, store once
      const float lp = math::log_prob_of(x_target, row_max, log_sum, inv_t);
      const float p = math::exp_shared(lp);
      const float g = (kEntropy ? math::dlogit_nontarget(p, lp, g_logp, g_ent, h, inv_t)
                                : math::dlogit_nontarget_logp_only(p, g_logp, inv_t)) +
                      math::target_grad_extra(g_logp, inv_t);
      store_float(out, y, g);
    }
  }
}

template <typename T>
void forward_rows_dtype(const ForwardArgs& a, int64_t begin, int64_t end) {
  if (a.with_entropy)
    forward_rows_typed<T, true>(a, begin, end);
  else
    forward_rows_typed<T, false>(a, begin, end);
}

template <typename T>
void backward_rows_dtype(const BackwardArgs& a, int64_t begin, int64_t end) {
  if (a.grad_entropy != nullptr)
    backward_rows_typed<T, true>(a, begin, end);
  else
    backward_rows_typed<T, false>(a, begin, end);
}

void forward_rows(const ForwardArgs& a, int64_t begin, int64_t end) {
  switch (a.logits.dtype) {
    case DType::kFloat32: return forward_rows_dtype<float>(a, begin, end);
    case DType::kBFloat16: return forward_rows_dtype<bf16_bits>(a, begin, end);
    case DType::kFloat16: return forward_rows_dtype<fp16_bits>(a, begin, end);
  }
}

void backward_rows(const BackwardArgs& a, int64_t begin, int64_t end) {
  switch (a.logits.dtype) {
    case DType::kFloat32: return backward_rows_dtype<float>(a, begin, end);
    case DType::kBFloat16: return backward_rows_dtype<bf16_bits>(a, begin, end);
    case DType::kFloat16: return backward_rows_dtype<fp16_bits>(a, begin, end);
  }
}

}  // namespace TTRL_ISA_NS
}  // namespace cpu
}  // namespace ttrl_fast
