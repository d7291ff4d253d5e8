// Raw-pointer CPU kernels of the policy loss and group advantages (O(tokens), one pass family per
// sequence / group; the math is the shared policy_loss_math.h). See ttrl_fast/kernels/__init__.py.
#pragma once

#include <cstdint>

#include "ttrl_fast/policy_loss_math.h"

namespace ttrl_fast {
namespace cpu {

struct PolicyLossArgs {
  const float* logp;      // [B, T]
  const float* old_logp;  // [B, T] or nullptr (on-policy)
  const float* adv;       // [B, Ta]
  const float* mask;      // [B, T]
  const float* ref_logp;  // [B, T] or nullptr
  const float* is_ratio;  // [B, Tr] or nullptr
  const float* entropy;   // [B, T] or nullptr
  int64_t B, T, Ta, Tr;
  math::PolicyLossParams params;
  float* grad_logp;  // [B, T]
  float* seq_stats;  // [B, kSeqStats]
};

constexpr int64_t kSeqStats = 18;

// Sequences [begin, end); safe to run concurrently on disjoint ranges.
void policy_loss_rows(const PolicyLossArgs& args, int64_t begin, int64_t end);

struct AdvantageArgs {
  const float* rewards;    // [N]
  const int64_t* perm;     // [N]
  const int64_t* offsets;  // [G + 1]
  int32_t mode, correction;
  float eps, batch_std;
  float* advantages;   // [N]
  float* group_stats;  // [G, 3]
};

void group_advantages_groups(const AdvantageArgs& args, int64_t begin, int64_t end);

}  // namespace cpu
}  // namespace ttrl_fast
