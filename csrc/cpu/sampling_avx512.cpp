// The avx512 variant of the sample_tokens CPU kernel (see sampling_kernel.h); x86-64 only.
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
#include <immintrin.h>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#define TTRL_ISA_NS avx512
#define TTRL_SAMPLING_AVX512 1
#include "sampling_kernel.h"
#endif
