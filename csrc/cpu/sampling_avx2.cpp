// The avx2 variant of the sample_tokens CPU kernel (see sampling_kernel.h); x86-64 only.
// Standard headers come before the target pragma so only our kernel gets the wider ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#define TTRL_ISA_NS avx2
#include "sampling_kernel.h"
#endif
