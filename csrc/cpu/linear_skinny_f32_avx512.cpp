// fp32 skinny GEMM out[M, N] = x[M, K] @ w[N, K]^T (+ bias), the AVX-512 kernel (see
// linear_skinny_f32.h); x86-64 only. Standard headers come before the target pragma so only our
// kernel gets the wider ISA.
//
// Design. Dot products, no packing: w rows are already K-contiguous, so 4 w rows are streamed side
// by side against a register block of MR <= 6 x rows: per 16-wide step of K, 4 w loads + MR x
// loads feed MR * 4 FMAs into MR * 4 zmm accumulators (24 at MR = 6, plus 4 w and 1 x register).
// Each accumulator holds the 16 lane sums of one output (linear_f32_math.h, step 1); the K tail is
// a masked load (zeros past K). At the end of K, 16 accumulators (4 rows x 4 columns) fold in
// halves with 15 adds and 30 shuffles into one zmm holding the 4 x 4 outputs, one 128-bit block
// per row (step 2, see reduce_4x4), the bias is added (step 3) and each row is one masked 128-bit
// store.
//
// Bytes per call: w is read from memory once per pass of up to 64 x rows (rows_per_pass), 4 * N * K
// bytes per pass; the 4 w rows of a column block (16 * K bytes) are prefetched while the previous
// column block is computed and then read from cache by each of the pass's register blocks. The x rows
// of a pass (<= 512 KiB) stay in L2 and are read once per column block; out is written once
// (4 * M * N bytes). Columns are independent: a thread's range of columns needs no other thread.
#include <algorithm>
#include <cstdint>

#include "ttrl_fast/linear_f32_math.h"

#if defined(__x86_64__)
// g++ 12 reports the deliberately undefined vectors inside the avx512 shuffle/extract intrinsics as
// "(may be) used uninitialized" once they are inlined here (a false positive, gone in g++ 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")

#include "linear_skinny_f32.h"

namespace ttrl_fast {
namespace cpu {
namespace {

using linear_f32::kBlockCols;
using linear_f32::kBlockRowsMax;
using linear_f32::kLanes;
static_assert(kLanes == 16 && kBlockCols == 4, "reduce_4x4 folds 16 lanes of 4 x 4 outputs");

// Software prefetch of the next column block's w rows while the current one is computed: every w
// row is a new stream for the hardware prefetchers (which restart at each 4 KiB page), and without
// it the memory time adds to the compute time instead of overlapping it. The L2-level hint (T2)
// measured better than T0 and NTA on Zen 4 (more lines in flight, L1 not flooded).
constexpr auto kPrefetchHint = _MM_HINT_T2;

// Where reduce_4x4 expects the accumulator of (row r, column c): see its comment.
constexpr int kSlotOfRow[4] = {0, 8, 4, 12};
constexpr int kSlotOfCol[4] = {0, 2, 1, 3};

// v[slot] are 16 lane-sum vectors; returns y with y[4 r + c] = fold(v[kSlotOfRow[r] + kSlotOfCol[c]]),
// each fold exactly the fold-in-halves of linear_f32_math.h::fold_lanes (float addition commutes,
// so only which lanes are added at which level matters):
//   1. lanes j + 8 onto j:  u[i]  = [s8(v[i]) | s8(v[i + 8])]                          (256-bit halves)
//   2. lanes j + 4 onto j:  t[i]  = [s4(v[i]) | s4(v[i + 8]) | s4(v[i + 4]) | s4(v[i + 12])]
//   3. lanes j + 2 onto j:  q[i]  = per 128-bit block b: [s2(t[i].b) | s2(t[i + 2].b)]
//   4. lane 1 onto 0:       y     = per block b: [s(t[0].b), s(t[2].b), s(t[1].b), s(t[3].b)]
// Block b of t[i] holds v[i + kSlotOfRow[b]], lane c of a block comes from t[kSlotOfCol[c]].
inline __m512 reduce_4x4(const __m512 v[16]) {
  __m512 u[8], t[4], q[2];
  // [a.lo | b.hi] + [a.hi | b.lo]: a blend and one cross-lane shuffle (cheaper than two shuffles).
  for (int i = 0; i < 8; ++i)
    u[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, v[i], v[i + 8]), _mm512_shuffle_f32x4(v[i], v[i + 8], 0x4E));
  for (int i = 0; i < 4; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[i], u[i + 4], 0x88), _mm512_shuffle_f32x4(u[i], u[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i) {
    const __m512d a = _mm512_castps_pd(t[i]);
    const __m512d b = _mm512_castps_pd(t[i + 2]);
    q[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], 0x88), _mm512_shuffle_ps(q[0], q[1], 0xDD));
}

inline __m128 block128(__m512 y, int b) {
  switch (b) {
    case 0: return _mm512_castps512_ps128(y);
    case 1: return _mm512_extractf32x4_ps(y, 1);
    case 2: return _mm512_extractf32x4_ps(y, 2);
    default: return _mm512_extractf32x4_ps(y, 3);
  }
}

// out[MR rows, cols <= 4 columns] = x[MR rows] . w rows wr[0..3] (+ bias[0..cols)). wr[c] for
// c >= cols repeat a valid row; those columns are computed and never stored.
template <int MR, int NPF>
void register_block(const float* x, int64_t ldx, const float* const wr[kBlockCols], const float* const pf[kBlockCols],
                    int64_t K, float* out, int64_t ldo, const float* bias, int cols) {
  __m512 acc[MR][kBlockCols];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kBlockCols; ++c) acc[r][c] = _mm512_setzero_ps();
  const float* w0 = wr[0];
  const float* w1 = wr[1];
  const float* w2 = wr[2];
  const float* w3 = wr[3];
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
#pragma GCC unroll 4
    for (int c = 0; c < NPF; ++c) _mm_prefetch(reinterpret_cast<const char*>(pf[c] + k), kPrefetchHint);
    const __m512 wv[kBlockCols] = {_mm512_loadu_ps(w0 + k), _mm512_loadu_ps(w1 + k), _mm512_loadu_ps(w2 + k),
                                   _mm512_loadu_ps(w3 + k)};
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 4
      for (int c = 0; c < kBlockCols; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (k < K) {  // masked tail: zeros past K in both operands, so those lanes add 0 * 0
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 wv[kBlockCols] = {_mm512_maskz_loadu_ps(m, w0 + k), _mm512_maskz_loadu_ps(m, w1 + k),
                                   _mm512_maskz_loadu_ps(m, w2 + k), _mm512_maskz_loadu_ps(m, w3 + k)};
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * ldx + k);
#pragma GCC unroll 4
      for (int c = 0; c < kBlockCols; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  const __mmask8 colmask = static_cast<__mmask8>((1u << cols) - 1);
  const __m512 bias4 = bias != nullptr ? _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(colmask, bias)) : __m512{};
#pragma GCC unroll 2
  for (int r0 = 0; r0 < MR; r0 += 4) {
    __m512 v[16];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kBlockCols; ++c)
        v[kSlotOfRow[r] + kSlotOfCol[c]] = r0 + r < MR ? acc[r0 + r < MR ? r0 + r : 0][c] : _mm512_setzero_ps();
    __m512 y = reduce_4x4(v);
    if (bias != nullptr) y = _mm512_add_ps(y, bias4);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
      if (r0 + r < MR) _mm_mask_storeu_ps(out + (r0 + r) * ldo, colmask, block128(y, r));
  }
}

using RegisterBlock = void (*)(const float*, int64_t, const float* const*, const float* const*, int64_t, float*,
                               int64_t, const float*, int);
static_assert(kBlockRowsMax == 6, "update the register block table");
#define TTRL_BLOCKS(npf)                                                                              \
  {nullptr, &register_block<1, npf>, &register_block<2, npf>, &register_block<3, npf>, &register_block<4, npf>, \
   &register_block<5, npf>, &register_block<6, npf>}
// [prefetched rows: 0, 1, 2, 4 -> index 0..3][rows of the register block]
constexpr RegisterBlock kRegisterBlocks[4][kBlockRowsMax + 1] = {TTRL_BLOCKS(0), TTRL_BLOCKS(1), TTRL_BLOCKS(2),
                                                                 TTRL_BLOCKS(4)};
#undef TTRL_BLOCKS

}  // namespace

