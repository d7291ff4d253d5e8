// CPU kernel of sample_tokens, compiled once per ISA.
//
// Included by sampling_{avx512,avx2,baseline}.cpp, each of which defines TTRL_ISA_NS (the namespace
// of its variant) and a `#pragma GCC target` before including this file; sampling.cpp picks the
// variant at run time. Spec: ttrl_fast/reference/sampling.py; per-element math: sampling_math.h.
//
// Per row (one thread; rows are independent, so results never depend on the thread count):
//   1. s_v = penalized(x_v) into an fp32 scratch row (skipped for fp32 logits with neither penalty
//      nor bans: the logits row itself is read), bans set to -inf, m = max s. When s can differ
//      from x, the raw log-sum-exp of x * inv_t is accumulated in the same pass (chunk max, chunk
//      sum, rescaled merge). NaN / +inf entries poison the row (sampling_math.h: read as -inf, NaN
//      log-probs); a poisoned fp32 row is copied to the scratch row like the others.
//   2. Truncation (sampling only): every rule is a threshold on t = (s - m) * inv_t * log2(e):
//        top-k   the k-th largest t (ties at the boundary are kept together)
//        top-p   the smallest tie group whose exclusive mass (over what top-k kept) is < top_p * total
//        min-p   t >= log2(min_p)
//      Small top-k (k <= V/16): one streaming pass keeps a list of the tokens above a running k-th
//      largest (re-cut with nth_element whenever it fills); top-p then sorts just that list.
//      Otherwise one pass builds a histogram of t over 2048 bins of 1/32 (counts, fp64-accumulated
//      masses 2^t); the walk over the bins finds the bin holding each boundary, whose tokens are
//      then gathered and ordered exactly (nth_element for top-k, sort + tie-group walk for top-p).
//      Only the boundary bin is ever sorted, so the cost stays O(V) even when top-p keeps most of
//      the vocabulary; when the bins down to the top-p boundary hold few tokens they are all
//      listed instead. min-p alone lists the tokens above its threshold while summing the row.
//   3. The race: argmin over kept v of E_v * 2^-t_v (sampling_math.h), fused with the kept mass.
//      When the kept set was listed (at most V/16 tokens) the race runs over the list; otherwise
//      over the row in blocks of 64 lanes, where each lane computes only its hash, uniform and
//      2^t: a lane failing race_candidate(u, 2^t, best) cannot beat the best key so far, and only
//      the few that pass (about ln V per row) pay for the log and the exp2 of their key.
//      Candidate lists are appended branch-free (AVX-512: compressed 64-bit (t, index) pairs).
// Sums: fp32 per lane over 2048 elements, fp64 across chunks. Logs of the sums in fp64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "sampling.h"
#include "ttrl_fast/logprob_math.h"
#include "ttrl_fast/sampling_math.h"

namespace ttrl_fast {
namespace cpu {
namespace TTRL_ISA_NS {

namespace sm = ::ttrl_fast::sampling;

constexpr int64_t kBlock = 64;             // lanes of one block (4 AVX-512 registers: independent chains)
constexpr int64_t kBlocksPerFlush = 32;    // fp32 lane sums are flushed into fp64 every 2048 elements
constexpr int64_t kChunk = 2048;           // pass-1 chunk (fp32 scratch stays in L1)
constexpr int kBins = 2048;                // histogram bins of t: [-(b+1)/32, -b/32), last = the rest
constexpr float kBinsPerUnit = 32.0f;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct bf16_bits {
  uint16_t x;
};
struct fp16_bits {
  uint16_t x;
};

template <typename T>
inline float load_float(const T* p, int64_t i) {
  if constexpr (std::is_same<T, float>::value) {
    return p[i];
  } else if constexpr (std::is_same<T, bf16_bits>::value) {
    return math::bf16_bits_to_float(p[i].x);
  } else {
    return math::fp16_bits_to_float(p[i].x);
  }
}

struct Cand {
  float t;
  int32_t i;
};

// A growable array of candidates whose storage is never shrunk nor zero-filled (resize() between
// rows costs nothing; std::vector would value-initialise every new element).
class CandList {
 public:
  Cand* data() { return buf_.get(); }
  size_t size() const { return n_; }
  Cand* begin() { return buf_.get(); }
  Cand* end() { return buf_.get() + n_; }
  Cand& operator[](size_t i) { return buf_[i]; }
  void resize(size_t n) {
    if (n > cap_) {
      const size_t cap = std::max(n, 2 * cap_);
      std::unique_ptr<Cand[]> grown(new Cand[cap]);
      if (n_ > 0) std::memcpy(static_cast<void*>(grown.get()), buf_.get(), n_ * sizeof(Cand));
      buf_ = std::move(grown);
      cap_ = cap;
    }
    n_ = n;
  }
  void erase(Cand* first, Cand* last) {  // only a tail: last == end()
    (void)last;
    n_ = static_cast<size_t>(first - buf_.get());
  }

