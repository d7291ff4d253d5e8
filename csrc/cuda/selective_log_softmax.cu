// CUDA kernels of the selective log-softmax op (forward + backward) on raw pointers.
//
// Deliberately free of torch headers: nvcc compiles this file in seconds; the torch glue lives in
// bindings.cpp (host compiler). All arithmetic goes through the shared __host__ __device__
// helpers of ttrl_fast/logprob_math.h, which the CPU backend runs too.
//
// Work decomposition: one CTA per row (row r = a * B + b of the [A, B, V] logits). Each thread
// walks its strided part of the row with 16-byte vector loads (4 fp32 or 8 bf16/fp16 values); a
// scalar head (up to the first 16-byte boundary: rows of a sliced tensor need not be aligned) and
// a scalar tail cover the rest. Partial states are merged in a fixed order (warp shuffle, then
// shared memory, then warp 0), so results are bit-for-bit deterministic; there are no atomics.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "selective_log_softmax.cuh"
#include "ttrl_fast/logprob_math.h"

namespace ttrl_fast {
namespace cuda {
namespace {

using math::LseState;

constexpr int kMaxThreads = 1024;
constexpr int kWarp = 32;
constexpr int kUnroll = 2;  // 16-byte vectors in flight per thread per loop iteration

// ------------------------------------------------------------------------------------------------
// Element types. bf16 and fp16 are handled as raw 16-bit patterns; conversions are explicit.

template <int DT>
struct Elem;

template <>
struct Elem<kFloat32> {
  using T = float;
  static __device__ __forceinline__ float to_float(T x) { return x; }
  static __device__ __forceinline__ T from_float(float f) { return f; }
};

template <>
struct Elem<kBFloat16> {
  using T = uint16_t;
  static __device__ __forceinline__ float to_float(T x) { return math::bf16_bits_to_float(x); }
  static __device__ __forceinline__ T from_float(float f) { return math::float_to_bf16_bits(f); }
};

template <>
struct Elem<kFloat16> {
  using T = uint16_t;
  static __device__ __forceinline__ float to_float(T x) { return __half2float(__ushort_as_half(x)); }
  static __device__ __forceinline__ T from_float(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
};

// 16 bytes of elements, moved to / from memory as one uint4 (a single 128-bit access).
template <typename T>
struct Pack {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
  T v[kN];
};

__device__ __forceinline__ void unpack(const uint4& u, Pack<float>& p) {
  p.v[0] = __uint_as_float(u.x);
  p.v[1] = __uint_as_float(u.y);
  p.v[2] = __uint_as_float(u.z);
  p.v[3] = __uint_as_float(u.w);
}

__device__ __forceinline__ void unpack(const uint4& u, Pack<uint16_t>& p) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    p.v[2 * i] = static_cast<uint16_t>(w[i] & 0xFFFFu);
    p.v[2 * i + 1] = static_cast<uint16_t>(w[i] >> 16);
  }
}

__device__ __forceinline__ uint4 pack(const Pack<float>& p) {
  return make_uint4(__float_as_uint(p.v[0]), __float_as_uint(p.v[1]), __float_as_uint(p.v[2]),
                    __float_as_uint(p.v[3]));
}

__device__ __forceinline__ uint4 pack(const Pack<uint16_t>& p) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<uint32_t>(p.v[2 * i]) | (static_cast<uint32_t>(p.v[2 * i + 1]) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {  // p 16-byte aligned
  Pack<T> out;
  unpack(__ldg(reinterpret_cast<const uint4*>(p)), out);
  return out;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& pk) {  // p 16-byte aligned
  __stwb(reinterpret_cast<uint4*>(p), pack(pk));  // intrinsic: keeps the 128-bit store
}

// Splits a row of V elements starting at p into [0, head) scalars, nvec aligned 16-byte vectors,
// and [tail_begin, V) scalars.
struct RowSplit {
  int head;
  int nvec;
  int tail_begin;
};

template <typename T>
__device__ __forceinline__ RowSplit split_row(const T* p, int V) {
  constexpr int kN = Pack<T>::kN;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  int head;
  if (addr % sizeof(T) != 0) {
    head = V;  // misaligned elements (never produced by torch): all scalar
  } else {
    head = static_cast<int>(((16u - (addr & 15u)) & 15u) / sizeof(T));
    head = head < V ? head : V;
  }
  RowSplit s;
  s.head = head;
  s.nvec = (V - head) / kN;
  s.tail_begin = head + s.nvec * kN;
  return s;
}

__device__ __forceinline__ const char* row_ptr_bytes(const void* base, int64_t row, int64_t B,
                                                     int64_t stride0, int64_t stride1,
                                                     int64_t elem_size) {
  const int64_t a = row / B;
  const int64_t b = row - a * B;
  return static_cast<const char*>(base) + (a * stride0 + b * stride1) * elem_size;
}

// ------------------------------------------------------------------------------------------------
// Forward helpers.

// Folds N logits into a thread's state: raise the max once for the group (lse_rebase), then add
// every element (lse_accumulate). A group holding only -inf (and possibly NaN) values never
// touches the sums: accumulating -inf against an empty state (max -inf) would form -inf - -inf.
template <int N>
__device__ __forceinline__ void consume(LseState& st, const float (&x)[N], float inv_t) {
  float gmax = x[0];
#pragma unroll
  for (int i = 1; i < N; ++i) gmax = fmaxf(gmax, x[i]);  // fmaxf drops NaN: NaN is seen below
  if (gmax > st.m) math::lse_rebase(st, gmax, inv_t);
  if (gmax == -INFINITY || gmax != gmax) {  // rare: every element is -inf or NaN
    bool has_nan = false;
#pragma unroll
    for (int i = 0; i < N; ++i) has_nan |= (x[i] != x[i]);
    if (has_nan) st = math::lse_poison();
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) math::lse_accumulate(st, x[i], inv_t);
}

__device__ __forceinline__ LseState shfl_down_state(const LseState& st, int off) {
  LseState o;
  o.m = __shfl_down_sync(0xffffffffu, st.m, off);
  o.s = __shfl_down_sync(0xffffffffu, st.s, off);
  o.w = __shfl_down_sync(0xffffffffu, st.w, off);
  return o;
}

// Lane 0 ends with merge(lane 0, ..., lane 31), always in the same tree order.
__device__ __forceinline__ LseState warp_reduce_state(LseState st, float inv_t) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const LseState o = shfl_down_state(st, off);
    st = math::lse_merge(st, o, inv_t);
  }
  return st;
}

// Thread 0 gets the state of the whole CTA (others: unspecified). blockDim.x % 32 == 0.
__device__ __forceinline__ LseState block_reduce_state(LseState st, float inv_t) {
  __shared__ LseState partial[kMaxThreads / kWarp];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  st = warp_reduce_state(st, inv_t);
  if (nwarps == 1) return st;
  if (lane == 0) partial[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < nwarps ? partial[lane] : math::lse_empty();
    st = warp_reduce_state(st, inv_t);
  }
  return st;
}

// Forward kernel. One CTA per row.
// Bytes per active row: reads V * sizeof(T) logits (each exactly once, + 1 re-read of the target
// logit, an L1/L2 hit) + 8 (index) + 1 (mask, if given); writes 4 (logp) + 4 (entropy, if asked)
// + 8 (stats). Masked rows: read 1 byte of mask, write 12-16 bytes; logits untouched.
// Total ~ rows * V * sizeof(T) read: one pass over the logits, nothing [rows, V]-sized written.
template <int DT>
__global__ void __launch_bounds__(kMaxThreads)
    sls_fwd_kernel(const typename Elem<DT>::T* __restrict__ logits, int64_t B, int V,
                   int64_t stride0, int64_t stride1, const int64_t* __restrict__ index,
                   const uint8_t* __restrict__ mask, float inv_t, float* __restrict__ logp,
                   float* __restrict__ entropy, float* __restrict__ stats) {
  using E = Elem<DT>;
  using T = typename E::T;
  constexpr int kN = Pack<T>::kN;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;

  if (mask != nullptr && mask[row] == 0) {  // uniform across the CTA
    if (tid == 0) {
      logp[row] = 0.0f;
      if (entropy != nullptr) entropy[row] = 0.0f;
      stats[2 * row] = 0.0f;
      stats[2 * row + 1] = 0.0f;
    }
    return;
  }

  const T* x = reinterpret_cast<const T*>(
      row_ptr_bytes(logits, row, B, stride0, stride1, static_cast<int64_t>(sizeof(T))));
  const RowSplit sp = split_row(x, V);
  LseState st = math::lse_empty();

  if (tid < sp.head) {
    const float v[1] = {E::to_float(x[tid])};
    consume<1>(st, v, inv_t);
  }

  const T* xv = x + sp.head;  // 16-byte aligned
  int i = tid;
  for (; i + (kUnroll - 1) * nthreads < sp.nvec; i += kUnroll * nthreads) {
    Pack<T> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = load_pack(xv + static_cast<int64_t>(i + u * nthreads) * kN);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float v[kN];
#pragma unroll
      for (int k = 0; k < kN; ++k) v[k] = E::to_float(pk[u].v[k]);
      consume<kN>(st, v, inv_t);
    }
  }
  for (; i < sp.nvec; i += nthreads) {
    const Pack<T> pk = load_pack(xv + static_cast<int64_t>(i) * kN);
    float v[kN];
#pragma unroll
    for (int k = 0; k < kN; ++k) v[k] = E::to_float(pk.v[k]);
    consume<kN>(st, v, inv_t);
  }

