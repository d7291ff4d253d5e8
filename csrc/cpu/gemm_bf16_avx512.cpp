// bf16 x bf16 -> fp32 GEMM, the avx512-bf16 kernel (see gemm_bf16.h); x86-64 only.
// Standard headers come before the target pragma so only our kernels get the wider ISA.
//
// Design. OpenMP threads take chunks of 64-column tiles of C (64 rows of B, the vocabulary side)
// from a shared counter. For one tile it walks K in blocks of kKC: it packs B[tile, kblock] into the
// VNNI layout [kKC/2][4 panels][16 columns][2] (zero padding the N tail and an odd K; 64 KiB per
// thread, it stays in L2 while every row of A streams past it), then runs the register-blocked
// microkernel over all M rows: kMR = 6 rows x 64 columns = 24 zmm accumulators; each step
// broadcasts A[i, k:k+2] as one 32-bit word and issues vdpbf16ps against the 4 packed B vectors.
// While one block is consumed, the B rows of the next one are prefetched into L2 a few rows per
// microkernel call (64 strided rows are more streams than the hardware prefetcher follows).
// Accumulators start at zero on the first K block and reload C on the later ones; the bias is
// added at the store of the last one. The summation order of every C element therefore depends
// on K (and kKC) only: results are bitwise reproducible and independent of the thread count.
// vdpbf16ps treats bf16 denormal inputs as zero and flushes denormal results (DAZ/FTZ), as the
// instruction specifies; the portable fallback keeps them, so the two paths can differ there.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include <omp.h>

#if defined(__x86_64__)
// g++ 12 reports the deliberately undefined vectors inside the avx512 unpack/shuffle intrinsics
// as "may be used uninitialized" once they are inlined here (a false positive, gone in g++ 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

#include "gemm_bf16.h"

namespace ttrl_fast {
namespace cpu {
namespace {

constexpr int kNV = 4;                // zmm vectors of 16 columns per tile
constexpr int64_t kNR = 16 * kNV;     // columns per tile
constexpr int kMR = 6;                // rows per microkernel call
constexpr int64_t kKC = 512;          // K block (even, so pairs never straddle blocks)

// 16x16 transpose of 32-bit elements: r[j] = row j in, r[c] = column c out.
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // Per 128-bit lane L, u[4g + j] holds rows 4g..4g+3 of column 4L + j.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // Column 4L + j gathers lane L of u[j], u[4 + j], u[8 + j], u[12 + j] (a 4x4 lane transpose).
  for (int j = 0; j < 4; ++j) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    r[0 + j] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// Packs rows [n0, n0 + nr) (nr <= 16 * nv) and columns [k0, k1) of B into
// dst[kp][nv][16][2] (kp = 0 .. ceil((k1 - k0) / 2)), zeros beyond row nr or column k1.
void pack_b(const uint16_t* B, int64_t ldb, int64_t n0, int64_t nr, int nv, int64_t k0, int64_t k1,
            uint16_t* dst) {
  const int64_t kc = k1 - k0;
  const int64_t kcp = (kc + 1) / 2;
  for (int v = 0; v < nv; ++v) {
    for (int64_t kp0 = 0; kp0 < kcp; kp0 += 16) {
      const int64_t k = k0 + 2 * kp0;
      const int64_t count = std::min<int64_t>(32, k1 - k);
      const __mmask32 kmask = count >= 32 ? ~__mmask32{0} : ((__mmask32{1} << count) - 1);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) {
        const int64_t row = 16 * v + j;
        const uint16_t* src = B + (n0 + row) * ldb + k;
        r[j] = row >= nr      ? _mm512_setzero_si512()
               : count >= 32 ? _mm512_loadu_si512(src)
                             : _mm512_maskz_loadu_epi16(kmask, src);
      }
      transpose16x16_epi32(r);
      const int64_t pairs = std::min<int64_t>(16, kcp - kp0);
      for (int64_t t = 0; t < pairs; ++t) _mm512_store_si512(dst + ((kp0 + t) * nv + v) * 32, r[t]);
    }
  }
}

struct AlignedDelete {
  void operator()(uint16_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

inline uint32_t load_pair(const uint16_t* p) {
  uint32_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

// C[MR rows, 16 * NV columns] (+)= A[MR rows, 2 * kpairs (+ 1 when odd)] x packed B. `bias`
// (already offset to the tile) is added before the store when non-null; `tail` masks the
// columns of the last vector.
template <int MR, int NV>
void microkernel(const uint16_t* a, int64_t lda, const uint16_t* bp, int64_t kpairs, bool odd, float* c,
                 int64_t ldc, bool accumulate, const float* bias, __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : __mmask16(0xFFFF);
      acc[i][v] = accumulate ? _mm512_maskz_loadu_ps(m, c + i * ldc + 16 * v) : _mm512_setzero_ps();
    }
  }
  const uint16_t* rows[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) rows[i] = a + i * lda;
  for (int64_t kp = 0; kp < kpairs; ++kp) {
    __m512bh b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_load_si512(bp + (kp * NV + v) * 32);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(load_pair(rows[i] + 2 * kp)));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, b[v]);
    }
  }
  if (odd) {  // the last k alone: A's partner half is zero, B's was packed as zero
    __m512bh b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_load_si512(bp + (kpairs * NV + v) * 32);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(rows[i][2 * kpairs]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, b[v]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = v == NV - 1 ? tail : __mmask16(0xFFFF);
    const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 out = bias != nullptr ? _mm512_add_ps(acc[i][v], bv) : acc[i][v];
      if (v == NV - 1)
        _mm512_mask_storeu_ps(c + i * ldc + 16 * v, m, out);
      else
        _mm512_storeu_ps(c + i * ldc + 16 * v, out);
    }
  }
}

