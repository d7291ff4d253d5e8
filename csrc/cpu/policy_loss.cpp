// CPU kernels of the policy loss and of group advantages: per sequence (group), the passes of the
// algorithm documented in ttrl_fast/kernels/__init__.py, with every formula from the shared
// policy_loss_math.h (the same functions the CUDA kernels call per thread).
#include "policy_loss.h"

#include <cmath>
#include <limits>

namespace ttrl_fast {
namespace cpu {

namespace {

struct SequenceTotals {
  float n = 0.0f;         // sum_t m
  float log_ratio = 0.0f; // sum_t m (logp - old)
  float vespo = 0.0f;     // VESPO's log w before its clamp
};

SequenceTotals sequence_totals(const PolicyLossArgs& a, int64_t i) {
  const math::PolicyLossParams& p = a.params;
  SequenceTotals s;
  for (int64_t t = 0; t < a.T; ++t) {
    const int64_t k = i * a.T + t;
    const float m = a.mask[k];
    // on-policy only the sequence-level ratio needs the log-ratio (token level: on_policy_ratio below)
    const float lr = !p.on_policy ? a.logp[k] - a.old_logp[k]
                                  : (p.sequence_level ? math::on_policy_log_ratio(a.logp[k]) : 0.0f);
    s.n += m;
    s.log_ratio += m * lr;
    s.vespo += m * fminf(fmaxf(lr, -20.0f), 20.0f);
  }
  if (p.loss_type == math::kVespo && a.is_ratio != nullptr) {
    for (int64_t t = 0; t < a.Tr; ++t) {  // TRL sums log rho over all positions, unmasked
      const float lr = logf(a.is_ratio[i * a.Tr + t]);
      s.vespo += fminf(fmaxf(lr, -18.420680743952367f), 20.0f);
    }
  }
  return s;
}

// Clip flags of TRL's metrics at ratio r and advantage A: {low, high, region, cispo}.
struct ClipFlags {
  float low, high, region, cispo;
};

ClipFlags clip_flags(const math::PolicyLossParams& p, float r, float adv) {
  const float c1 = math::clipped_ratio(p, r);
  ClipFlags f;
  f.low = (c1 < 1.0f - p.eps_low && adv < 0.0f) ? 1.0f : 0.0f;
  f.high = (c1 > 1.0f + p.eps_high && adv > 0.0f) ? 1.0f : 0.0f;
  f.region = (f.low > 0.0f || f.high > 0.0f) ? 1.0f : 0.0f;
  f.cispo = (r > p.eps_high && adv > 0.0f) ? 1.0f : 0.0f;
  return f;
}

}  // namespace

void policy_loss_rows(const PolicyLossArgs& a, int64_t begin, int64_t end) {
  const math::PolicyLossParams& p = a.params;
  const bool vespo = p.loss_type == math::kVespo;
  for (int64_t i = begin; i < end; ++i) {
    const SequenceTotals tot = sequence_totals(a, i);
    const float n_clamped = tot.n > 1.0f ? tot.n : 1.0f;
    const float s_i = p.sequence_level ? expf(tot.log_ratio / n_clamped) : 1.0f;

    float* st = a.seq_stats + i * kSeqStats;
    for (int64_t c = 0; c < kSeqStats; ++c) st[c] = 0.0f;
    st[1] = tot.n;
    st[15] = std::numeric_limits<float>::infinity();
    st[16] = -std::numeric_limits<float>::infinity();
    float seq_grad = 0.0f;  // G_i: d loss / d s_i (sequence level)

    for (int64_t t = 0; t < a.T; ++t) {
      const int64_t k = i * a.T + t;
      const float m = a.mask[k], logp = a.logp[k];
      const float r = p.sequence_level ? s_i
                                       : (p.on_policy ? math::on_policy_ratio(logp) : expf(logp - a.old_logp[k]));
      const float adv = a.adv[i * a.Ta + (a.Ta == 1 ? 0 : t)];
      const float phi = vespo ? math::vespo_phi(p, tot.vespo, adv) : 0.0f;
      const float rho = (a.is_ratio != nullptr && !vespo) ? a.is_ratio[i * a.Tr + (a.Tr == 1 ? 0 : t)] : 1.0f;
      const float ref = p.kl_estimator != math::kKlNone ? a.ref_logp[k] : 0.0f;
      const math::TokenLoss tl = math::token_loss(p, r, adv, logp, phi, rho, ref);
      const float l = tl.loss, dl_dr = tl.d_ratio, dl_dlogp = tl.d_logp, kl_metric = tl.kl_metric;
      const float w = math::aggregation_weight(p, m, tot.n);
      st[0] += w * l;
      if (p.sequence_level) {
        seq_grad += w * dl_dr;
        a.grad_logp[k] = w * dl_dlogp;
      } else {
        a.grad_logp[k] = w * (dl_dr * r + dl_dlogp);
      }
      // Metrics (masked sums).
      const ClipFlags f = clip_flags(p, r, adv);
      st[2] += m * kl_metric;
      if (a.entropy != nullptr) st[3] += m * a.entropy[k];
      st[4] += m * f.low;
      st[5] += m * f.high;
      st[6] += m * f.region;
      st[10] += m * f.cispo;
      st[12] += m * phi;
      st[14] += m * r;
      if (m > 0.0f) {
        st[15] = r < st[15] ? r : st[15];
        st[16] = r > st[16] ? r : st[16];
      }
    }
    if (p.sequence_level) {  // d s_i / d logp_t = s_i m_t / max(n_i, 1)
      const float scale = seq_grad * s_i / n_clamped;
      for (int64_t t = 0; t < a.T; ++t) a.grad_logp[i * a.T + t] += scale * a.mask[i * a.T + t];
    }
    // The [B, 1] conventions: flags and phi at (s_i, A_i0).
    const float adv0 = a.adv[i * a.Ta];
    const ClipFlags f0 = clip_flags(p, s_i, adv0);
    st[7] = f0.low;
    st[8] = f0.high;
    st[9] = f0.region;
    st[11] = f0.cispo;
    st[13] = vespo ? math::vespo_phi(p, tot.vespo, adv0) : 0.0f;
    st[17] = s_i;
  }
}

void group_advantages_groups(const AdvantageArgs& a, int64_t begin, int64_t end) {
  for (int64_t g = begin; g < end; ++g) {
    const int64_t lo = a.offsets[g], hi = a.offsets[g + 1];
    const math::SegmentStats s = math::segment_stats(a.rewards, a.perm, lo, hi, a.correction);
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t idx = a.perm[j];
      a.advantages[idx] = math::advantage_of(a.rewards[idx], s, a.mode, a.eps, a.batch_std);
    }
    a.group_stats[3 * g] = s.count;
    a.group_stats[3 * g + 1] = s.mean;
    a.group_stats[3 * g + 2] = s.std;
  }
}

}  // namespace cpu
}  // namespace ttrl_fast
