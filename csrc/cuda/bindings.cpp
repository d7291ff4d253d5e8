// Python bindings of the CUDA backend (extension module ttrl_fast._C_cuda).
//
// Compiled by the host compiler: validates tensors, allocates outputs, and calls the raw-pointer
// launchers of selective_log_softmax.cu, policy_loss.cu and advantages.cu on the current CUDA
// stream. The raw contract is documented in ttrl_fast/kernels/__init__.py.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "advantages.cuh"
#include "policy_loss.cuh"
#include "sampling.cuh"
#include "selective_log_softmax.cuh"

namespace {

namespace tc = ::ttrl_fast::cuda;

#define TTRL_STR_(x) #x
#define TTRL_STR(x) TTRL_STR_(x)

tc::DTypeCode dtype_code(const at::Tensor& logits, const char* fn) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      return tc::kFloat32;
    case at::kBFloat16:
      return tc::kBFloat16;
    case at::kHalf:
      return tc::kFloat16;
    default:
      TORCH_CHECK(false, fn, ": logits must be float32, bfloat16 or float16, got ",
                  logits.scalar_type());
  }
  return tc::kFloat32;  // unreachable
}

void check_logits(const at::Tensor& logits, const char* fn) {
  TORCH_CHECK(logits.defined(), fn, ": logits is undefined");
  TORCH_CHECK(logits.is_cuda(), fn, ": logits must be a CUDA tensor, got device ",
              logits.device());
  TORCH_CHECK(logits.dim() == 3, fn, ": logits must be 3-D [A, B, V], got shape ",
              logits.sizes());
  TORCH_CHECK(logits.size(2) >= 1, fn, ": logits must have a non-empty vocabulary dimension");
  TORCH_CHECK(logits.stride(2) == 1 || logits.size(2) == 1, fn,
              ": logits must be contiguous along the vocabulary (stride(-1) == 1), got strides ",
              logits.strides());
  TORCH_CHECK(logits.size(2) <= std::numeric_limits<int32_t>::max(), fn,
              ": vocabulary size must be < 2^31");
  TORCH_CHECK(logits.size(0) * logits.size(1) <= std::numeric_limits<int32_t>::max(), fn,
              ": A * B must be < 2^31 rows");
  dtype_code(logits, fn);
}

