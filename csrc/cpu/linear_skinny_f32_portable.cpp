// fp32 skinny GEMM out[M, N] = x[M, K] @ w[N, K]^T (+ bias): the dispatcher and the portable
// fallback (see linear_skinny_f32.h). The fallback is plain C++ for any architecture and evaluates
// the summation order of linear_f32_math.h literally (16 lane sums by std::fma, folded in halves),
// so it is bitwise equal to the AVX-512 kernel; it is correct first and slow (one fma call per
// product where the target has no FMA instruction), which is why the Python layer prefers
// torch.nn.functional.linear on CPUs without AVX-512.
#include <algorithm>
#include <cstdint>

#include "linear_skinny_f32.h"
#include "ttrl_fast/linear_f32_math.h"

namespace ttrl_fast {
namespace cpu {
namespace {

bool detect_native() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

}  // namespace

bool linear_f32_has_native() {
  static const bool native = detect_native();
  return native;
}

void linear_f32_cols_portable(const LinearF32Problem& p, int64_t n_begin, int64_t n_end) {
  // Column-major walk: each w row is read from memory once and then stays in cache for the M rows.
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float* w = p.w + n * p.ldw;
    for (int64_t m = 0; m < p.M; ++m) {
      const float s = linear_f32::dot_f32(p.x + m * p.ldx, w, p.K);
      p.out[m * p.ldo + n] = p.bias != nullptr ? s + p.bias[n] : s;
    }
  }
}

void linear_f32_cols(const LinearF32Problem& p, int64_t n_begin, int64_t n_end, bool force_portable) {
#if defined(__x86_64__)
  if (!force_portable && linear_f32_has_native()) {
    linear_f32_cols_avx512(p, n_begin, n_end);
    return;
  }
#endif
  linear_f32_cols_portable(p, n_begin, n_end);
}

}  // namespace cpu
}  // namespace ttrl_fast
