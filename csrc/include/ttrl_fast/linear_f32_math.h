// fp32 "skinny" linear layer, out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) with w in the nn.Linear
// layout: the summation order that both CPU kernels (csrc/cpu/linear_skinny_f32_{avx512,portable}.cpp)
// follow, and the blocking they share. Plain C++, no torch.
//
// Summation order of one output element (the spec; it depends on K only, never on M, N, the
// blocking, the ISA or the thread count, so results are bitwise reproducible):
//   1. 16 lane sums: lane j accumulates x[m, k] * w[n, k] for k = j, j + 16, j + 32, ... < K in
//      increasing k, each step a fused multiply-add (one rounding), starting from +0. When K is not
//      a multiple of 16, the lanes past K in the last 16-chunk add 0 * 0 (what the AVX-512 kernel's
//      masked loads produce: it can only turn a -0 sum into +0).
//   2. The 16 lane sums fold in halves: s8[j] = l[j] + l[j + 8], s4[j] = s8[j] + s8[j + 4],
//      s2[j] = s4[j] + s4[j + 2], s = s2[0] + s2[1].
//   3. out = s + bias[n] when there is a bias (else out = s).
// The portable kernel evaluates exactly this per element with std::fma, so it is bitwise equal to
// the AVX-512 one (the tests check it). The error is that of fp32 accumulation: per element at most
// about (K / 16 + 4) * 2^-24 * sum_k |x[m, k] * w[n, k]| (+ one rounding of the bias add).
#pragma once

#include <cmath>
#include <cstdint>

// Internal linkage: each ISA variant compiles its own copy, so the linker can never hand an AVX-512
// body to the portable file.
#define TTRL_LINEAR_INLINE static inline

namespace ttrl_fast {
namespace linear_f32 {

constexpr int kLanes = 16;        // fp32 lanes of one zmm register: the K stride of a lane sum
constexpr int kBlockCols = 4;     // output columns (w rows) per register block
constexpr int kBlockRowsMax = 6;  // output rows (x rows) per register block: 6 x 4 = 24 accumulators

// Step 2 of the spec: the fixed fold-in-halves reduction of the 16 lane sums.
TTRL_LINEAR_INLINE float fold_lanes(const float lanes[kLanes]) {
  float s8[8], s4[4];
  for (int j = 0; j < 8; ++j) s8[j] = lanes[j] + lanes[j + 8];
  for (int j = 0; j < 4; ++j) s4[j] = s8[j] + s8[j + 4];
  const float s2a = s4[0] + s4[2];
  const float s2b = s4[1] + s4[3];
  return s2a + s2b;
}

// Steps 1-2 of the spec for one output element: sum_k x[k] * w[k] (K >= 0; K == 0 gives +0).
TTRL_LINEAR_INLINE float dot_f32(const float* x, const float* w, int64_t K) {
  float lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] = std::fma(x[k + j], w[k + j], lanes[j]);
  if (k < K) {
    for (int j = 0; j < kLanes; ++j) {
      const bool in = k + j < K;
      lanes[j] = std::fma(in ? x[k + j] : 0.0f, in ? w[k + j] : 0.0f, lanes[j]);
    }
  }
  return fold_lanes(lanes);
}

// Rows of x per pass over the w columns of a task: the rows of one pass (rows * K * 4 bytes) stay
// in L2 (512 KiB of the 1-2 MiB) while every w row of the task streams past them once; more rows
// take another pass over the (then L3- or DRAM-resident) w. At least one register block.
TTRL_LINEAR_INLINE int64_t rows_per_pass(int64_t K) {
  const int64_t rows = (int64_t{512} << 10) / (4 * (K > 0 ? K : 1));
  return rows < kBlockRowsMax ? kBlockRowsMax : (rows > 64 ? 64 : rows);
}

}  // namespace linear_f32
}  // namespace ttrl_fast
