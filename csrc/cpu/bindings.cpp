// torch bindings of the CPU kernels: the `ttrl_fast._C_cpu` extension.
// Validation here is a last line of defence (the Python layer already checked shapes and ranges
// with friendly messages); the kernels themselves only see raw pointers.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <vector>
#include <string>
#include <tuple>

#include "gemm_bf16.h"
#include "large_buffers.h"
#include "linear_skinny_f32.h"
#include "policy_loss.h"
#include "sampling.h"
#include "selective_log_softmax.h"
#include "ttrl_fast/logprob_math.h"

namespace ttrl_fast {
namespace cpu {
namespace {

DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "ttrl_fast cpp: logits must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

RowLayout row_layout(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 3, "ttrl_fast cpp: logits must be viewed as [A, B, V], got ", logits.sizes());
  TORCH_CHECK(logits.size(2) == 0 || logits.stride(2) == 1, "ttrl_fast cpp: logits.stride(-1) must be 1");
  return RowLayout{logits.data_ptr(), dtype_code(logits), logits.size(1), logits.size(2), logits.stride(0),
                   logits.stride(1)};
}

void check_rows(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "ttrl_fast cpp: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "ttrl_fast cpp: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous() && t.numel() == n, "ttrl_fast cpp: ", name, " must be contiguous with ", n,
              " elements, got ", t.sizes());
}

// A fresh tensor for a large output (the logits-sized gradient): huge pages and block reuse, see
// large_buffers.h. Small outputs use torch's allocator.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t d : sizes) numel *= d;
  const size_t nbytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (nbytes >= (size_t(8) << 20)) {
    const LargeBlock block = acquire_block(nbytes);
    if (block.ptr != nullptr)
      return torch::from_blob(block.ptr, sizes, [block](void*) { release_block(block); }, options);
  }
  return at::empty(sizes, options);
}

