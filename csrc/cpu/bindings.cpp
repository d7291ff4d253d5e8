// torch bindings of the CPU kernels: the `ttrl_fast._C_cpu` extension.
// Validation here is a last line of defence (the Python layer already checked shapes and ranges
// with friendly messages); the kernels themselves only see raw pointers.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <tuple>

#include "large_buffers.h"
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

at::Tensor selective_log_softmax_bwd(const std::optional<at::Tensor>& grad_logp,
                                     const std::optional<at::Tensor>& grad_entropy, const at::Tensor& logits,
                                     const at::Tensor& index, const std::optional<at::Tensor>& mask,
                                     const at::Tensor& stats, const at::Tensor& entropy, double inv_temperature) {
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
  at::Tensor grad = empty_large(logits.sizes(), logits.options());
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
  m.def("debug_lse_paths", &debug_lse_paths, py::arg("row"), py::arg("inv_temperature"));
  m.def("force_isa", [](const std::string& name) { return force_isa(name.c_str()); }, py::arg("name"),
        "Tests only: run the given ISA variant ('' = automatic). False if the CPU lacks it.");
  m.def("release_cached_memory", &release_cached, "Frees the cached gradient block; returns its bytes.");
  m.def("cached_memory", &cached_bytes, "Bytes held by the gradient block cache.");
  m.def("build_info", []() {
    py::dict info;
    info["isa"] = std::string(selected_isa());
    info["threads"] = at::get_num_threads();
    return info;
  });
}
