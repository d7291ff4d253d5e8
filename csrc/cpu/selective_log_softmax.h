// Raw-pointer interface of the CPU selective log-softmax kernels (no torch types: the binding
// in bindings.cpp validates tensors, allocates outputs and parallelises over rows).
#pragma once

#include <cstdint>

namespace ttrl_fast {
namespace cpu {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// logits are viewed as [A, B, V]: row r = a * B + b starts at a * stride0 + b * stride1 (elements).
struct RowLayout {
  const void* data;
  DType dtype;
  int64_t B, V, stride0, stride1;
  int64_t offset(int64_t row) const { return (row / B) * stride0 + (row % B) * stride1; }
};

struct ForwardArgs {
  RowLayout logits;
  const int64_t* index;  // [N]
  const bool* mask;      // [N] or nullptr
  float inv_t;
  bool with_entropy;
  float* logp;     // [N]
  float* entropy;  // [N] or nullptr when !with_entropy
  float* stats;    // [N, 2]: raw row max, log-sum
};

struct BackwardArgs {
  RowLayout logits;
  const int64_t* index;
  const bool* mask;
  float inv_t;
  const float* grad_logp;     // [N] or nullptr (zeros)
  const float* grad_entropy;  // [N] or nullptr (zeros): the entropy term is skipped
  const float* stats;         // [N, 2]
  const float* entropy;       // [N], read only when grad_entropy != nullptr
  void* grad_logits;          // [N, V] contiguous, logits dtype
};

// Rows [begin, end); safe to call concurrently on disjoint ranges. Picks the widest ISA the
// running CPU supports (AVX-512, AVX2+FMA, or baseline x86-64 / any other arch).
void selective_log_softmax_forward_rows(const ForwardArgs& args, int64_t begin, int64_t end);
void selective_log_softmax_backward_rows(const BackwardArgs& args, int64_t begin, int64_t end);

// Name of the ISA variant in use ("avx512", "avx2" or "baseline").
const char* selected_isa();

// Tests: force one variant ("baseline", "avx2", "avx512"; "" restores the automatic choice).
// Returns false if this CPU cannot run it. Not for concurrent use with running kernels.
bool force_isa(const char* name);

}  // namespace cpu
}  // namespace ttrl_fast