// A per-row tensor: rows elements, contiguous, given dtype, same CUDA device as logits.
void check_rows(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows,
                const at::Tensor& logits, const char* fn) {
  TORCH_CHECK(t.defined(), fn, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda() && t.device() == logits.device(), fn, ": ", name,
              " must be on the same CUDA device as logits (", logits.device(), "), got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, fn, ": ", name, " must have shape [A*B] = [",
              rows, "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

const uint8_t* mask_ptr(const std::optional<at::Tensor>& mask, int64_t rows,
                        const at::Tensor& logits, const char* fn) {
  if (!mask.has_value() || !mask->defined()) return nullptr;
  check_rows(*mask, "mask", at::kBool, rows, logits, fn);
  return reinterpret_cast<const uint8_t*>(mask->data_ptr<bool>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_log_softmax_fwd(
    const at::Tensor& logits, const at::Tensor& index, const std::optional<at::Tensor>& mask,
    double inv_temperature, bool with_entropy) {
  const char* fn = "selective_log_softmax_fwd (cuda)";
  check_logits(logits, fn);
  const int64_t A = logits.size(0), B = logits.size(1), V = logits.size(2);
  const int64_t rows = A * B;
  check_rows(index, "index", at::kLong, rows, logits, fn);
  const uint8_t* mask_p = mask_ptr(mask, rows, logits, fn);

  const c10::cuda::CUDAGuard guard(logits.device());
  const auto fopts = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({rows}, fopts);
  at::Tensor entropy = with_entropy ? at::empty({rows}, fopts) : at::empty({0}, fopts);
  at::Tensor stats = at::empty({rows, 2}, fopts);
  if (rows == 0) return {logp, entropy, stats};

  const char* err = tc::selective_log_softmax_fwd_launch(
      dtype_code(logits, fn), logits.data_ptr(), A, B, V, logits.stride(0), logits.stride(1),
      index.data_ptr<int64_t>(), mask_p, static_cast<float>(inv_temperature),
      logp.data_ptr<float>(), with_entropy ? entropy.data_ptr<float>() : nullptr,
      stats.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, fn, ": ", err == nullptr ? "" : err);
  return {logp, entropy, stats};
}

at::Tensor selective_log_softmax_bwd(const std::optional<at::Tensor>& grad_logp,
                                     const std::optional<at::Tensor>& grad_entropy,
                                     const at::Tensor& logits, const at::Tensor& index,
                                     const std::optional<at::Tensor>& mask,
                                     const at::Tensor& stats,
                                     const std::optional<at::Tensor>& entropy,
                                     double inv_temperature) {
  const char* fn = "selective_log_softmax_bwd (cuda)";
  check_logits(logits, fn);
  const int64_t A = logits.size(0), B = logits.size(1), V = logits.size(2);
  const int64_t rows = A * B;
  check_rows(index, "index", at::kLong, rows, logits, fn);
  const uint8_t* mask_p = mask_ptr(mask, rows, logits, fn);

  TORCH_CHECK(stats.defined(), fn, ": stats is undefined");
  TORCH_CHECK(stats.is_cuda() && stats.device() == logits.device(), fn,
              ": stats must be on the same CUDA device as logits");
  TORCH_CHECK(stats.scalar_type() == at::kFloat, fn, ": stats must be float32, got ",
              stats.scalar_type());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == rows && stats.size(1) == 2, fn,
              ": stats must have shape [A*B, 2] = [", rows, ", 2], got ", stats.sizes());
  TORCH_CHECK(stats.is_contiguous(), fn, ": stats must be contiguous");

  const bool has_gl = grad_logp.has_value() && grad_logp->defined();
  const bool has_ge = grad_entropy.has_value() && grad_entropy->defined();
  if (has_gl) check_rows(*grad_logp, "grad_logp", at::kFloat, rows, logits, fn);
  if (has_ge) {
    check_rows(*grad_entropy, "grad_entropy", at::kFloat, rows, logits, fn);
    TORCH_CHECK(entropy.has_value() && entropy->defined() && entropy->numel() > 0, fn,
                ": grad_entropy is given, so the forward's entropy is required");
    check_rows(*entropy, "entropy", at::kFloat, rows, logits, fn);
  }

  const c10::cuda::CUDAGuard guard(logits.device());
  // Fresh contiguous [A, B, V] gradient in logits.dtype (whatever logits' own strides are).
  const auto out_opts = logits.options().memory_format(at::MemoryFormat::Contiguous);
  if (!has_gl && !has_ge) return at::zeros({A, B, V}, out_opts);  // None = zeros
  at::Tensor grad_logits = at::empty({A, B, V}, out_opts);
  if (rows == 0) return grad_logits;

  const char* err = tc::selective_log_softmax_bwd_launch(
      dtype_code(logits, fn), has_gl ? grad_logp->data_ptr<float>() : nullptr,
      has_ge ? grad_entropy->data_ptr<float>() : nullptr, logits.data_ptr(), A, B, V,
      logits.stride(0), logits.stride(1), index.data_ptr<int64_t>(), mask_p,
      stats.data_ptr<float>(), has_ge ? entropy->data_ptr<float>() : nullptr,
      static_cast<float>(inv_temperature), grad_logits.data_ptr(),
      at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, fn, ": ", err == nullptr ? "" : err);
  return grad_logits;
}

// ------------------------------------------------------------------------------------------------
// policy_loss / group_advantages.

// A float32 / int64 ... tensor of the given shape on the CUDA device `dev`, contiguous.
void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype,
                  at::IntArrayRef shape, const char* shape_text, const at::Device& dev,
                  const char* fn) {
  TORCH_CHECK(t.defined(), fn, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == dev, fn, ": ", name, " must be on the same CUDA device as the other inputs (",
              dev, "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " must have shape ", shape_text, " = ", shape,
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

std::tuple<at::Tensor, at::Tensor> policy_loss_fwd(
    const at::Tensor& logp, const std::optional<at::Tensor>& old_logp,
    const at::Tensor& advantages, const at::Tensor& mask,
    const std::optional<at::Tensor>& ref_logp, const std::optional<at::Tensor>& rollout_is_ratio,
    const std::optional<at::Tensor>& entropy, const std::vector<int64_t>& iparams,
    const std::vector<double>& fparams) {
  const char* fn = "policy_loss_fwd (cuda)";
  TORCH_CHECK(logp.defined(), fn, ": logp is undefined");
  TORCH_CHECK(logp.is_cuda(), fn, ": logp must be a CUDA tensor, got device ", logp.device());
  TORCH_CHECK(logp.dim() == 2, fn, ": logp must be 2-D [B, T], got shape ", logp.sizes());
  const int64_t B = logp.size(0), T = logp.size(1);
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), fn, ": B must be < 2^31");
  TORCH_CHECK(T <= std::numeric_limits<int32_t>::max(), fn, ": T must be < 2^31");
  const at::Device dev = logp.device();
  check_tensor(logp, "logp", at::kFloat, {B, T}, "[B, T]", dev, fn);
  check_tensor(mask, "mask", at::kFloat, {B, T}, "[B, T]", dev, fn);

  TORCH_CHECK(advantages.defined(), fn, ": advantages is undefined");
  TORCH_CHECK(advantages.dim() == 2 && advantages.size(0) == B &&
                  (advantages.size(1) == 1 || advantages.size(1) == T),
              fn, ": advantages must have shape [B, 1] or [B, T] with B = ", B, ", T = ", T,
              ", got ", advantages.sizes());
  const int64_t Ta = advantages.size(1);
  check_tensor(advantages, "advantages", at::kFloat, {B, Ta}, "[B, Ta]", dev, fn);

  TORCH_CHECK(iparams.size() == 7, fn,
              ": iparams must hold 7 ints (loss_type, aggregation, kl_estimator, sequence_level, "
              "bias_correction_kl, has_delta, on_policy), got ",
              iparams.size());
  TORCH_CHECK(fparams.size() == 11, fn,
              ": fparams must hold 11 floats (eps_low, eps_high, delta, beta, sapo_tau_pos, "
              "sapo_tau_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, norm), got ",
              fparams.size());
  namespace tm = ::ttrl_fast::math;
  tm::PolicyLossParams p;
  p.loss_type = static_cast<int32_t>(iparams[0]);
  p.aggregation = static_cast<int32_t>(iparams[1]);
  p.kl_estimator = static_cast<int32_t>(iparams[2]);
  p.sequence_level = static_cast<int32_t>(iparams[3]);
  p.bias_correction_kl = static_cast<int32_t>(iparams[4]);
  p.has_delta = static_cast<int32_t>(iparams[5]);
  p.on_policy = static_cast<int32_t>(iparams[6]);
  p.eps_low = static_cast<float>(fparams[0]);
  p.eps_high = static_cast<float>(fparams[1]);
  p.delta = static_cast<float>(fparams[2]);
  p.beta = static_cast<float>(fparams[3]);
  p.sapo_tau_pos = static_cast<float>(fparams[4]);
  p.sapo_tau_neg = static_cast<float>(fparams[5]);
  p.vespo_k_pos = static_cast<float>(fparams[6]);
  p.vespo_lambda_pos = static_cast<float>(fparams[7]);
  p.vespo_k_neg = static_cast<float>(fparams[8]);
  p.vespo_lambda_neg = static_cast<float>(fparams[9]);
  p.norm = static_cast<float>(fparams[10]);
  TORCH_CHECK(iparams[0] >= tm::kPpoClip && iparams[0] <= tm::kVespo, fn,
              ": iparams[0] (loss_type) must be 0 (ppo clip), 1 (cispo), 2 (sapo) or 3 (vespo), got ",
              iparams[0]);
  TORCH_CHECK(iparams[1] >= tm::kSeqMeanTokenMean && iparams[1] <= tm::kSeqMeanTokenSum, fn,
              ": iparams[1] (aggregation) must be 0, 1 or 2, got ", iparams[1]);
  TORCH_CHECK(iparams[2] >= tm::kKlNone && iparams[2] <= tm::kK3, fn,
              ": iparams[2] (kl_estimator) must be 0 (none), 1 (k1), 2 (k2) or 3 (k3), got ",
              iparams[2]);

  const bool on_policy = p.on_policy != 0;
  TORCH_CHECK(on_policy || given(old_logp), fn,
              ": old_logp is required unless iparams[6] (on_policy) is set");
  if (!on_policy) check_tensor(*old_logp, "old_logp", at::kFloat, {B, T}, "[B, T]", dev, fn);
  const bool need_ref = p.kl_estimator != tm::kKlNone;
  TORCH_CHECK(!need_ref || given(ref_logp), fn,
              ": ref_logp is required when iparams[2] (kl_estimator) != 0");
  if (need_ref) check_tensor(*ref_logp, "ref_logp", at::kFloat, {B, T}, "[B, T]", dev, fn);
  int64_t Tr = 0;
  if (given(rollout_is_ratio)) {
    const at::Tensor& rr = *rollout_is_ratio;
    TORCH_CHECK(rr.dim() == 2 && rr.size(0) == B && (rr.size(1) == 1 || rr.size(1) == T), fn,
                ": rollout_is_ratio must have shape [B, 1] or [B, T] with B = ", B, ", T = ", T,
                ", got ", rr.sizes());
    Tr = rr.size(1);
    check_tensor(rr, "rollout_is_ratio", at::kFloat, {B, Tr}, "[B, Tr]", dev, fn);
  }
  if (given(entropy)) check_tensor(*entropy, "entropy", at::kFloat, {B, T}, "[B, T]", dev, fn);

  const c10::cuda::CUDAGuard guard(dev);
  const auto fopts = logp.options().dtype(at::kFloat);
  at::Tensor grad_logp = at::empty({B, T}, fopts);
  at::Tensor seq_stats = at::empty({B, tc::kPolicyLossStatCols}, fopts);
  if (B == 0) return {grad_logp, seq_stats};

  const char* err = tc::policy_loss_fwd_launch(
      logp.data_ptr<float>(), on_policy ? nullptr : old_logp->data_ptr<float>(),
      advantages.data_ptr<float>(), mask.data_ptr<float>(),
      need_ref ? ref_logp->data_ptr<float>() : nullptr,
      given(rollout_is_ratio) ? rollout_is_ratio->data_ptr<float>() : nullptr,
      given(entropy) ? entropy->data_ptr<float>() : nullptr, B, T, Ta, Tr, p,
      grad_logp.data_ptr<float>(), seq_stats.data_ptr<float>(),
      at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, fn, ": ", err == nullptr ? "" : err);
  return {grad_logp, seq_stats};
}

std::tuple<at::Tensor, at::Tensor> group_advantages_fwd(const at::Tensor& rewards,
                                                        const at::Tensor& perm,
                                                        const at::Tensor& offsets, int64_t mode,
                                                        int64_t std_correction, double eps,
                                                        double batch_std) {
  const char* fn = "group_advantages_fwd (cuda)";
  TORCH_CHECK(rewards.defined(), fn, ": rewards is undefined");
  TORCH_CHECK(rewards.is_cuda(), fn, ": rewards must be a CUDA tensor, got device ",
              rewards.device());
  TORCH_CHECK(rewards.dim() == 1, fn, ": rewards must be 1-D [N], got shape ", rewards.sizes());
  const int64_t N = rewards.size(0);
  const at::Device dev = rewards.device();
  check_tensor(rewards, "rewards", at::kFloat, {N}, "[N]", dev, fn);
  check_tensor(perm, "perm", at::kLong, {N}, "[N]", dev, fn);
  TORCH_CHECK(offsets.defined() && offsets.dim() == 1 && offsets.size(0) >= 1, fn,
              ": offsets must be 1-D [G + 1] with at least one entry, got shape ",
              offsets.defined() ? offsets.sizes() : at::IntArrayRef{});
  const int64_t G = offsets.size(0) - 1;
  check_tensor(offsets, "offsets", at::kLong, {G + 1}, "[G + 1]", dev, fn);
  TORCH_CHECK(mode >= 0 && mode <= 3, fn,
              ": mode must be 0 (group), 1 (batch), 2 (none) or 3 (rloo), got ", mode);
  TORCH_CHECK(std_correction >= 0 && std_correction <= std::numeric_limits<int32_t>::max(), fn,
              ": std_correction must be a non-negative int, got ", std_correction);

  const c10::cuda::CUDAGuard guard(dev);
  const auto fopts = rewards.options().dtype(at::kFloat);
  at::Tensor advantages = at::zeros({N}, fopts);  // samples no group lists read 0
  at::Tensor group_stats = at::empty({G, 3}, fopts);
  if (G == 0) return {advantages, group_stats};

  const char* err = tc::group_advantages_fwd_launch(
      rewards.data_ptr<float>(), perm.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), N, G,
      static_cast<int32_t>(mode), static_cast<int32_t>(std_correction), static_cast<float>(eps),
      static_cast<float>(batch_std), advantages.data_ptr<float>(), group_stats.data_ptr<float>(),
      at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, fn, ": ", err == nullptr ? "" : err);
  return {advantages, group_stats};
}

// ------------------------------------------------------------------------------------------------
// sample_tokens (raw contract in ttrl_fast/kernels/__init__.py; kernel in sampling.cu).

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_fwd(
    const at::Tensor& logits, const at::Tensor& row_keys, int64_t step,
    const std::optional<at::Tensor>& seen, const std::optional<at::Tensor>& ban_ids,
    const std::vector<int64_t>& iparams, const std::vector<double>& fparams) {
  const char* fn = "sample_tokens_fwd (cuda)";
  TORCH_CHECK(logits.defined(), fn, ": logits is undefined");
  TORCH_CHECK(logits.is_cuda(), fn, ": logits must be a CUDA tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 2, fn, ": logits must be 2-D [R, V], got shape ", logits.sizes());
  const tc::DTypeCode dtype = dtype_code(logits, fn);
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1, fn, ": logits must have a non-empty vocabulary (V >= 1), got shape ",
              logits.sizes());
  TORCH_CHECK(V <= (int64_t{1} << 31), fn, ": vocabulary size V must be <= 2^31, got ", V);
  TORCH_CHECK(R <= std::numeric_limits<int32_t>::max(), fn, ": R must be < 2^31 rows, got ", R);
  TORCH_CHECK(V == 1 || logits.stride(1) == 1, fn,
              ": logits must have stride(-1) == 1 (rows may be strided), got strides ",
              logits.strides());
  TORCH_CHECK(R <= 1 || logits.stride(0) >= 0, fn, ": logits.stride(0) must be non-negative, got ",
              logits.strides());
  const at::Device dev = logits.device();
  TORCH_CHECK(row_keys.defined() && row_keys.is_cuda() && row_keys.device() == dev &&
                  row_keys.scalar_type() == at::kLong && row_keys.dim() == 1 &&
                  row_keys.size(0) == R && row_keys.is_contiguous(),
              fn, ": row_keys must be a contiguous int64 tensor of shape [R] = [", R,
              "] on the logits' device (", dev, "), got ",
              row_keys.defined() ? c10::toString(row_keys.scalar_type()) : "undefined", " ",
              row_keys.defined() ? row_keys.sizes() : at::IntArrayRef{}, " on ",
              row_keys.defined() ? row_keys.device() : at::Device(at::kCPU));
  TORCH_CHECK(step >= 0, fn, ": step must be >= 0, got ", step);
  const bool has_seen = given(seen);
  if (has_seen) {
    const at::Tensor& sn = *seen;
    TORCH_CHECK(sn.is_cuda() && sn.device() == dev && sn.scalar_type() == at::kBool &&
                    sn.dim() == 2 && sn.size(0) == R && sn.size(1) == V && sn.is_contiguous(),
                fn, ": seen must be a contiguous bool tensor of shape [R, V] = [", R, ", ", V,
                "] on the logits' device (", dev, ") or None, got ", sn.scalar_type(), " ",
                sn.sizes(), " on ", sn.device(), sn.is_contiguous() ? "" : " (not contiguous)");
  }
  int64_t n_ban = 0;
  if (given(ban_ids)) {
    const at::Tensor& b = *ban_ids;
    TORCH_CHECK(b.is_cuda() && b.device() == dev && b.scalar_type() == at::kLong && b.dim() == 1 &&
                    b.is_contiguous(),
                fn, ": ban_ids must be a contiguous 1-D int64 tensor [S] on the logits' device (",
                dev, ") or None, got ", b.scalar_type(), " ", b.sizes(), " on ", b.device());
    n_ban = b.size(0);
    if (n_ban > 0) {  // one small device-to-host copy: an out-of-range id would write out of bounds
      const int64_t lo = b.min().item<int64_t>(), hi = b.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < V, fn, ": ban_ids must lie in [0, V) = [0, ", V, "), got values in [",
                  lo, ", ", hi, "]");
    }
  }
  TORCH_CHECK(iparams.size() == 2, fn, ": iparams must hold 2 ints (greedy, top_k), got ",
              iparams.size());
  TORCH_CHECK(fparams.size() == 4, fn,
              ": fparams must hold 4 floats (inv_temperature, top_p, min_p, repetition_penalty), got ",
              fparams.size());
  const int64_t greedy = iparams[0], top_k = iparams[1];
  const double inv_t = fparams[0], top_p = fparams[1], min_p = fparams[2], penalty = fparams[3];
  TORCH_CHECK(greedy == 0 || greedy == 1, fn, ": iparams[0] (greedy) must be 0 or 1, got ", greedy);
  TORCH_CHECK(top_k >= 0, fn, ": iparams[1] (top_k) must be >= 0 (0 = off), got ", top_k);
  TORCH_CHECK(std::isfinite(inv_t) && inv_t > 0.0 && std::isfinite(static_cast<float>(inv_t)) &&
                  static_cast<float>(inv_t) > 0.0f,
              fn, ": fparams[0] (inv_temperature) must be a finite float32 > 0, got ", inv_t);
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, fn, ": fparams[1] (top_p) must be in (0, 1] (1 = off), got ",
              top_p);
  TORCH_CHECK(min_p >= 0.0 && min_p <= 1.0, fn, ": fparams[2] (min_p) must be in [0, 1] (0 = off), got ",
              min_p);
  TORCH_CHECK(std::isfinite(penalty) && penalty > 0.0, fn,
              ": fparams[3] (repetition_penalty) must be finite and > 0 (1 = off), got ", penalty);

  const c10::cuda::CUDAGuard guard(dev);
  const auto fopts = logits.options().dtype(at::kFloat);
  at::Tensor tokens = at::empty({R}, logits.options().dtype(at::kLong));
  at::Tensor logp_raw = at::empty({R}, fopts);
  at::Tensor logp_processed = at::empty({R}, fopts);
  at::Tensor log_kept = at::empty({R}, fopts);
  if (R == 0) return {tokens, logp_raw, logp_processed, log_kept};
  at::Tensor workspace = at::empty({R, V}, fopts);

  tc::SampleTokensArgs args;
  args.dtype = dtype;
  args.logits = logits.data_ptr();
  args.R = R;
  args.V = V;
  args.row_stride = logits.stride(0);
  args.row_keys = row_keys.data_ptr<int64_t>();
  args.step = static_cast<uint32_t>(static_cast<uint64_t>(step) & 0xFFFFFFFFu);
  args.seen = has_seen ? reinterpret_cast<const uint8_t*>(seen->data_ptr<bool>()) : nullptr;
  args.ban_ids = n_ban > 0 ? ban_ids->data_ptr<int64_t>() : nullptr;
  args.n_ban = n_ban;
  args.greedy = static_cast<int32_t>(greedy);
  args.top_k = top_k;
  args.inv_t = static_cast<float>(inv_t);
  args.top_p = top_p;
  args.min_p = min_p;
  args.penalty = penalty;
  args.workspace = workspace.data_ptr<float>();
  args.tokens = tokens.data_ptr<int64_t>();
  args.logp_raw = logp_raw.data_ptr<float>();
  args.logp_processed = logp_processed.data_ptr<float>();
  args.log_kept = log_kept.data_ptr<float>();
  const char* err = tc::sample_tokens_fwd_launch(args, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, fn, ": ", err == nullptr ? "" : err);
  return {tokens, logp_raw, logp_processed, log_kept};
}