 private:
  std::unique_ptr<Cand[]> buf_;
  size_t cap_ = 0, n_ = 0;
};

// Per-thread scratch, grown on demand and reused across calls.
struct Scratch {
  std::vector<float> row;   // s (fp32) of the current row
  CandList list;            // candidate tokens (t, index)
  int64_t count[kBins];     // histogram of t
  double mass[kBins];
};

inline Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// Histogram bin of t <= 0 (monotone: t1 >= t2 => bin(t1) <= bin(t2); -inf and NaN go to the last).
inline int bin_of(float t) {
  const float y = -t * kBinsPerUnit;
  return y < static_cast<float>(kBins - 1) ? static_cast<int>(y) : kBins - 1;
}

// Calls fn(block, base) for the row in blocks of kBlock values; the tail block is padded with -inf
// (t = -inf: never kept, no mass).
template <typename F>
inline void for_blocks(const float* s, int64_t V, F&& fn) {
  const int64_t full = V / kBlock * kBlock;
  for (int64_t i = 0; i < full; i += kBlock) fn(s + i, i);
  if (full < V) {
    alignas(64) float tail[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) tail[j] = full + j < V ? s[full + j] : -kInf;
    fn(static_cast<const float*>(tail), full);
  }
}

// fp32 lane accumulators flushed into an fp64 total every kBlocksPerFlush blocks.
struct LaneSum {
  alignas(64) float lane[kBlock] = {};
  int64_t blocks = 0;
  double total = 0.0;
  inline void flush() {
    float s = 0.0f;
    for (int64_t j = 0; j < kBlock; ++j) {
      s += lane[j];
      lane[j] = 0.0f;
    }
    total += static_cast<double>(s);
    blocks = 0;
  }
  inline void end_block() {
    if (++blocks == kBlocksPerFlush) flush();
  }
  inline double finish() {
    flush();
    return total;
  }
};

// NaN-ignoring max of n values.
inline float max_of(const float* x, int64_t n) {
  float m = -kInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// sum 2^((x - m) * k) over n values (m finite).
inline float sum_exp2(const float* x, int64_t n, float m, float k) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += math::exp2_shared(sm::scaled(x[i], m, k));
  return s;
}

// Running log-sum-exp of the raw logits in base 2: total = sum 2^((x - max) * k).
struct RawLse {
  float max = -kInf;
  double sum = 0.0;
  void add_chunk(const float* x, int64_t n, float k) {
    const float cm = max_of(x, n);
    if (cm == -kInf) return;  // all -inf (or NaN): no mass
    const double cs = static_cast<double>(sum_exp2(x, n, cm, k));
    if (sum == 0.0) {
      max = cm;
      sum = cs;
    } else if (cm > max) {
      sum = sum * std::exp2(static_cast<double>((max - cm) * k)) + cs;
      max = cm;
    } else {
      sum += cs * std::exp2(static_cast<double>((cm - max) * k));
    }
  }
};

struct RowPrep {
  const float* s;  // the row's s values (scratch, or the fp32 logits row itself)
  float m;         // max s (-inf if every entry is -inf)
  RawLse raw;      // valid when raw_separate
  bool raw_separate;
  bool poisoned;   // the row holds NaN / +inf (read as -inf in s): NaN log-probs
};

// NaN-ignoring max of n values, and whether any of them poisons the row (NaN or +inf).
inline float max_and_poison(const float* x, int64_t n, bool* poisoned) {
  float m = -kInf;
  int bad = 0;
#pragma omp simd reduction(max : m) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    bad |= sm::poisons_row(x[i]) ? 1 : 0;
  }
  *poisoned = bad != 0;
  return m;
}

// Pass 1: s = penalised logits with the bans applied, its max, and the raw log-sum-exp when s may
// differ from x.
template <typename T>
RowPrep prepare_row(const SampleArgs& a, int64_t r, float inv_t, Scratch& sc) {
  const int64_t V = a.V;
  const T* row = static_cast<const T*>(a.logits) + r * a.row_stride;
  const bool penalty = a.seen != nullptr && a.penalty != 1.0;
  RowPrep p;
  p.raw_separate = penalty || a.n_ban > 0;
  p.poisoned = false;
  if constexpr (std::is_same<T, float>::value) {
    if (!p.raw_separate) {  // s == x: read the logits row in place (unless poisoned: copied below)
      p.s = row;
      p.m = max_and_poison(p.s, V, &p.poisoned);
      if (!p.poisoned) return p;
    }
  }
  if (static_cast<int64_t>(sc.row.size()) < V) sc.row.resize(V);
  float* buf = sc.row.data();
  const bool* seen = penalty ? a.seen + r * V : nullptr;
  const double pen = a.penalty, inv_pen = 1.0 / a.penalty;
  const float k = sm::log2_scale(inv_t);
  float ms = -kInf;
  int bad = 0;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    float* x = buf + c0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const float v = load_float(row + c0, i);
      bad |= sm::poisons_row(v) ? 1 : 0;
      x[i] = sm::unpoisoned(v);
    }
    if (p.raw_separate) p.raw.add_chunk(x, n, k);
    if (penalty) {
      const bool* sn = seen + c0;
#pragma omp simd reduction(max : ms)
      for (int64_t i = 0; i < n; ++i) {
        const float v = sm::penalized(x[i], sn[i], pen, inv_pen);
        x[i] = v;
        ms = v > ms ? v : ms;
      }
    } else {
      const float cm = max_of(x, n);
      ms = cm > ms ? cm : ms;
    }
  }
  bool remax = false;
  for (int64_t i = 0; i < a.n_ban; ++i) {
    const int64_t b = a.ban_ids[i];
    remax = remax || buf[b] == ms;
    buf[b] = -kInf;
  }
  p.s = buf;
  p.m = remax ? max_of(buf, V) : ms;
  p.poisoned = bad != 0;
  return p;
}