using Microkernel = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, bool, float*, int64_t, bool,
                             const float*, __mmask16);

template <int MR>
constexpr Microkernel pick_nv(int nv) {
  return nv == 1 ? &microkernel<MR, 1> : nv == 2 ? &microkernel<MR, 2> : nv == 3 ? &microkernel<MR, 3>
                                                                                  : &microkernel<MR, 4>;
}

Microkernel pick(int mr, int nv) {
  static_assert(kMR == 6 && kNV == 4, "update the dispatch table");
  switch (mr) {
    case 1: return pick_nv<1>(nv);
    case 2: return pick_nv<2>(nv);
    case 3: return pick_nv<3>(nv);
    case 4: return pick_nv<4>(nv);
    case 5: return pick_nv<5>(nv);
    default: return pick_nv<6>(nv);
  }
}

// Prefetches (into L2) rows [row_begin, row_end) of the B block that will be packed next, so the
// packing reads cache instead of waiting on DRAM: one block is 64 rows x kKC columns, strided by
// ldb, too many streams for the hardware prefetcher.
inline void prefetch_rows(const uint16_t* B, int64_t ldb, int64_t n0, int64_t row_begin, int64_t row_end,
                          int64_t k0, int64_t bytes) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const char* p = reinterpret_cast<const char*>(B + (n0 + row) * ldb + k0);
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
    _mm_prefetch(p + bytes - 1, _MM_HINT_T1);  // the last line when p is not line-aligned
  }
}

struct Problem {
  const uint16_t* A;
  int64_t lda;
  const uint16_t* B;
  int64_t ldb;
  float* C;
  int64_t ldc, M, N, K;
  const float* bias;
  int64_t groups, blocks_per_group;  // work item = (64-column tile, group of kMR-row blocks)
};

