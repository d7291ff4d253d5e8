// bf16 x bf16 -> fp32 GEMM for the LM-head logits tile ("NT": both operands K-contiguous):
//
//   C[m, n] = sum_k A[m, k] * B[n, k]  (+ bias[n] when bias != nullptr)
//
// A is [M, K] with row stride lda, B is [N, K] with row stride ldb (an nn.Linear weight [V, H]),
// C is [M, N] fp32 with row stride ldc (it may be a slice of a wider buffer). Strides are in
// elements, the last dimension of every operand is contiguous. bf16 values are passed as their
// raw 16-bit patterns. Products of two bf16 are exact in fp32 and the sums are kept in fp32; the
// summation order is fixed (it depends on K only, never on the thread count), so repeated calls
// are bitwise equal. Any M, N, K >= 0 works; K == 0 writes bias (or zeros). The native kernel
// (vdpbf16ps) reads bf16 denormals as zero and flushes denormal results, the portable one does not.
//
// No torch types: the binding in bindings.cpp validates tensors. Both kernels parallelise with
// OpenMP (omp_get_max_threads() threads) over column blocks of C; the native one packs B 64 rows
// x 512 columns at a time into a 64 KiB buffer per thread.
#pragma once

#include <cstdint>

namespace ttrl_fast {
namespace cpu {

// True when this CPU (and OS) runs avx512f + avx512bw + avx512bf16 (decided once).
bool gemm_bf16_has_native();

// Native kernel when gemm_bf16_has_native() (unless force_portable), else the portable one.
void gemm_bf16_nt_f32(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C, int64_t ldc,
                      int64_t M, int64_t N, int64_t K, const float* bias, bool force_portable = false);

// The portable fallback (plain C++, any architecture); exposed for tests.
void gemm_bf16_nt_f32_portable(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C,
                               int64_t ldc, int64_t M, int64_t N, int64_t K, const float* bias);

#if defined(__x86_64__)
// The avx512-bf16 kernel (gemm_bf16_avx512.cpp). Only call it when gemm_bf16_has_native().
void gemm_bf16_nt_f32_avx512(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C,
                             int64_t ldc, int64_t M, int64_t N, int64_t K, const float* bias);
#endif

}  // namespace cpu
}  // namespace ttrl_fast