// ------------------------------------------------------------------------------------------------
// Candidate lists: (t, index) of the tokens above some threshold.

// Sums 2^t over the row.
inline double sum_all(const float* s, int64_t V, float m, float k) {
  LaneSum all;
  for_blocks(s, V, [&](const float* x, int64_t) {
#pragma omp simd
    for (int64_t j = 0; j < kBlock; ++j) all.lane[j] += math::exp2_shared(sm::scaled(x[j], m, k));
    all.end_block();
  });
  return all.finish();
}

// Appends (t[j], base + j) for the lanes with in[j] != 0 to out[n...] (out has kBlock entries of
// headroom past n; the callers clear in[] for lanes past V). The order of the appended lanes is
// unspecified (AVX-512: compressed through 64-bit (t, index) pairs, even then odd lane pairs).
inline void append_block(const float* t, const int32_t* in, int64_t base, Cand* out, size_t& n) {
#if defined(TTRL_SAMPLING_AVX512)
  static_assert(sizeof(Cand) == 8, "Cand must be a packed (float, int32) pair");
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t j0 = 0; j0 < kBlock; j0 += 16) {
    const __m512i flags = _mm512_load_si512(reinterpret_cast<const void*>(in + j0));
    if (_mm512_test_epi32_mask(flags, flags) == 0) continue;
    const __m512i tv = _mm512_castps_si512(_mm512_load_ps(t + j0));
    const __m512i iv = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base + j0)), lane);
    // (The maskz forms with a full mask: GCC 12 warns on the plain forms' undefined source.)
    const __mmask16 all = 0xFFFF;
    const __m512i lo = _mm512_maskz_unpacklo_epi32(all, tv, iv);  // (t, i) of lanes 0 1 4 5 8 9 12 13
    const __m512i hi = _mm512_maskz_unpackhi_epi32(all, tv, iv);  // lanes 2 3 6 7 10 11 14 15
    const __m512i flo = _mm512_maskz_unpacklo_epi32(all, flags, flags);
    const __m512i fhi = _mm512_maskz_unpackhi_epi32(all, flags, flags);
    const __mmask8 mlo = _mm512_test_epi64_mask(flo, flo);
    const __mmask8 mhi = _mm512_test_epi64_mask(fhi, fhi);
    // Register compress + plain store (compress-to-memory is microcoded and slow on some cores).
    _mm512_storeu_si512(reinterpret_cast<void*>(out + n), _mm512_maskz_compress_epi64(mlo, lo));
    n += static_cast<size_t>(__builtin_popcount(mlo));
    _mm512_storeu_si512(reinterpret_cast<void*>(out + n), _mm512_maskz_compress_epi64(mhi, hi));
    n += static_cast<size_t>(__builtin_popcount(mhi));
  }