  if (sp.tail_begin + tid < V) {
    const float v[1] = {E::to_float(x[sp.tail_begin + tid])};
    consume<1>(st, v, inv_t);
  }

  st = block_reduce_state(st, inv_t);

  if (tid == 0) {
    const int64_t idx = index[row];
    const bool target_ok = idx >= 0 && idx < static_cast<int64_t>(V);
    const float x_target = target_ok ? E::to_float(x[idx]) : 0.0f;
    const math::RowResult r = math::lse_finalize(st, x_target, target_ok, inv_t);
    logp[row] = r.logp;
    if (entropy != nullptr) entropy[row] = r.entropy;
    stats[2 * row] = r.max;
    stats[2 * row + 1] = r.log_sum;
  }
}

// ------------------------------------------------------------------------------------------------
// Backward.

struct BwdRow {
  float row_max, log_sum, g_logp, g_ent, entropy, inv_t;
  int target;  // -1 when the index is outside [0, V)
};

template <bool kEnt>
__device__ __forceinline__ float grad_of(const BwdRow& r, float x, int v) {
  const float lp = math::log_prob_of(x, r.row_max, r.log_sum, r.inv_t);
  const float p = math::exp_shared(lp);
  float g = kEnt ? math::dlogit_nontarget(p, lp, r.g_logp, r.g_ent, r.entropy, r.inv_t)
                 : math::dlogit_nontarget(p, lp, r.g_logp, 0.0f, 0.0f, r.inv_t);
  if (v == r.target) g += math::target_grad_extra(r.g_logp, r.inv_t);
  return g;
}