void linear_f32_cols_avx512(const LinearF32Problem& p, int64_t n_begin, int64_t n_end) {
  if (p.M <= 0 || n_begin >= n_end) return;
  const int64_t pass_rows = linear_f32::rows_per_pass(p.K);
  for (int64_t m_pass = 0; m_pass < p.M; m_pass += pass_rows) {
    // The rows of this pass in register blocks of balanced sizes (8 rows: 4 + 4, not 6 + 2).
    const int64_t rows = std::min(pass_rows, p.M - m_pass);
    const int64_t blocks = (rows + kBlockRowsMax - 1) / kBlockRowsMax;
    const int64_t base = rows / blocks, extra = rows % blocks;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kBlockCols) {
      const int cols = static_cast<int>(std::min<int64_t>(kBlockCols, n_end - n0));
      const float* wr[kBlockCols];
      for (int c = 0; c < kBlockCols; ++c) wr[c] = p.w + (n0 + std::min(c, cols - 1)) * p.ldw;
      // The register blocks share the prefetch of the next column block's w rows: 4, 2 + 2,
      // 2 + 1 + 1 or 1 + 1 + 1 + 1 (+ 0 ...) rows each, so the memory traffic overlaps all of them.
      const float* pf[kBlockCols];
      for (int c = 0; c < kBlockCols; ++c) pf[c] = p.w + std::min(n0 + kBlockCols + c, n_end - 1) * p.ldw;
      const float* bias = p.bias != nullptr ? p.bias + n0 : nullptr;
      int64_t m = m_pass;
      int pf_row = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const int mr = static_cast<int>(base + (b < extra ? 1 : 0));
        const int npf = blocks == 1 ? 4 : blocks == 2 ? 2 : blocks == 3 ? (b == 0 ? 2 : 1) : (b < 4 ? 1 : 0);
        kRegisterBlocks[npf == 4 ? 3 : npf][mr](p.x + m * p.ldx, p.ldx, wr, pf + pf_row, p.K, p.out + m * p.ldo + n0,
                                                p.ldo, bias, cols);
        pf_row += npf;
        m += mr;
      }
    }
  }
}

}  // namespace cpu
}  // namespace ttrl_fast
#endif