#else
  for (int64_t j = 0; j < kBlock; ++j) {
    out[n] = Cand{t[j], static_cast<int32_t>(base + j)};
    n += in[j] != 0 ? 1 : 0;
  }
#endif
}

// Lists every v with keep(t) into sc.list (keep is monotone: t1 >= t2 and keep(t2) => keep(t1)).
// Gives up (returns false) once more than cap are listed. kSum: also sums 2^t over the row into
// *s_all (only when it returns true).
template <bool kSum, typename Keep>
inline bool collect(const float* s, int64_t V, float m, float k, Keep&& keep, size_t cap, Scratch& sc,
                    double* s_all) {
  CandList& out = sc.list;
  out.resize(cap + kBlock);
  size_t n = 0;
  bool overflow = false;
  LaneSum all;
  const int64_t full = V / kBlock * kBlock;
  auto block = [&](const float* x, int64_t base) {
    alignas(64) float t[kBlock];
    alignas(64) int32_t in[kBlock];
    const int32_t valid = static_cast<int32_t>(std::min<int64_t>(kBlock, V - base));  // lanes < V
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = 0; j < kBlock; ++j) {
      t[j] = sm::scaled(x[j], m, k);
      if (kSum) all.lane[j] += math::exp2_shared(t[j]);
      in[j] = (keep(t[j]) && static_cast<int32_t>(j) < valid) ? 1 : 0;
      hit |= in[j];
    }
    all.end_block();
    if (hit) {
      append_block(t, in, base, out.data(), n);
      overflow = n > cap;
    }
  };
  for (int64_t i = 0; i < full && !overflow; i += kBlock) block(s + i, i);
  if (full < V && !overflow) {
    alignas(64) float tail[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) tail[j] = full + j < V ? s[full + j] : -kInf;
    block(tail, full);
  }
  if (overflow) return false;
  out.resize(n);
  if (kSum) *s_all = all.finish();
  return true;
}

inline bool by_t_desc(const Cand& a, const Cand& b) { return a.t > b.t; }