template <typename T>
__device__ __forceinline__ void zero_row(T* out, int V, int tid, int nthreads) {
  constexpr int kN = Pack<T>::kN;
  const RowSplit sp = split_row(static_cast<const T*>(out), V);
  if (tid < sp.head) out[tid] = T(0);
  const uint4 z = make_uint4(0u, 0u, 0u, 0u);
  T* ov = out + sp.head;
  for (int i = tid; i < sp.nvec; i += nthreads)
    __stwb(reinterpret_cast<uint4*>(ov + static_cast<int64_t>(i) * kN), z);
  if (sp.tail_begin + tid < V) out[sp.tail_begin + tid] = T(0);
}

// Backward kernel. One CTA per row. kEnt: grad_entropy given (else its term is skipped).
// Bytes per active row: reads V * sizeof(T) logits + 8 (stats) + 8 (index) + 4 (grad_logp, if
// given) + 8 (grad_entropy + entropy, if kEnt) + 1 (mask, if given); writes V * sizeof(T)
// (grad_logits). Masked rows: read 1 byte, write V * sizeof(T) zeros.
// Total ~ 2 * rows * V * sizeof(T): one read of the logits and one write of the gradient.
template <int DT, bool kEnt>
__global__ void __launch_bounds__(kMaxThreads)
    sls_bwd_kernel(const float* __restrict__ grad_logp, const float* __restrict__ grad_entropy,
                   const typename Elem<DT>::T* __restrict__ logits, int64_t B, int V,
                   int64_t stride0, int64_t stride1, const int64_t* __restrict__ index,
                   const uint8_t* __restrict__ mask, const float* __restrict__ stats,
                   const float* __restrict__ entropy, float inv_t,
                   typename Elem<DT>::T* __restrict__ grad_logits) {
  using E = Elem<DT>;
  using T = typename E::T;
  constexpr int kN = Pack<T>::kN;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  T* out = grad_logits + row * static_cast<int64_t>(V);

  if (mask != nullptr && mask[row] == 0) {  // uniform across the CTA
    zero_row(out, V, tid, nthreads);
    return;
  }

  BwdRow r;
  r.row_max = stats[2 * row];
  r.log_sum = stats[2 * row + 1];
  r.g_logp = grad_logp != nullptr ? grad_logp[row] : 0.0f;
  r.g_ent = kEnt ? grad_entropy[row] : 0.0f;
  r.entropy = kEnt ? entropy[row] : 0.0f;
  r.inv_t = inv_t;
  const int64_t idx = index[row];
  r.target = (idx >= 0 && idx < static_cast<int64_t>(V)) ? static_cast<int>(idx) : -1;

  const T* x = reinterpret_cast<const T*>(
      row_ptr_bytes(logits, row, B, stride0, stride1, static_cast<int64_t>(sizeof(T))));
  const RowSplit sp = split_row(x, V);
  // Vector stores need the output row to share the input row's offset within 16 bytes (true
  // whenever V * sizeof(T) and the input row strides are multiples of 16 bytes); else scalars.
  const bool out_vec =
      ((reinterpret_cast<uintptr_t>(out) ^ reinterpret_cast<uintptr_t>(x)) & 15u) == 0;

  if (tid < sp.head) out[tid] = E::from_float(grad_of<kEnt>(r, E::to_float(x[tid]), tid));

  const T* xv = x + sp.head;
  T* ov = out + sp.head;
  int i = tid;
  for (; i + (kUnroll - 1) * nthreads < sp.nvec; i += kUnroll * nthreads) {
    Pack<T> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = load_pack(xv + static_cast<int64_t>(i + u * nthreads) * kN);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = i + u * nthreads;
      const int v0 = sp.head + j * kN;
      Pack<T> g;
#pragma unroll
      for (int k = 0; k < kN; ++k) g.v[k] = E::from_float(grad_of<kEnt>(r, E::to_float(pk[u].v[k]), v0 + k));
      if (out_vec) {
        store_pack(ov + static_cast<int64_t>(j) * kN, g);
      } else {
#pragma unroll
        for (int k = 0; k < kN; ++k) out[v0 + k] = g.v[k];
      }
    }
  }
  for (; i < sp.nvec; i += nthreads) {
    const Pack<T> pk = load_pack(xv + static_cast<int64_t>(i) * kN);
    const int v0 = sp.head + i * kN;
    Pack<T> g;
#pragma unroll
    for (int k = 0; k < kN; ++k) g.v[k] = E::from_float(grad_of<kEnt>(r, E::to_float(pk.v[k]), v0 + k));
    if (out_vec) {
      store_pack(ov + static_cast<int64_t>(i) * kN, g);
    } else {
#pragma unroll
      for (int k = 0; k < kN; ++k) out[v0 + k] = g.v[k];
    }
  }

  const int t = sp.tail_begin + tid;
  if (t < V) out[t] = E::from_float(grad_of<kEnt>(r, E::to_float(x[t]), t));
}

