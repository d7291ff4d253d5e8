// The avx2 variant of the CPU kernels (see selective_log_softmax_kernel.h); x86-64 only.
// Standard headers come before the target pragma so only our kernels get the wider ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#define TTRL_ISA_NS avx2
#include "selective_log_softmax_kernel.h"
#endif