// Streaming top-k: the k-th largest t, with sc.list holding exactly the v with t >= it. A running
// threshold (the k-th largest seen so far) filters the row; the list is re-cut whenever it fills.
// Also sums 2^t over the row into *s_all.
inline float top_k_stream(const float* s, int64_t V, float m, float k, int64_t top_k, Scratch& sc,
                          double* s_all) {
  CandList& out = sc.list;
  // Re-cut often (the cut is O(list) and raises the filter): few blocks then hold a listed lane.
  size_t cap = std::max<size_t>(2 * static_cast<size_t>(top_k), 256);
  out.resize(cap + kBlock);
  size_t n = 0;
  float tau = -kInf;
  LaneSum all;
  auto recut = [&]() {
    Cand* o = out.data();
    std::nth_element(o, o + (top_k - 1), o + n, by_t_desc);
    tau = o[top_k - 1].t;
    n = static_cast<size_t>(std::partition(o, o + n, [&](const Cand& c) { return c.t >= tau; }) - o);
  };
  for_blocks(s, V, [&](const float* x, int64_t base) {
    alignas(64) float t[kBlock];
    alignas(64) int32_t in[kBlock];
    const int32_t valid = static_cast<int32_t>(std::min<int64_t>(kBlock, V - base));  // lanes < V
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = 0; j < kBlock; ++j) {
      t[j] = sm::scaled(x[j], m, k);
      all.lane[j] += math::exp2_shared(t[j]);
      in[j] = (t[j] >= tau && static_cast<int32_t>(j) < valid) ? 1 : 0;
      hit |= in[j];
    }
    all.end_block();
    if (hit) {
      append_block(t, in, base, out.data(), n);
      if (n >= cap) {
        recut();
        if (2 * n >= cap) {  // many ties at the threshold: make room
          cap *= 2;
          out.resize(cap + kBlock);
        }
      }
    }
  });
  *s_all = all.finish();
  recut();  // n >= top_k: every v with t >= the final threshold was listed
  out.resize(n);
  return tau;
}

// Top-p on a list sorted by t descending that holds every token above its last value: the value
// of the smallest tie group whose exclusive mass (above0 + the groups before it) is < target.
// The first group is always kept when above0 < target.
inline float top_p_walk(const Cand* c, size_t n, double above0, double target) {
  double above = above0;
  float tau = n > 0 ? c[0].t : -kInf;
  for (size_t i = 0; i < n;) {
    const float g = c[i].t;
    size_t j = i;
    while (j < n && c[j].t == g) ++j;
    if (!(above < target)) break;
    tau = g;
    above += static_cast<double>(j - i) * static_cast<double>(math::exp2_shared(g));
    i = j;
  }
  return tau;
}

// ------------------------------------------------------------------------------------------------
// Dense truncation: a histogram of t over the whole row.

// The (t, index) of one histogram bin.
inline void gather_bin(const float* s, int64_t V, float m, float k, int target, Scratch& sc) {
  CandList& out = sc.list;
  out.resize(static_cast<size_t>(V) + kBlock);
  size_t n = 0;
  for_blocks(s, V, [&](const float* x, int64_t base) {
    alignas(64) float t[kBlock];
    alignas(64) int32_t in_bin[kBlock];
    const int32_t valid = static_cast<int32_t>(std::min<int64_t>(kBlock, V - base));  // lanes < V
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = 0; j < kBlock; ++j) {
      t[j] = sm::scaled(x[j], m, k);
      in_bin[j] = (bin_of(t[j]) == target && static_cast<int32_t>(j) < valid) ? 1 : 0;
      hit |= in_bin[j];
    }
    if (hit) append_block(t, in_bin, base, out.data(), n);
  });
  out.resize(n);
}

// Histogram of t (counts, and masses 2^t when kMass); returns sum 2^t over the row.
template <bool kMass>
double histogram(const float* s, int64_t V, float m, float k, Scratch& sc) {
  std::fill(sc.count, sc.count + kBins, int64_t{0});
  if (kMass) std::fill(sc.mass, sc.mass + kBins, 0.0);
  LaneSum all;
  for_blocks(s, V, [&](const float* x, int64_t) {
    alignas(64) float e[kBlock];
    alignas(64) int32_t bin[kBlock];
#pragma omp simd
    for (int64_t j = 0; j < kBlock; ++j) {
      const float t = sm::scaled(x[j], m, k);
      e[j] = math::exp2_shared(t);
      all.lane[j] += e[j];
      bin[j] = bin_of(t);
    }
    for (int64_t j = 0; j < kBlock; ++j) {
      sc.count[bin[j]] += 1;
      if (kMass) sc.mass[bin[j]] += static_cast<double>(e[j]);
    }
    all.end_block();
  });
  sc.count[kBins - 1] -= (kBlock - V % kBlock) % kBlock;  // the tail's -inf padding
  return all.finish();
}

