// Run-time choice of the widest ISA variant the CPU supports (decided once, then cached).
#include <atomic>
#include <cstring>

#include "selective_log_softmax.h"

namespace ttrl_fast {
namespace cpu {

#define TTRL_DECLARE_VARIANT(ns)                                                   \
  namespace ns {                                                                   \
  void forward_rows(const ForwardArgs& args, int64_t begin, int64_t end);          \
  void backward_rows(const BackwardArgs& args, int64_t begin, int64_t end);        \
  }
TTRL_DECLARE_VARIANT(baseline)
#if defined(__x86_64__)
TTRL_DECLARE_VARIANT(avx2)
TTRL_DECLARE_VARIANT(avx512)
#endif
#undef TTRL_DECLARE_VARIANT

namespace {

struct Variant {
  const char* name;
  void (*forward)(const ForwardArgs&, int64_t, int64_t);
  void (*backward)(const BackwardArgs&, int64_t, int64_t);
};

Variant pick_variant() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return {"avx512", avx512::forward_rows, avx512::backward_rows};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return {"avx2", avx2::forward_rows, avx2::backward_rows};
#endif
  return {"baseline", baseline::forward_rows, baseline::backward_rows};
}

Variant available_variant(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return {"baseline", baseline::forward_rows, baseline::backward_rows};
#if defined(__x86_64__)
  const Variant best = pick_variant();
  if (std::strcmp(name, "avx2") == 0 && std::strcmp(best.name, "baseline") != 0)
    return {"avx2", avx2::forward_rows, avx2::backward_rows};
  if (std::strcmp(name, "avx512") == 0 && std::strcmp(best.name, "avx512") == 0) return best;
#endif
  return {nullptr, nullptr, nullptr};
}

std::atomic<const Variant*> g_forced{nullptr};

const Variant& variant() {
  static const Variant best = pick_variant();
  const Variant* forced = g_forced.load(std::memory_order_acquire);
  return forced != nullptr ? *forced : best;
}

}  // namespace

bool force_isa(const char* name) {
  static Variant slots[3];  // one slot per name, so a pointer handed out stays valid
  if (name == nullptr || name[0] == '\0') {
    g_forced.store(nullptr, std::memory_order_release);
    return true;
  }
  const Variant v = available_variant(name);
  if (v.name == nullptr) return false;
  Variant* slot = &slots[std::strcmp(name, "baseline") == 0 ? 0 : std::strcmp(name, "avx2") == 0 ? 1 : 2];
  *slot = v;
  g_forced.store(slot, std::memory_order_release);
  return true;
}

void selective_log_softmax_forward_rows(const ForwardArgs& args, int64_t begin, int64_t end) {
  variant().forward(args, begin, end);
}

void selective_log_softmax_backward_rows(const BackwardArgs& args, int64_t begin, int64_t end) {
  variant().backward(args, begin, end);
}

const char* selected_isa() { return variant().name; }

}  // namespace cpu
}  // namespace ttrl_fast
