// bf16 x bf16 -> fp32 GEMM: the dispatcher and the portable fallback (see gemm_bf16.h).
// The fallback is plain C++ for any architecture: correct first, then merely not absurdly slow
// (8 output columns per pass, so the compiler can keep 8 independent sums in one vector register
// without reassociating any of them).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm_bf16.h"

namespace ttrl_fast {
namespace cpu {
namespace {

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void fill_bias(float* C, int64_t ldc, int64_t M, int64_t N, const float* bias) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    for (int64_t n = 0; n < N; ++n) c[n] = bias != nullptr ? bias[n] : 0.0f;
  }
}

bool detect_native() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

}  // namespace

bool gemm_bf16_has_native() {
  static const bool native = detect_native();
  return native;
}

void gemm_bf16_nt_f32_portable(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C,
                               int64_t ldc, int64_t M, int64_t N, int64_t K, const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    fill_bias(C, ldc, M, N, bias);
    return;
  }
  constexpr int64_t kCols = 8;
  // A once in fp32 ([M, K], O(M * K) is the small operand); B 8 rows at a time, transposed to
  // [K][8] so the innermost loop runs across the 8 columns.
  std::vector<float> a32(static_cast<size_t>(M * K));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) a32[i * K + k] = bf16_to_float(A[i * lda + k]);
  const int64_t blocks = (N + kCols - 1) / kCols;
  const bool parallel = M * N * K >= (int64_t{1} << 20);
#pragma omp parallel if (parallel)
  {
    std::vector<float> bt(static_cast<size_t>(K * kCols));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t n0 = blk * kCols;
      const int64_t cols = std::min(kCols, N - n0);
      for (int64_t j = 0; j < kCols; ++j) {
        const uint16_t* b = B + (n0 + j) * ldb;
        for (int64_t k = 0; k < K; ++k) bt[k * kCols + j] = j < cols ? bf16_to_float(b[k]) : 0.0f;
      }
      for (int64_t i = 0; i < M; ++i) {
        const float* a = a32.data() + i * K;
        float acc[kCols] = {};
        for (int64_t k = 0; k < K; ++k) {
          const float av = a[k];
          const float* b = bt.data() + k * kCols;
          for (int64_t j = 0; j < kCols; ++j) acc[j] += av * b[j];
        }
        float* c = C + i * ldc + n0;
        for (int64_t j = 0; j < cols; ++j) c[j] = bias != nullptr ? acc[j] + bias[n0 + j] : acc[j];
      }
    }
  }
}

void gemm_bf16_nt_f32(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C, int64_t ldc,
                      int64_t M, int64_t N, int64_t K, const float* bias, bool force_portable) {
#if defined(__x86_64__)
  if (!force_portable && gemm_bf16_has_native()) {
    gemm_bf16_nt_f32_avx512(A, lda, B, ldb, C, ldc, M, N, K, bias);
    return;
  }
#endif
  gemm_bf16_nt_f32_portable(A, lda, B, ldb, C, ldc, M, N, K, bias);
}

}  // namespace cpu
}  // namespace ttrl_fast