// ------------------------------------------------------------------------------------------------
// Launch configuration.

int num_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
    return 132;
  return sms;
}

// Threads per CTA (a multiple of 32, at most kMaxThreads): enough for about two vectors per thread
// per row, 256 normally; wider CTAs only when there are too few rows to fill the GPU.
int pick_threads(int64_t rows, int64_t V, int elem_size) {
  const int64_t nvec = (V * elem_size + 15) / 16;
  int threads = kWarp;
  while (threads < 256 && static_cast<int64_t>(threads) * 2 * kUnroll <= nvec) threads *= 2;
  if (threads == 256) {
    const int64_t resident = static_cast<int64_t>(num_sms()) * 2048;  // threads the GPU holds
    while (threads < kMaxThreads && rows * threads * 2 <= resident &&
           static_cast<int64_t>(threads) * 2 * 2 * kUnroll <= nvec)
      threads *= 2;
  }
  return threads;
}

const char* check_common(DTypeCode dtype, int64_t A, int64_t B, int64_t V) {
  if (dtype != kFloat32 && dtype != kBFloat16 && dtype != kFloat16)
    return "selective_log_softmax (cuda): unsupported dtype code";
  if (A < 0 || B < 0) return "selective_log_softmax (cuda): negative A or B";
  if (V < 1) return "selective_log_softmax (cuda): the vocabulary dimension V must be >= 1";
  if (V > INT_MAX) return "selective_log_softmax (cuda): V must be < 2^31";
  if (B > 0 && A > INT_MAX / B)
    return "selective_log_softmax (cuda): A * B (number of rows) must be < 2^31";
  return nullptr;
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <int DT>
const char* fwd_typed(const void* logits, int64_t A, int64_t B, int64_t V, int64_t stride0,
                      int64_t stride1, const int64_t* index, const uint8_t* mask, float inv_t,
                      float* logp, float* entropy, float* stats, cudaStream_t stream) {
  using T = typename Elem<DT>::T;
  const int64_t rows = A * B;
  const int threads = pick_threads(rows, V, static_cast<int>(sizeof(T)));
  sls_fwd_kernel<DT><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      static_cast<const T*>(logits), B, static_cast<int>(V), stride0, stride1, index, mask, inv_t,
      logp, entropy, stats);
  return launch_status();
}