// Top-k then top-p thresholds from the histogram; only the boundary bins are gathered and ordered.
// Returns the threshold and the row's total mass in *s_all. For top-p alone, when few tokens lie in
// the bins down to the boundary, they are all listed (*sparse = true: sc.list holds the kept set).
inline float dense_threshold(const SampleArgs& a, const float* s, float m, float k, bool tk, bool tp,
                             size_t sparse_cap, Scratch& sc, double* s_all, bool* sparse) {
  const int64_t V = a.V;
  *sparse = false;
  *s_all = tp ? histogram<true>(s, V, m, k, sc) : histogram<false>(s, V, m, k, sc);
  CandList& cand = sc.list;
  float thr = -kInf;
  int bk = kBins - 1;  // the bin of the k-th largest (top-k), else the last
  double mass_bk = 0.0;
  float tau_k = -kInf;
  if (tk) {
    int64_t above = 0;
    for (bk = 0; bk < kBins - 1; ++bk) {
      if (above + sc.count[bk] >= a.top_k) break;
      above += sc.count[bk];
    }
    gather_bin(s, V, m, k, bk, sc);
    const int64_t rank = a.top_k - above;  // 1-based rank of the k-th largest inside the bin
    std::nth_element(cand.begin(), cand.begin() + (rank - 1), cand.end(), by_t_desc);
    tau_k = cand[rank - 1].t;
    thr = tau_k;
    if (tp)
      for (const Cand& c : cand)
        if (c.t >= tau_k) mass_bk += static_cast<double>(math::exp2_shared(c.t));
  }
  if (tp) {
    const int last = bk;
    auto bin_mass = [&](int b) { return (tk && b == bk) ? mass_bk : sc.mass[b]; };
    double total = 0.0;
    for (int b = 0; b <= last; ++b) total += bin_mass(b);
    const double target = a.top_p * total;
    double above = 0.0;
    int64_t listed = 0;
    int bp = 0;
    for (; bp < last; ++bp) {  // the first bin whose cumulative mass reaches the target
      listed += sc.count[bp];
      if (above + bin_mass(bp) >= target) break;
      above += bin_mass(bp);
    }
    if (bp == last) listed = V;  // (not worth listing)
    if (!tk && static_cast<size_t>(listed) <= sparse_cap &&
        collect<false>(s, V, m, k, [bp](float t) { return bin_of(t) <= bp; }, sparse_cap, sc, nullptr)) {
      std::sort(cand.begin(), cand.end(), by_t_desc);
      *sparse = true;
      return top_p_walk(cand.data(), cand.size(), 0.0, target);
    }
    if (tk && bp == bk) {
      cand.erase(std::remove_if(cand.begin(), cand.end(), [&](const Cand& c) { return !(c.t >= tau_k); }),
                 cand.end());
    } else {
      gather_bin(s, V, m, k, bp, sc);
    }
    std::sort(cand.begin(), cand.end(), by_t_desc);
    const float tau_p = top_p_walk(cand.data(), cand.size(), above, target);
    thr = tau_p > thr ? tau_p : thr;
  }
  return thr;
}

// ------------------------------------------------------------------------------------------------
// Truncation: the threshold on t, and when the kept set is small, the list of its tokens.

struct Truncation {
  float thr = -kInf;     // kept: t >= thr and t > -inf (-inf: nothing cut)
  double s_all = -1.0;   // sum 2^t over the row, when a pass computed it (else < 0)
  bool sparse = false;   // sc.list holds every kept token (and possibly others, below thr)
};

