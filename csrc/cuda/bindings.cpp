// Python bindings of the CUDA backend (extension module ttrl_fast._C_cuda).
//
// Compiled by the host compiler: validates tensors, allocates outputs, and calls the raw-pointer
// launchers of selective_log_softmax.cu on the current CUDA stream. The raw contract is documented
// in ttrl_fast/kernels/__init__.py.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>

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
  m.def("build_info", &build_info, "Build configuration of the CUDA extension (dict)");
}
