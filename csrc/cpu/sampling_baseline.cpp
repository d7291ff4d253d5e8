// The baseline variant of the sample_tokens CPU kernel (the compiler's default target; any architecture).
#define TTRL_ISA_NS baseline
#include "sampling_kernel.h"
