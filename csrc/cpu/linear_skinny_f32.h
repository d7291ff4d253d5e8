// fp32 "skinny" GEMM for the CPU backend, in the nn.Linear layout:
//
//   out[m, n] = sum_k x[m, k] * w[n, k]  (+ bias[n] when bias != nullptr)
//
// x is [M, K] with row stride ldx, w is [N, K] with row stride ldw (an nn.Linear weight), out is
// [M, N] with row stride ldo; strides are in elements and the last dimension of every operand is
// contiguous. Built for decode steps (M = 1 .. 64 rows against a wide weight), where the time is
// the streaming of w: the AVX-512 kernel reads each w row once per pass of up to 64 x rows
// (linear_f32_math.h::rows_per_pass), four w rows at a time against register blocks of up to 6 x
// rows, with no packing of w. Correct for any M, N, K >= 0 (K == 0 writes bias, or zeros).
//
// Summation order: linear_f32_math.h (fixed per K; both kernels evaluate it exactly, so they are
// bitwise equal and the result never depends on how columns are split between threads).
//
// No torch types and no threads: a kernel call computes the output columns [n_begin, n_end) for
// all M rows; the binding (bindings.cpp) splits the columns over threads with at::parallel_for.
#pragma once

#include <cstdint>

namespace ttrl_fast {
namespace cpu {

struct LinearF32Problem {
  const float* x;
  int64_t ldx;
  const float* w;
  int64_t ldw;
  const float* bias;  // [N] or nullptr
  float* out;
  int64_t ldo;
  int64_t M, N, K;
};

// True when this CPU (and OS) runs avx512f + avx512vl + avx512dq (decided once).
bool linear_f32_has_native();

// Columns [n_begin, n_end) of out, every row: the AVX-512 kernel when linear_f32_has_native()
// (unless force_portable), else the portable one.
void linear_f32_cols(const LinearF32Problem& p, int64_t n_begin, int64_t n_end, bool force_portable = false);

// The portable kernel (plain C++, any architecture; slow: one std::fma per product); for tests.
void linear_f32_cols_portable(const LinearF32Problem& p, int64_t n_begin, int64_t n_end);

#if defined(__x86_64__)
// The AVX-512 kernel (linear_skinny_f32_avx512.cpp). Only call it when linear_f32_has_native().
void linear_f32_cols_avx512(const LinearF32Problem& p, int64_t n_begin, int64_t n_end);
#endif

}  // namespace cpu
}  // namespace ttrl_fast