// Rows per task: enough work per task (~64K elements) that scheduling is noise.
int64_t grain_for(int64_t V) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(V, 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_log_softmax_fwd(
    const at::Tensor& logits, const at::Tensor& index, const std::optional<at::Tensor>& mask,
    double inv_temperature, bool with_entropy) {
  TORCH_CHECK(logits.device().is_cpu(), "ttrl_fast cpp: logits must be a CPU tensor");
  const RowLayout layout = row_layout(logits);
  const int64_t n = logits.size(0) * logits.size(1);
  check_rows(index, n, at::kLong, "index");
  if (mask) check_rows(*mask, n, at::kBool, "mask");
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({n}, f32);
  at::Tensor entropy = with_entropy ? at::empty({n}, f32) : at::empty({0}, f32);
  at::Tensor stats = at::empty({n, 2}, f32);
  ForwardArgs args{layout,
                   index.data_ptr<int64_t>(),
                   mask ? mask->data_ptr<bool>() : nullptr,
                   static_cast<float>(inv_temperature),
                   with_entropy,
                   logp.data_ptr<float>(),
                   with_entropy ? entropy.data_ptr<float>() : nullptr,
                   stats.data_ptr<float>()};
  at::parallel_for(0, n, grain_for(layout.V), [&](int64_t begin, int64_t end) {
    selective_log_softmax_forward_rows(args, begin, end);
  });
  return {logp, entropy, stats};
}

at::Tensor selective_log_softmax_bwd_impl(const std::optional<at::Tensor>& grad_logp,
                                     const std::optional<at::Tensor>& grad_entropy, const at::Tensor& logits,
                                     const at::Tensor& index, const std::optional<at::Tensor>& mask,
                                     const at::Tensor& stats, const at::Tensor& entropy, double inv_temperature,
                                          bool in_place) {
  TORCH_CHECK(logits.device().is_cpu(), "ttrl_fast cpp: logits must be a CPU tensor");
  const RowLayout layout = row_layout(logits);
  const int64_t n = logits.size(0) * logits.size(1);
  check_rows(index, n, at::kLong, "index");
  check_rows(stats, 2 * n, at::kFloat, "stats");
  if (mask) check_rows(*mask, n, at::kBool, "mask");
  if (grad_logp) check_rows(*grad_logp, n, at::kFloat, "grad_logp");
  if (grad_entropy) {
    check_rows(*grad_entropy, n, at::kFloat, "grad_entropy");
    check_rows(entropy, n, at::kFloat, "entropy");
  }
  TORCH_CHECK(!in_place || logits.is_contiguous(), "ttrl_fast cpp: in-place backward needs contiguous logits");
  at::Tensor grad = in_place ? logits : empty_large(logits.sizes(), logits.options());
  BackwardArgs args{layout,
                    index.data_ptr<int64_t>(),
                    mask ? mask->data_ptr<bool>() : nullptr,
                    static_cast<float>(inv_temperature),
                    grad_logp ? grad_logp->data_ptr<float>() : nullptr,
                    grad_entropy ? grad_entropy->data_ptr<float>() : nullptr,
                    stats.data_ptr<float>(),
                    grad_entropy ? entropy.data_ptr<float>() : nullptr,
                    grad.data_ptr()};
  at::parallel_for(0, n, grain_for(layout.V), [&](int64_t begin, int64_t end) {
    selective_log_softmax_backward_rows(args, begin, end);
  });
  return grad;
}

at::Tensor selective_log_softmax_bwd(const std::optional<at::Tensor>& grad_logp,
                                     const std::optional<at::Tensor>& grad_entropy, const at::Tensor& logits,
                                     const at::Tensor& index, const std::optional<at::Tensor>& mask,
                                     const at::Tensor& stats, const at::Tensor& entropy, double inv_temperature) {
  return selective_log_softmax_bwd_impl(grad_logp, grad_entropy, logits, index, mask, stats, entropy,
                                        inv_temperature, false);
}

// Overwrites `logits` (contiguous) with its own gradient: for callers that own a scratch tile.
at::Tensor selective_log_softmax_bwd_(const std::optional<at::Tensor>& grad_logp,
                                      const std::optional<at::Tensor>& grad_entropy, at::Tensor logits,
                                      const at::Tensor& index, const std::optional<at::Tensor>& mask,
                                      const at::Tensor& stats, const at::Tensor& entropy, double inv_temperature) {
  return selective_log_softmax_bwd_impl(grad_logp, grad_entropy, logits, index, mask, stats, entropy,
                                        inv_temperature, true);
}

// Test hook: runs the per-element streaming helpers (lse_rebase / lse_accumulate, which the CUDA
// kernels use per thread) and lse_merge of two halves over a 1-D fp32 row, so the CPU tests check
// the GPU's arithmetic. Returns [max, log_sum, entropy] of each of the two paths.
at::Tensor debug_lse_paths(const at::Tensor& row, double inv_temperature) {
  TORCH_CHECK(row.dim() == 1 && row.scalar_type() == at::kFloat && row.is_contiguous(),
              "debug_lse_paths: row must be a contiguous 1-D float32 tensor");
  const float inv_t = static_cast<float>(inv_temperature);
  const float* x = row.data_ptr<float>();
  const int64_t v = row.numel();
  auto stream = [&](int64_t begin, int64_t end) {
    math::LseState st = math::lse_empty();
    for (int64_t i = begin; i < end; ++i) {
      if (x[i] != x[i]) st = math::lse_poison();
      if (x[i] > st.m) math::lse_rebase(st, x[i], inv_t);
      math::lse_accumulate(st, x[i], inv_t);
    }
    return st;
  };
  const math::LseState whole = stream(0, v);
  const math::LseState merged = math::lse_merge(stream(0, v / 2), stream(v / 2, v), inv_t);
  at::Tensor out = at::empty({2, 3}, row.options());
  float* o = out.data_ptr<float>();
  const math::LseState states[2] = {whole, merged};
  for (int k = 0; k < 2; ++k) {
    const math::RowResult r = math::lse_finalize(states[k], 0.0f, true, inv_t);
    o[3 * k] = r.max;
    o[3 * k + 1] = r.log_sum;
    o[3 * k + 2] = r.entropy;
  }
  return out;
}

const float* optional_rows(const std::optional<at::Tensor>& t, int64_t n, const char* name) {
  if (!t) return nullptr;
  check_rows(*t, n, at::kFloat, name);
  return t->data_ptr<float>();
}

std::tuple<at::Tensor, at::Tensor> policy_loss_fwd(
    const at::Tensor& logp, const std::optional<at::Tensor>& old_logp, const at::Tensor& advantages,
    const at::Tensor& mask, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& rollout_is_ratio, const std::optional<at::Tensor>& entropy,
    const std::vector<int64_t>& iparams, const std::vector<double>& fparams) {
  TORCH_CHECK(logp.dim() == 2, "ttrl_fast cpp: logp must be [B, T], got ", logp.sizes());
  TORCH_CHECK(iparams.size() == 7 && fparams.size() == 11, "ttrl_fast cpp: policy_loss needs 7 int and 11 float params");
  const int64_t B = logp.size(0), T = logp.size(1), n = B * T;
  check_rows(logp, n, at::kFloat, "logp");
  check_rows(mask, n, at::kFloat, "mask");
  TORCH_CHECK(advantages.dim() == 2 && advantages.size(0) == B && (advantages.size(1) == 1 || advantages.size(1) == T),
              "ttrl_fast cpp: advantages must be [B, 1] or [B, T], got ", advantages.sizes());
  check_rows(advantages, advantages.numel(), at::kFloat, "advantages");
  int64_t tr = 1;
  if (rollout_is_ratio) {
    TORCH_CHECK(rollout_is_ratio->dim() == 2 && rollout_is_ratio->size(0) == B &&
                    (rollout_is_ratio->size(1) == 1 || rollout_is_ratio->size(1) == T),
                "ttrl_fast cpp: rollout_is_ratio must be [B, 1] or [B, T], got ", rollout_is_ratio->sizes());
    tr = rollout_is_ratio->size(1);
  }
  math::PolicyLossParams params;
  params.loss_type = static_cast<int32_t>(iparams[0]);
  params.aggregation = static_cast<int32_t>(iparams[1]);
  params.kl_estimator = static_cast<int32_t>(iparams[2]);
  params.sequence_level = static_cast<int32_t>(iparams[3]);
  params.bias_correction_kl = static_cast<int32_t>(iparams[4]);
  params.has_delta = static_cast<int32_t>(iparams[5]);
  params.on_policy = static_cast<int32_t>(iparams[6]);
  auto fp = [&](int k) { return static_cast<float>(fparams[k]); };
  params.eps_low = fp(0);
  params.eps_high = fp(1);
  params.delta = fp(2);
  params.beta = fp(3);
  params.sapo_tau_pos = fp(4);
  params.sapo_tau_neg = fp(5);
  params.vespo_k_pos = fp(6);
  params.vespo_lambda_pos = fp(7);
  params.vespo_k_neg = fp(8);
  params.vespo_lambda_neg = fp(9);
  params.norm = fp(10);
  TORCH_CHECK(params.on_policy || old_logp, "ttrl_fast cpp: old_logp is required unless on_policy");
  TORCH_CHECK(params.kl_estimator == 0 || ref_logp, "ttrl_fast cpp: ref_logp is required when beta != 0");

  at::Tensor grad = at::empty({B, T}, logp.options());
  at::Tensor stats = at::empty({B, kSeqStats}, logp.options());
  PolicyLossArgs args{logp.data_ptr<float>(),
                      optional_rows(old_logp, n, "old_logp"),
                      advantages.data_ptr<float>(),
                      mask.data_ptr<float>(),
                      optional_rows(ref_logp, n, "ref_logp"),
                      rollout_is_ratio ? optional_rows(rollout_is_ratio, B * tr, "rollout_is_ratio") : nullptr,
                      optional_rows(entropy, n, "entropy"),
                      B, T, advantages.size(1), tr, params,
                      grad.data_ptr<float>(), stats.data_ptr<float>()};
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1)),
                   [&](int64_t begin, int64_t end) { policy_loss_rows(args, begin, end); });
  return {grad, stats};
}