// The arch list is passed at build time as -DTTRL_FAST_CUDA_ARCHS=... either as a string literal
// or as bare tokens (shell quoting differs between build backends); stringify, then drop quotes.
std::string arch_list() {
#ifdef TTRL_FAST_CUDA_ARCHS
  std::string s = TTRL_STR(TTRL_FAST_CUDA_ARCHS);
  std::string out;
  for (char c : s)
    if (c != '"' && c != '\\' && c != ' ') out.push_back(c);
  return out;
#else
  return "";
#endif
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cuda_version"] = std::to_string(CUDART_VERSION);
  d["cuda_version_major_minor"] =
      std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
  d["arch_list"] = arch_list();
  d["backend"] = std::string("cuda");
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ttrl_fast CUDA kernels (raw backend contract: see ttrl_fast/kernels/__init__.py)";
  m.def("selective_log_softmax_fwd", &selective_log_softmax_fwd,
        "(logits, index, mask, inv_temperature, with_entropy) -> (logp, entropy, stats)",
        pybind11::arg("logits"), pybind11::arg("index"), pybind11::arg("mask"),
        pybind11::arg("inv_temperature"), pybind11::arg("with_entropy"));
  m.def("selective_log_softmax_bwd", &selective_log_softmax_bwd,
        "(grad_logp, grad_entropy, logits, index, mask, stats, entropy, inv_temperature) -> "
        "grad_logits",
        pybind11::arg("grad_logp"), pybind11::arg("grad_entropy"), pybind11::arg("logits"),
        pybind11::arg("index"), pybind11::arg("mask"), pybind11::arg("stats"),
        pybind11::arg("entropy"), pybind11::arg("inv_temperature"));
  m.def("policy_loss_fwd", &policy_loss_fwd,
        "(logp, old_logp, advantages, mask, ref_logp, rollout_is_ratio, entropy, iparams[7], "
        "fparams[11]) -> (grad_logp, seq_stats)",
        pybind11::arg("logp"), pybind11::arg("old_logp"), pybind11::arg("advantages"),
        pybind11::arg("mask"), pybind11::arg("ref_logp"), pybind11::arg("rollout_is_ratio"),
        pybind11::arg("entropy"), pybind11::arg("iparams"), pybind11::arg("fparams"));
  m.def("group_advantages_fwd", &group_advantages_fwd,
        "(rewards, perm, offsets, mode, std_correction, eps, batch_std) -> (advantages, "
        "group_stats)",
        pybind11::arg("rewards"), pybind11::arg("perm"), pybind11::arg("offsets"),
        pybind11::arg("mode"), pybind11::arg("std_correction"), pybind11::arg("eps"),
        pybind11::arg("batch_std"));
  m.def("sample_tokens_fwd", &sample_tokens_fwd,
        "(logits, row_keys, step, seen, ban_ids, iparams[2], fparams[4]) -> (tokens, logp_raw, "
        "logp_processed, log_kept)",
        pybind11::arg("logits"), pybind11::arg("row_keys"), pybind11::arg("step"),
        pybind11::arg("seen"), pybind11::arg("ban_ids"), pybind11::arg("iparams"),
        pybind11::arg("fparams"));
  m.def("build_info", &build_info, "Build configuration of the CUDA extension (dict)");
}
