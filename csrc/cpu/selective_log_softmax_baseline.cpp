// The baseline variant of the CPU kernels (the compiler's default target; any architecture).
#include <type_traits>

#define TTRL_ISA_NS baseline
#include "selective_log_softmax_kernel.h"