std::tuple<at::Tensor, at::Tensor> group_advantages_fwd(const at::Tensor& rewards, const at::Tensor& perm,
                                                        const at::Tensor& offsets, int64_t mode,
                                                        int64_t std_correction, double eps, double batch_std) {
  const int64_t n = rewards.numel();
  check_rows(rewards, n, at::kFloat, "rewards");
  check_rows(perm, n, at::kLong, "perm");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1, "ttrl_fast cpp: offsets must be [G + 1]");
  check_rows(offsets, offsets.numel(), at::kLong, "offsets");
  const int64_t groups = offsets.numel() - 1;
  at::Tensor adv = at::empty({n}, rewards.options());
  at::Tensor stats = at::empty({groups, 3}, rewards.options());
  AdvantageArgs args{rewards.data_ptr<float>(), perm.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                     static_cast<int32_t>(mode), static_cast<int32_t>(std_correction), static_cast<float>(eps),
                     static_cast<float>(batch_std), adv.data_ptr<float>(), stats.data_ptr<float>()};
  group_advantages_groups(args, 0, groups);  // O(N): threads would cost more than they save
  return {adv, stats};
}

// out[M, N] (fp32) = a[M, K] @ b[N, K]^T (+ bias[N]), bf16 inputs, fp32 accumulation (gemm_bf16.h).
void gemm_bf16_nt_f32_binding(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                              const std::optional<at::Tensor>& bias, bool portable) {
  const auto check_operand = [](const at::Tensor& t, const char* name, at::ScalarType dtype) {
    TORCH_CHECK(t.device().is_cpu(), "ttrl_fast gemm_bf16: ", name, " must be a CPU tensor, got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "ttrl_fast gemm_bf16: ", name, " must be ", dtype, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.dim() == 2, "ttrl_fast gemm_bf16: ", name, " must be 2-D, got ", t.dim(), "-D ", t.sizes());
    TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "ttrl_fast gemm_bf16: ", name,
                ".stride(1) must be 1 (rows contiguous), got strides ", t.strides());
    TORCH_CHECK(t.size(0) <= 1 || t.stride(0) >= 0, "ttrl_fast gemm_bf16: ", name,
                ".stride(0) must be non-negative, got ", t.strides());
  };
  check_operand(a, "a", at::kBFloat16);
  check_operand(b, "b", at::kBFloat16);
  check_operand(out, "out", at::kFloat);
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  TORCH_CHECK(b.size(1) == K, "ttrl_fast gemm_bf16: a and b must share the inner dimension K, got a ",
              a.sizes(), " and b ", b.sizes());
  TORCH_CHECK(out.size(0) == M && out.size(1) == N, "ttrl_fast gemm_bf16: out must have shape [", M, ", ", N,
              "] ([a.size(0), b.size(0)]), got ", out.sizes());
  TORCH_CHECK(M <= 1 || N == 0 || out.stride(0) >= N, "ttrl_fast gemm_bf16: out rows overlap (stride(0) ",
              out.stride(0), " < N = ", N, ")");
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    const at::Tensor& bv = *bias;
    TORCH_CHECK(bv.device().is_cpu(), "ttrl_fast gemm_bf16: bias must be a CPU tensor, got ", bv.device());
    TORCH_CHECK(bv.scalar_type() == at::kFloat, "ttrl_fast gemm_bf16: bias must be float32, got ",
                bv.scalar_type());
    TORCH_CHECK(bv.dim() == 1 && bv.size(0) == N && bv.is_contiguous(),
                "ttrl_fast gemm_bf16: bias must be a contiguous [", N, "] tensor ([b.size(0)]), got ", bv.sizes());
    bias_ptr = bv.data_ptr<float>();
  }
  if (M == 0 || N == 0) return;
  const auto* a_ptr = reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>());
  const auto* b_ptr = reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>());
  gemm_bf16_nt_f32(a_ptr, a.stride(0), b_ptr, b.stride(0), out.data_ptr<float>(), out.stride(0), M, N, K, bias_ptr,
                   portable);
}

// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), all fp32 (linear_skinny_f32.h). Threads split the
// columns; every element is computed by one thread in the fixed order of linear_f32_math.h, so the
// result does not depend on the thread count or on which thread took which columns.
at::Tensor linear_f32_binding(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                              bool portable) {
  const char* fn = "ttrl_fast linear_f32: ";
  const auto check_operand = [fn](const at::Tensor& t, const char* name, const char* shape) {
    TORCH_CHECK(t.device().is_cpu(), fn, name, " must be a CPU tensor, got device ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat, fn, name, " must be float32, got ", t.scalar_type(), " (shape ",
                t.sizes(), ")");
    TORCH_CHECK(t.dim() == 2, fn, name, " must be 2-D ", shape, ", got ", t.dim(), "-D shape ", t.sizes());
    TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, fn, name, ".stride(1) must be 1 (rows contiguous; any row ",
                "stride), got shape ", t.sizes(), " strides ", t.strides());
    TORCH_CHECK(t.size(0) <= 1 || t.stride(0) >= 0, fn, name, ".stride(0) must be non-negative, got strides ",
                t.strides());
  };
  check_operand(x, "x", "[M, K]");
  check_operand(w, "weight", "[N, K] (the nn.Linear layout)");
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  TORCH_CHECK(w.size(1) == K, fn, "x and weight must share the inner dimension K: x ", x.sizes(), " is [M, K] and ",
              "weight ", w.sizes(), " is [N, K]");
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.device().is_cpu(), fn, "bias must be a CPU tensor, got device ", b.device());
    TORCH_CHECK(b.scalar_type() == at::kFloat, fn, "bias must be float32, got ", b.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == N && (N <= 1 || b.stride(0) == 1), fn,
                "bias must be a contiguous [N] = [", N, "] tensor (N = weight.size(0)), got shape ", b.sizes(),
                " strides ", b.strides());
    bias_ptr = b.data_ptr<float>();
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const LinearF32Problem problem{x.data_ptr<float>(), x.stride(0), w.data_ptr<float>(), w.stride(0), bias_ptr,
                                 out.data_ptr<float>(), N, M, N, K};
  // Columns go in blocks of 4 (the kernel's register block). A small layer (< 512K multiply-adds)
  // runs on the calling thread; else the threads take chunks of column blocks (>= 64K multiply-adds,
  // ~8 per thread) from a shared counter, so a thread slowed by other load on its core holds up the
  // call by one chunk at most.
  const int64_t blocks = (N + 3) / 4;
  const int64_t per_block = 4 * std::max<int64_t>(K, 1) * std::min<int64_t>(M, 64);
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || at::in_parallel_region() || blocks * per_block < (int64_t{1} << 19)) {
    linear_f32_cols(problem, 0, N, portable);
    return out;
  }
  const int64_t chunk = std::max((int64_t{1} << 16) / per_block + 1, (blocks + 8 * threads - 1) / (8 * threads));
  const int64_t chunks = (blocks + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1))
      linear_f32_cols(problem, 4 * c * chunk, std::min(N, 4 * (c + 1) * chunk), portable);
  });
  return out;
}