// One work item: C[rows of its group, its 64 columns], all of K. While it runs, the B rows of the
// block packed next (this tile's next K block, else the first block of item `next`, if any) are
// prefetched.
void run_item(const Problem& p, int64_t item, int64_t next, int64_t items, uint16_t* packed) {
  const int64_t tile = item / p.groups;
  const int64_t group = item % p.groups;
  const int64_t m_begin = std::min(p.M, group * p.blocks_per_group * kMR);
  const int64_t m_end = std::min(p.M, m_begin + p.blocks_per_group * kMR);
  if (m_begin >= m_end) return;
  const int64_t n0 = tile * kNR;
  const int64_t nr = std::min(kNR, p.N - n0);
  const int nv = static_cast<int>((nr + 15) / 16);
  const int rem = static_cast<int>(nr - 16 * (nv - 1));
  const __mmask16 tail = rem == 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
  const Microkernel full = pick(kMR, nv);
  const int64_t m_calls = (m_end - m_begin + kMR - 1) / kMR;
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t k1 = std::min(p.K, k0 + kKC);
    pack_b(p.B, p.ldb, n0, nr, nv, k0, k1, packed);
    int64_t pf_n0 = n0, pf_k0 = k1;
    if (k1 >= p.K) {
      pf_n0 = next < items ? (next / p.groups) * kNR : p.N;
      pf_k0 = 0;
    }
    const int64_t pf_rows = pf_n0 < p.N ? std::min(kNR, p.N - pf_n0) : 0;
    const int64_t pf_bytes = (std::min(p.K, pf_k0 + kKC) - pf_k0) * 2;
    const int64_t pf_step = (pf_rows + m_calls - 1) / m_calls;
    int64_t pf_row = 0;
    const int64_t kpairs = (k1 - k0) / 2;
    const bool odd = ((k1 - k0) & 1) != 0;
    const float* bias_tile = (k1 == p.K && p.bias != nullptr) ? p.bias + n0 : nullptr;
    for (int64_t m = m_begin; m < m_end; m += kMR) {
      if (pf_row < pf_rows) {
        const int64_t stop = std::min(pf_rows, pf_row + pf_step);
        prefetch_rows(p.B, p.ldb, pf_n0, pf_row, stop, pf_k0, pf_bytes);
        pf_row = stop;
      }
      const int mr = static_cast<int>(std::min<int64_t>(kMR, m_end - m));
      const Microkernel kernel = mr == kMR ? full : pick(mr, nv);
      kernel(p.A + m * p.lda + k0, p.lda, packed, kpairs, odd, p.C + m * p.ldc + n0, p.ldc, k0 > 0, bias_tile,
             tail);
    }
  }
}

}  // namespace

void gemm_bf16_nt_f32_avx512(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float* C,
                             int64_t ldc, int64_t M, int64_t N, int64_t K, const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t n = 0; n < N; ++n) C[i * ldc + n] = bias != nullptr ? bias[n] : 0.0f;
    return;
  }
  const int64_t tiles = (N + kNR - 1) / kNR;
  const int64_t mblocks = (M + kMR - 1) / kMR;
  const bool parallel = M * N * K >= (int64_t{1} << 21);
  const int64_t threads = parallel ? std::max(1, omp_get_max_threads()) : 1;
  // Few tiles (a narrow N): split M as well, so every thread gets work. Only the work split
  // changes, never the per-element summation order.
  int64_t groups = 1;
  if (tiles < 2 * threads) groups = std::min(mblocks, (2 * threads + tiles - 1) / tiles);
  const Problem problem{A, lda, B, ldb, C, ldc, M, N, K, bias, groups, (mblocks + groups - 1) / groups};
  const int64_t items = tiles * groups;
  // Threads take chunks of consecutive items from a shared counter (~16 chunks per thread), so
  // a thread slowed by other load on its core does not hold up the call. Which thread computes
  // an element never changes how it is summed.
  const int64_t chunk = std::max<int64_t>(1, items / (16 * threads));
  std::atomic<int64_t> counter{0};
#pragma omp parallel num_threads(static_cast<int>(threads)) if (threads > 1)
  {
    // 64 KiB per thread, on the heap (OpenMP worker stacks may be small).
    std::unique_ptr<uint16_t[], AlignedDelete> packed(
        new (std::align_val_t(64)) uint16_t[static_cast<size_t>(kKC * kNR)]);
    int64_t begin = counter.fetch_add(chunk, std::memory_order_relaxed);
    while (begin < items) {
      const int64_t end = std::min(items, begin + chunk);
      int64_t following = items;  // first item of this thread's next chunk
      for (int64_t item = begin; item < end; ++item) {
        int64_t next = item + 1;
        if (next == end) next = following = counter.fetch_add(chunk, std::memory_order_relaxed);
        run_item(problem, item, next, items, packed.get());
      }
      begin = following;
    }
  }
}

}  // namespace cpu
}  // namespace ttrl_fast
#endif
