// Entry point of the sample_tokens CPU kernel: runs the ISA variant (sampling_kernel.h compiled by
// sampling_{avx512,avx2,baseline}.cpp) that selective_log_softmax's dispatcher selected, so the
// run-time CPU check and the tests' force_isa() govern both ops alike.
#include <cstring>

#include "sampling.h"

namespace ttrl_fast {
namespace cpu {

namespace baseline {
void sample_rows(const SampleArgs& args, int64_t begin, int64_t end);
}
#if defined(__x86_64__)
namespace avx2 {
void sample_rows(const SampleArgs& args, int64_t begin, int64_t end);
}
namespace avx512 {
void sample_rows(const SampleArgs& args, int64_t begin, int64_t end);
}
#endif

void sample_tokens_rows(const SampleArgs& args, int64_t begin, int64_t end) {
#if defined(__x86_64__)
  const char* isa = selected_isa();
  if (std::strcmp(isa, "avx512") == 0) return avx512::sample_rows(args, begin, end);
  if (std::strcmp(isa, "avx2") == 0) return avx2::sample_rows(args, begin, end);
#endif
  baseline::sample_rows(args, begin, end);
}

}  // namespace cpu
}  // namespace ttrl_fast