// sample_tokens (raw contract in ttrl_fast/kernels/__init__.py; kernel in sampling_kernel.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_fwd(
    const at::Tensor& logits, const at::Tensor& row_keys, int64_t step, const std::optional<at::Tensor>& seen,
    const std::optional<at::Tensor>& ban_ids, const std::vector<int64_t>& iparams,
    const std::vector<double>& fparams) {
  const char* fn = "ttrl_fast cpp sample_tokens_fwd: ";
  TORCH_CHECK(logits.device().is_cpu(), fn, "logits must be a CPU tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 2, fn, "logits must be 2-D [R, V], got shape ", logits.sizes());
  const DType dtype = dtype_code(logits);
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1, fn, "logits must have a non-empty vocabulary (V >= 1), got shape ", logits.sizes());
  TORCH_CHECK(V <= (int64_t{1} << 31), fn, "vocabulary size V must be <= 2^31, got ", V);
  TORCH_CHECK(V == 1 || logits.stride(1) == 1, fn, "logits must have stride(-1) == 1 (rows may be strided), got strides ",
              logits.strides());
  TORCH_CHECK(R <= 1 || logits.stride(0) >= 0, fn, "logits.stride(0) must be non-negative, got ", logits.strides());
  TORCH_CHECK(row_keys.device().is_cpu() && row_keys.scalar_type() == at::kLong && row_keys.dim() == 1 &&
                  row_keys.size(0) == R && row_keys.is_contiguous(),
              fn, "row_keys must be a contiguous CPU int64 tensor of shape [R] = [", R, "], got ", row_keys.scalar_type(),
              " ", row_keys.sizes(), " on ", row_keys.device());
  TORCH_CHECK(step >= 0, fn, "step must be >= 0, got ", step);
  const bool has_seen = seen.has_value() && seen->defined();
  if (has_seen) {
    const at::Tensor& sn = *seen;
    TORCH_CHECK(sn.device().is_cpu() && sn.scalar_type() == at::kBool && sn.dim() == 2 && sn.size(0) == R &&
                    sn.size(1) == V && sn.is_contiguous(),
                fn, "seen must be a contiguous CPU bool tensor of shape [R, V] = [", R, ", ", V, "] or None, got ",
                sn.scalar_type(), " ", sn.sizes(), " on ", sn.device(), sn.is_contiguous() ? "" : " (not contiguous)");
  }
  const bool has_ban = ban_ids.has_value() && ban_ids->defined();
  int64_t n_ban = 0;
  if (has_ban) {
    const at::Tensor& b = *ban_ids;
    TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kLong && b.dim() == 1 && b.is_contiguous(), fn,
                "ban_ids must be a contiguous 1-D CPU int64 tensor [S] or None, got ", b.scalar_type(), " ", b.sizes(),
                " on ", b.device());
    n_ban = b.size(0);
    const int64_t* ids = b.data_ptr<int64_t>();
    for (int64_t i = 0; i < n_ban; ++i)
      TORCH_CHECK(ids[i] >= 0 && ids[i] < V, fn, "ban_ids must lie in [0, V) = [0, ", V, "), got ban_ids[", i,
                  "] = ", ids[i]);
  }
  TORCH_CHECK(iparams.size() == 2, fn, "iparams must hold 2 ints (greedy, top_k), got ", iparams.size());
  TORCH_CHECK(fparams.size() == 4, fn,
              "fparams must hold 4 floats (inv_temperature, top_p, min_p, repetition_penalty), got ", fparams.size());
  const int64_t greedy = iparams[0], top_k = iparams[1];
  const double inv_t = fparams[0], top_p = fparams[1], min_p = fparams[2], penalty = fparams[3];
  TORCH_CHECK(greedy == 0 || greedy == 1, fn, "iparams[0] (greedy) must be 0 or 1, got ", greedy);
  TORCH_CHECK(top_k >= 0, fn, "iparams[1] (top_k) must be >= 0 (0 = off), got ", top_k);
  TORCH_CHECK(std::isfinite(inv_t) && inv_t > 0.0, fn,
              "fparams[0] (inv_temperature) must be finite and > 0, got ", inv_t);
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, fn, "fparams[1] (top_p) must be in (0, 1] (1 = off), got ", top_p);
  TORCH_CHECK(min_p >= 0.0 && min_p <= 1.0, fn, "fparams[2] (min_p) must be in [0, 1] (0 = off), got ", min_p);
  TORCH_CHECK(std::isfinite(penalty) && penalty > 0.0, fn,
              "fparams[3] (repetition_penalty) must be finite and > 0 (1 = off), got ", penalty);

  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor tokens = at::empty({R}, logits.options().dtype(at::kLong));
  at::Tensor logp_raw = at::empty({R}, f32);
  at::Tensor logp_processed = at::empty({R}, f32);
  at::Tensor log_kept = at::empty({R}, f32);
  if (R == 0) return {tokens, logp_raw, logp_processed, log_kept};
  SampleArgs args;
  args.logits = logits.data_ptr();
  args.dtype = dtype;
  args.R = R;
  args.V = V;
  args.row_stride = logits.stride(0);
  args.row_keys = row_keys.data_ptr<int64_t>();
  args.step = static_cast<uint32_t>(static_cast<uint64_t>(step) & 0xFFFFFFFFu);
  args.seen = has_seen ? seen->data_ptr<bool>() : nullptr;
  args.ban_ids = n_ban > 0 ? ban_ids->data_ptr<int64_t>() : nullptr;
  args.n_ban = n_ban;
  args.greedy = greedy != 0;
  args.top_k = top_k;
  args.inv_t = static_cast<float>(inv_t);
  args.top_p = top_p;
  args.min_p = min_p;
  args.penalty = penalty;
  args.tokens = tokens.data_ptr<int64_t>();
  args.logp_raw = logp_raw.data_ptr<float>();
  args.logp_processed = logp_processed.data_ptr<float>();
  args.log_kept = log_kept.data_ptr<float>();
  TORCH_CHECK(std::isfinite(args.inv_t) && args.inv_t > 0.0f, fn,
              "fparams[0] (inv_temperature) must be a positive finite float32, got ", inv_t);
  // Rows are independent (per-thread scratch), so the result does not depend on the split.
  at::parallel_for(0, R, std::max<int64_t>(1, 16384 / V), [&](int64_t begin, int64_t end) {
    sample_tokens_rows(args, begin, end);
  });
  return {tokens, logp_raw, logp_processed, log_kept};
}

}  // namespace
}  // namespace cpu
}  // namespace ttrl_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace ttrl_fast::cpu;
  m.doc() = "ttrl_fast C++ CPU kernels (raw backend; use ttrl_fast.* for the public API)";
  m.def("selective_log_softmax_fwd", &selective_log_softmax_fwd, py::arg("logits"), py::arg("index"),
        py::arg("mask"), py::arg("inv_temperature"), py::arg("with_entropy"));
  m.def("selective_log_softmax_bwd", &selective_log_softmax_bwd, py::arg("grad_logp"), py::arg("grad_entropy"),
        py::arg("logits"), py::arg("index"), py::arg("mask"), py::arg("stats"), py::arg("entropy"),
        py::arg("inv_temperature"));
  m.def("selective_log_softmax_bwd_", &selective_log_softmax_bwd_, py::arg("grad_logp"), py::arg("grad_entropy"),
        py::arg("logits"), py::arg("index"), py::arg("mask"), py::arg("stats"), py::arg("entropy"),
        py::arg("inv_temperature"), "In-place backward: logits (contiguous) become their gradient.");
  m.def("policy_loss_fwd", &policy_loss_fwd, py::arg("logp"), py::arg("old_logp"), py::arg("advantages"),
        py::arg("mask"), py::arg("ref_logp"), py::arg("rollout_is_ratio"), py::arg("entropy"), py::arg("iparams"),
        py::arg("fparams"));
  m.def("group_advantages_fwd", &group_advantages_fwd, py::arg("rewards"), py::arg("perm"), py::arg("offsets"),
        py::arg("mode"), py::arg("std_correction"), py::arg("eps"), py::arg("batch_std"));
  m.def("sample_tokens_fwd", &sample_tokens_fwd, py::arg("logits"), py::arg("row_keys"), py::arg("step"),
        py::arg("seen"), py::arg("ban_ids"), py::arg("iparams"), py::arg("fparams"),
        "(logits, row_keys, step, seen, ban_ids, iparams[2], fparams[4]) -> (tokens, logp_raw, logp_processed, log_kept)");
  m.def("debug_lse_paths", &debug_lse_paths, py::arg("row"), py::arg("inv_temperature"));
  m.def("force_isa", [](const std::string& name) { return force_isa(name.c_str()); }, py::arg("name"),
        "Tests only: run the given ISA variant ('' = automatic). False if the CPU lacks it.");
  m.def("gemm_bf16_nt_f32", &gemm_bf16_nt_f32_binding, py::arg("a"), py::arg("b"), py::arg("out"),
        py::arg("bias") = py::none(), py::arg("portable") = false,
        "out[M, N] (fp32) = a[M, K] @ b[N, K]^T (+ bias[N]); a, b bfloat16 with contiguous rows, fp32 "
        "accumulation. portable=True forces the plain C++ fallback (tests).");
  m.def("gemm_bf16_has_native", &gemm_bf16_has_native, "True when the avx512-bf16 GEMM kernel runs here.");
  m.def("linear_f32", &linear_f32_binding, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
        py::arg("portable") = false,
        "out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]), float32 with fp32 accumulation in a fixed order "
        "(bitwise reproducible, thread-count independent); x and weight 2-D with contiguous rows. "
        "portable=True forces the plain C++ fallback (tests).",
        py::call_guard<py::gil_scoped_release>());
  m.def("linear_f32_has_native", &linear_f32_has_native, "True when the AVX-512 linear_f32 kernel runs here.");
  m.def("release_cached_memory", &release_cached, "Frees the cached gradient block; returns its bytes.");
  m.def("cached_memory", &cached_bytes, "Bytes held by the gradient block cache.");
  m.def("build_info", []() {
    py::dict info;
    info["isa"] = std::string(selected_isa());
    info["threads"] = at::get_num_threads();
    return info;
  });
}