template <int DT, bool kEnt>
const char* bwd_typed(const float* grad_logp, const float* grad_entropy, const void* logits,
                      int64_t A, int64_t B, int64_t V, int64_t stride0, int64_t stride1,
                      const int64_t* index, const uint8_t* mask, const float* stats,
                      const float* entropy, float inv_t, void* grad_logits, cudaStream_t stream) {
  using T = typename Elem<DT>::T;
  const int64_t rows = A * B;
  const int threads = pick_threads(rows, V, static_cast<int>(sizeof(T)));
  sls_bwd_kernel<DT, kEnt><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      grad_logp, grad_entropy, static_cast<const T*>(logits), B, static_cast<int>(V), stride0,
      stride1, index, mask, stats, entropy, inv_t, static_cast<T*>(grad_logits));
  return launch_status();
}

template <int DT>
const char* bwd_dispatch_ent(const float* grad_logp, const float* grad_entropy, const void* logits,
                             int64_t A, int64_t B, int64_t V, int64_t stride0, int64_t stride1,
                             const int64_t* index, const uint8_t* mask, const float* stats,
                             const float* entropy, float inv_t, void* grad_logits,
                             cudaStream_t stream) {
  if (grad_entropy != nullptr)
    return bwd_typed<DT, true>(grad_logp, grad_entropy, logits, A, B, V, stride0, stride1, index,
                               mask, stats, entropy, inv_t, grad_logits, stream);
  return bwd_typed<DT, false>(grad_logp, nullptr, logits, A, B, V, stride0, stride1, index, mask,
                              stats, nullptr, inv_t, grad_logits, stream);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public launchers.

const char* selective_log_softmax_fwd_launch(DTypeCode dtype, const void* logits, int64_t A,
                                             int64_t B, int64_t V, int64_t stride0,
                                             int64_t stride1, const int64_t* index,
                                             const uint8_t* mask, float inv_temperature,
                                             float* logp, float* entropy, float* stats,
                                             cudaStream_t stream) {
  if (const char* err = check_common(dtype, A, B, V)) return err;
  if (A * B == 0) return nullptr;
  if (logits == nullptr || index == nullptr || logp == nullptr || stats == nullptr)
    return "selective_log_softmax_fwd (cuda): null logits/index/logp/stats pointer";
  switch (dtype) {
    case kFloat32:
      return fwd_typed<kFloat32>(logits, A, B, V, stride0, stride1, index, mask, inv_temperature,
                                 logp, entropy, stats, stream);
    case kBFloat16:
      return fwd_typed<kBFloat16>(logits, A, B, V, stride0, stride1, index, mask, inv_temperature,
                                  logp, entropy, stats, stream);
    case kFloat16:
      return fwd_typed<kFloat16>(logits, A, B, V, stride0, stride1, index, mask, inv_temperature,
                                 logp, entropy, stats, stream);
  }
  return "selective_log_softmax_fwd (cuda): unsupported dtype code";
}

const char* selective_log_softmax_bwd_launch(DTypeCode dtype, const float* grad_logp,
                                             const float* grad_entropy, const void* logits,
                                             int64_t A, int64_t B, int64_t V, int64_t stride0,
                                             int64_t stride1, const int64_t* index,
                                             const uint8_t* mask, const float* stats,
                                             const float* entropy, float inv_temperature,
                                             void* grad_logits, cudaStream_t stream) {
  if (const char* err = check_common(dtype, A, B, V)) return err;
  if (A * B == 0) return nullptr;
  if (logits == nullptr || index == nullptr || stats == nullptr || grad_logits == nullptr)
    return "selective_log_softmax_bwd (cuda): null logits/index/stats/grad_logits pointer";
  if (grad_entropy != nullptr && entropy == nullptr)
    return "selective_log_softmax_bwd (cuda): grad_entropy given without the forward's entropy";
  switch (dtype) {
    case kFloat32:
      return bwd_dispatch_ent<kFloat32>(grad_logp, grad_entropy, logits, A, B, V, stride0, stride1,
                                        index, mask, stats, entropy, inv_temperature, grad_logits,
                                        stream);
    case kBFloat16:
      return bwd_dispatch_ent<kBFloat16>(grad_logp, grad_entropy, logits, A, B, V, stride0,
                                         stride1, index, mask, stats, entropy, inv_temperature,
                                         grad_logits, stream);
    case kFloat16:
      return bwd_dispatch_ent<kFloat16>(grad_logp, grad_entropy, logits, A, B, V, stride0, stride1,
                                        index, mask, stats, entropy, inv_temperature, grad_logits,
                                        stream);
  }
  return "selective_log_softmax_bwd (cuda): unsupported dtype code";
}

}  // namespace cuda
}  // namespace ttrl_fast
