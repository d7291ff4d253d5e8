// AVX-512 encodings of the two hot loops of selective_log_softmax_kernel.h (chunk_sums and
// grad_chunk). Same algorithm and polynomial as math::exp2_shared, but f = t - floor(t) comes from
// vreduceps and poly(f) * 2^floor(t) from vscalefps, which also handle -inf, underflow and NaN:
// about half the instructions of the portable encoding, which the compiler cannot derive itself.
// Included only by selective_log_softmax_avx512.cpp (inside its namespace).
// (<immintrin.h> is included by selective_log_softmax_avx512.cpp, outside any namespace.)

// 2^t: f = t - floor(t) from one vreduceps, poly(f) * 2^floor(t) from one vscalefps. Both are
// exact for the special values: t = -inf gives f = 0 and 2^-inf = 0; NaN stays NaN.
inline __m512 exp2_avx512(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(math::kExp2C6);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(math::kExp2C5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(math::kExp2C4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(math::kExp2C3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(math::kExp2C2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(math::kExp2C1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, t);
}

// t clamped below at -150 (2^-150 rounds to 0), so that 2^t * t is 0 and not 0 * -inf = NaN.
// vmaxps returns its second operand when either is NaN, so NaN propagates.
inline __m512 clamp_t_avx512(__m512 t) { return _mm512_max_ps(_mm512_set1_ps(-150.0f), t); }

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1u);
}

template <bool kEntropy>
inline void chunk_sums(const float* x, int64_t n, float m, float k, float& s_out, float& w_out) {
  const __m512 vm = _mm512_set1_ps(m), vk = _mm512_set1_ps(k);
  __m512 vs = _mm512_setzero_ps(), vw = _mm512_setzero_ps();
  auto step = [&](__m512 xv) {
    const __m512 t = _mm512_mul_ps(_mm512_sub_ps(xv, vm), vk);
    const __m512 e = exp2_avx512(t);
    vs = _mm512_add_ps(vs, e);
    if (kEntropy) vw = _mm512_fmadd_ps(e, clamp_t_avx512(t), vw);  // never 0 * -inf
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) step(_mm512_loadu_ps(x + i));
  if (i < n) step(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));  // 2^-inf = 0
  s_out = _mm512_reduce_add_ps(vs);
  w_out = kEntropy ? _mm512_reduce_add_ps(vw) : 0.0f;
}

template <bool kEntropy>
inline void grad_chunk(const float* x, float* out, int64_t n, float row_max,  // x may equal out
                       float log_sum, float inv_t, float g_logp, float g_ent, float h) {
  const __m512 vm = _mm512_set1_ps(row_max), vk = _mm512_set1_ps(math::log2_scale(inv_t));
  const __m512 vls2 = _mm512_set1_ps(log_sum * math::kLog2e), vln2 = _mm512_set1_ps(math::kLn2);
  const __m512 vneg_gl = _mm512_set1_ps(-g_logp * inv_t), vneg_ge = _mm512_set1_ps(-g_ent * inv_t);
  const __m512 vh = _mm512_set1_ps(h);
  auto grad = [&](__m512 xv) {
    // log2 p = (x - max) * inv_t * log2(e) - log_sum * log2(e)
    const __m512 t = _mm512_fmsub_ps(_mm512_sub_ps(xv, vm), vk, vls2);
    const __m512 p = exp2_avx512(t);
    __m512 g = _mm512_mul_ps(vneg_gl, p);  // -g_logp * p / T
    if (kEntropy) {  // - g_ent * p * (ln p + H) / T, with ln p from the clamped t (finite)
      const __m512 lp_plus_h = _mm512_fmadd_ps(clamp_t_avx512(t), vln2, vh);
      g = _mm512_fmadd_ps(vneg_ge, _mm512_mul_ps(p, lp_plus_h), g);
    }
    return g;
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, grad(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 mk = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, mk, grad(_mm512_maskz_loadu_ps(mk, x + i)));
  }
}

// bf16 logits read directly: each 16-element load is widened in registers (zero-extend, shift) in
// both passes, instead of converting the chunk into an fp32 buffer and reading that back.
#define TTRL_CPU_DIRECT_BF16 1

inline __m512 load_bf16x16(const bf16_bits* p, __mmask16 mk) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mk, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// NaN-ignoring max of a bf16 chunk (masked-off tail lanes are 0 bits = +0.0, so blend in -inf).
inline float chunk_max_bf16(const bf16_bits* x, int64_t n) {
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 vmax = neg_inf;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(load_bf16x16(x + i, 0xFFFF), vmax);
  if (i < n) {
    const __mmask16 mk = tail_mask(n - i);
    vmax = _mm512_max_ps(_mm512_mask_blend_ps(mk, neg_inf, load_bf16x16(x + i, mk)), vmax);
  }
  return _mm512_reduce_max_ps(vmax);
}

template <bool kEntropy>
inline void chunk_sums_bf16(const bf16_bits* x, int64_t n, float m, float k, float& s_out, float& w_out) {
  const __m512 vm = _mm512_set1_ps(m), vk = _mm512_set1_ps(k), neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 vs = _mm512_setzero_ps(), vw = _mm512_setzero_ps();
  auto step = [&](__m512 xv) {
    const __m512 t = _mm512_mul_ps(_mm512_sub_ps(xv, vm), vk);
    const __m512 e = exp2_avx512(t);
    vs = _mm512_add_ps(vs, e);
    if (kEntropy) vw = _mm512_fmadd_ps(e, clamp_t_avx512(t), vw);
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) step(load_bf16x16(x + i, 0xFFFF));
  if (i < n) {
    const __mmask16 mk = tail_mask(n - i);
    step(_mm512_mask_blend_ps(mk, neg_inf, load_bf16x16(x + i, mk)));
  }
  s_out = _mm512_reduce_add_ps(vs);
  w_out = kEntropy ? _mm512_reduce_add_ps(vw) : 0.0f;
}