inline Truncation truncate_row(const SampleArgs& a, const float* s, float m, float k, Scratch& sc) {
  const int64_t V = a.V;
  const bool tk = a.top_k > 0 && a.top_k < V;
  const bool tp = a.top_p < 1.0;
  const bool mp = a.min_p > 0.0;
  const float tau_m = mp ? sm::min_p_threshold(a.min_p) : -kInf;
  const size_t sparse_cap = static_cast<size_t>(std::max<int64_t>(V / 16, 256));
  Truncation tr;
  if (!tk && !tp && !mp) return tr;
  if (tk && a.top_k <= V / 16) {
    // Few tokens: stream the top-k, then top-p / min-p on the list.
    const float tau_k = top_k_stream(s, V, m, k, a.top_k, sc, &tr.s_all);
    CandList& list = sc.list;
    tr.thr = tau_k;
    if (tp) {
      std::sort(list.begin(), list.end(), by_t_desc);
      double total = 0.0;
      for (const Cand& c : list) total += static_cast<double>(math::exp2_shared(c.t));
      const float tau_p = top_p_walk(list.data(), list.size(), 0.0, a.top_p * total);
      tr.thr = tau_p > tr.thr ? tau_p : tr.thr;
    }
    tr.thr = tau_m > tr.thr ? tau_m : tr.thr;
    tr.sparse = list.size() <= sparse_cap;  // else (ties) the dense race is faster
    return tr;
  }
  if (mp && !tk && !tp) {  // usually few tokens: list them while summing the row
    tr.thr = tau_m;
    double total = -1.0;
    tr.sparse = collect<true>(s, V, m, k, [tau_m](float t) { return t >= tau_m; }, sparse_cap, sc, &total);
    if (tr.sparse) tr.s_all = total;
    return tr;
  }
  const float thr = dense_threshold(a, s, m, k, tk, tp, sparse_cap, sc, &tr.s_all, &tr.sparse);
  tr.thr = tau_m > thr ? tau_m : thr;
  return tr;
}

struct RaceResult {
  int64_t token;
  double s_kept;  // sum over kept v of 2^t
  double s_all;   // sum over all v of 2^t (only when requested)
};

// The race over a candidate list (any order; exact ties go to the lowest index).
inline RaceResult race_list(const Cand* c, size_t n, float thr, uint32_t skey) {
  float best = kInf;
  int64_t best_i = -1;
  double s_kept = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float t = c[i].t;
    if (!(t >= thr) || t == -kInf) continue;
    const float e = math::exp2_shared(t);
    s_kept += static_cast<double>(e);
    const float u = sm::uniform_of(skey, static_cast<uint32_t>(c[i].i));
    if (!sm::race_candidate(u, e, best)) continue;
    const float key = sm::race_key(sm::neg_log_unit(u), t);
    if (key < best || (key == best && c[i].i < best_i)) {
      best = key;
      best_i = c[i].i;
    }
  }
  return RaceResult{best_i, s_kept, -1.0};
}

// The exponential race over the kept set {t >= thr, t > -inf}, fused with the kept mass. Only the
// lanes that pass race_candidate (a few dozen per row) pay for the log / exp2 of their key.
template <bool kAll>
RaceResult race(const float* s, int64_t V, float m, float k, float thr, uint32_t skey) {
  float best = kInf;
  int64_t best_i = -1;
  LaneSum kept_sum, all_sum;
  for_blocks(s, V, [&](const float* x, int64_t base) {
    alignas(64) float t[kBlock];
    alignas(64) float u[kBlock];
    int need = 0;
#pragma omp simd reduction(| : need)
    for (int64_t j = 0; j < kBlock; ++j) {
      const float tj = sm::scaled(x[j], m, k);
      const float e = math::exp2_shared(tj);
      const bool kept = tj >= thr && tj > -kInf;
      kept_sum.lane[j] += kept ? e : 0.0f;
      if (kAll) all_sum.lane[j] += e;
      const float uj = sm::uniform_of(skey, static_cast<uint32_t>(base + j));
      const bool cand = kept && sm::race_candidate(uj, e, best);
      t[j] = cand ? tj : -kInf;
      u[j] = uj;
      need |= cand ? 1 : 0;
    }
    if (need) {
      alignas(64) float key[kBlock];
      float bmin = kInf;
#pragma omp simd reduction(min : bmin)
      for (int64_t j = 0; j < kBlock; ++j) {
        const float kj = t[j] > -kInf ? sm::race_key(sm::neg_log_unit(u[j]), t[j]) : kInf;
        key[j] = kj;
        bmin = kj < bmin ? kj : bmin;
      }
      if (bmin < best) {
        for (int64_t j = 0; j < kBlock; ++j) {
          if (key[j] == bmin) {
            best = bmin;
            best_i = base + j;
            break;
          }
        }
      }
    }
    kept_sum.end_block();
    if (kAll) all_sum.end_block();
  });
  RaceResult res;
  res.token = best_i;
  res.s_kept = kept_sum.finish();
  res.s_all = kAll ? all_sum.finish() : -1.0;
  return res;
}

// The first v with s[v] == m (m is the row max, so it exists).
inline int64_t first_index_of(const float* s, int64_t V, float m) {
  int64_t i = 0;
  for (; i + kBlock <= V; i += kBlock) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = 0; j < kBlock; ++j) hit |= s[i + j] == m ? 1 : 0;
    if (hit) break;
  }
  for (; i < V; ++i)
    if (s[i] == m) return i;
  return 0;
}

inline float clamp_nonpositive(float v) { return v > 0.0f ? 0.0f : v; }

template <typename T>
void sample_row(const SampleArgs& a, int64_t r, Scratch& sc) {
  const int64_t V = a.V;
  const float inv_t = a.greedy ? 1.0f : a.inv_t;
  const float k = sm::log2_scale(inv_t);
  const RowPrep p = prepare_row<T>(a, r, inv_t, sc);
  const float m = p.m;
  const T* row = static_cast<const T*>(a.logits) + r * a.row_stride;

  int64_t tok = 0;
  double s_all = 0.0, s_kept = 0.0;
  bool cut = false;
  if (m == -kInf) {  // every entry is -inf (all banned): nothing can be drawn
    s_all = s_kept = 0.0;
  } else if (a.greedy) {
    tok = first_index_of(p.s, V, m);
    s_all = s_kept = sum_all(p.s, V, m, k);
  } else {
    const Truncation tr = truncate_row(a, p.s, m, k, sc);
    cut = tr.thr > -kInf;
    const uint32_t skey = sm::step_key(static_cast<uint32_t>(a.row_keys[r]), a.step);
    RaceResult rr;
    if (tr.sparse) {
      rr = race_list(sc.list.data(), sc.list.size(), tr.thr, skey);
      s_all = tr.s_all;
    } else if (cut && tr.s_all < 0.0) {
      rr = race<true>(p.s, V, m, k, tr.thr, skey);
      s_all = rr.s_all;
    } else {
      rr = race<false>(p.s, V, m, k, tr.thr, skey);
      s_all = cut ? tr.s_all : rr.s_kept;
    }
    s_kept = rr.s_kept;
    tok = rr.token;
  }
  if (tok < 0 || tok >= V) tok = 0;  // defence in depth (cannot happen with a finite max)

  const float d_tok = (p.s[tok] - m) * inv_t;
  double lp_raw;
  if (p.raw_separate) {
    const float x_tok = load_float(row, tok);
    lp_raw = static_cast<double>((x_tok - p.raw.max) * inv_t) - std::log(p.raw.sum);
  } else {
    lp_raw = static_cast<double>(d_tok) - std::log(s_all);
  }
  const double lp_proc = static_cast<double>(d_tok) - std::log(s_kept);
  const double lkept = cut ? std::log(s_kept / s_all) : (m == -kInf ? std::log(s_kept / s_all) : 0.0);
  a.tokens[r] = tok;
  a.logp_raw[r] = p.poisoned ? kNaN : clamp_nonpositive(static_cast<float>(lp_raw));
  a.logp_processed[r] = p.poisoned ? kNaN : clamp_nonpositive(static_cast<float>(lp_proc));
  a.log_kept[r] = p.poisoned ? kNaN : clamp_nonpositive(static_cast<float>(lkept));
}

template <typename T>
void sample_rows_typed(const SampleArgs& a, int64_t begin, int64_t end) {
  Scratch& sc = scratch();
  for (int64_t r = begin; r < end; ++r) sample_row<T>(a, r, sc);
}

void sample_rows(const SampleArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32: return sample_rows_typed<float>(a, begin, end);
    case DType::kBFloat16: return sample_rows_typed<bf16_bits>(a, begin, end);
    case DType::kFloat16: return sample_rows_typed<fp16_bits>(a, begin, end);
  }
}

}  // namespace TTRL_ISA_NS
}  // namespace cpu
}  // namespace ttrl_fast
