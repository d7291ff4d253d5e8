// Shared arithmetic of the GRPO-family policy loss and of group advantage normalisation.
//
// `__host__ __device__` like logprob_math.h: the C++ CPU backend and the CUDA kernels run these
// very functions, so the CPU tests check the GPU's per-token math. The spec they implement is
// ttrl_fast/reference/policy_loss.py and ttrl_fast/reference/advantages.py (TRL 1.16 semantics).
//
// Vocabulary: B sequences of T positions; r = importance ratio (token level: exp(logp - old);
// sequence level: s_i = exp(sum_t m (logp - old) / max(n_i, 1)), n_i = sum_t m); A = advantage.
#pragma once

#include <cmath>
#include <cstdint>

#include "ttrl_fast/logprob_math.h"  // TTRL_HD

namespace ttrl_fast {
namespace math {

// ---------------------------------------------------------------------------------------------
// Policy loss
// ---------------------------------------------------------------------------------------------

enum PolicyLossType : int32_t {
  kPpoClip = 0,  // grpo, bnpo, dr_grpo, dapo, luspo: -min(c1 A, clip(r) A)
  kCispo = 1,    // -sg(min(r, eps_hi)) A logp
  kSapo = 2,     // -A sigmoid(tau (r - 1)) 4 / tau
  kVespo = 3,    // -sg(phi_i) A logp
};

enum PolicyLossAggregation : int32_t {
  kSeqMeanTokenMean = 0,  // grpo, sapo: mean_i(sum_t m l / max(n_i, 1))
  kTokenSumNorm = 1,      // bnpo, dr_grpo, dapo, cispo, vespo: sum m l / norm
  kSeqMeanTokenSum = 2,   // luspo: mean_i sum_t m l
};

enum KlEstimator : int32_t { kKlNone = 0, kK1 = 1, kK2 = 2, kK3 = 3 };

// Hyperparameters as runtime values (no recompilation per value on any backend).
struct PolicyLossParams {
  int32_t loss_type;      // PolicyLossType
  int32_t aggregation;    // PolicyLossAggregation
  int32_t kl_estimator;   // KlEstimator; kKlNone when beta == 0
  int32_t sequence_level; // 1: GSPO sequence-level ratio
  int32_t bias_correction_kl;
  int32_t has_delta;
  int32_t on_policy;      // old_logp is None: old = sg(logp), r = 1 with dr/dlogp = r
  float eps_low, eps_high, delta, beta;
  float sapo_tau_pos, sapo_tau_neg;
  float vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg;
  float norm;       // kTokenSumNorm: the divisor; the sequence modes: B
};

// The per-token policy term before the rollout-IS factor and the KL term:
// loss l(r, A, logp), dl/dr (through the ratio) and dl/dlogp (direct, at fixed r).
struct PolicyTerm {
  float loss;
  float d_ratio;
  float d_logp;
};

// On-policy (old_logp is None) ratio exp(logp - sg(logp)) and log-ratio: 1 and 0, or NaN where logp is
// not finite, as the spec's exp(logp - logp.detach()) has it. A NaN (or +-inf) log-prob thus poisons
// the loss and its gradient on every backend instead of being silently dropped (ratio 1). Selects,
// not logp - logp, so that no compiler flag can fold them to constants.
TTRL_HD float on_policy_ratio(float logp) { return fabsf(logp) < INFINITY ? 1.0f : NAN; }
TTRL_HD float on_policy_log_ratio(float logp) { return fabsf(logp) < INFINITY ? 0.0f : NAN; }

TTRL_HD float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// phi_i for VESPO from log w = clamp(sum_t m clamp(logp - old, -20, 20) [+ sum_t clamp(log rho)], log 1e-8, 20).
TTRL_HD float vespo_phi(const PolicyLossParams& p, float log_w_sum, float adv) {
  const float log_w = fminf(fmaxf(log_w_sum, -18.420680743952367f), 20.0f);
  const bool nonneg = adv >= 0.0f;
  const float k = nonneg ? p.vespo_k_pos : p.vespo_k_neg;
  float lam = nonneg ? p.vespo_lambda_pos : p.vespo_lambda_neg;
  lam = lam < 1e-4f ? 1e-4f : lam;
  const float phi = expf(lam + k * log_w - lam * expf(log_w));
  return (phi != phi || phi == INFINITY) ? 0.0f : phi;  // nan/inf -> 0
}

// The per-token clip flags of TRL's metrics (with c1 = the delta-clamped ratio).
TTRL_HD float clipped_ratio(const PolicyLossParams& p, float r) {
  return (p.has_delta && r > p.delta) ? p.delta : r;
}

TTRL_HD PolicyTerm policy_term(const PolicyLossParams& p, float r, float adv, float logp, float phi) {
  PolicyTerm out{0.0f, 0.0f, 0.0f};
  if (p.loss_type == kPpoClip) {
    const float lo = 1.0f - p.eps_low, hi = 1.0f + p.eps_high;
    const float c1 = clipped_ratio(p, r);
    // torch.clamp's backward is 0 *at* its bounds too (strict inequalities): matched exactly.
    const float dc1 = (p.has_delta && r >= p.delta) ? 0.0f : 1.0f;       // d c1 / d r
    const float c2 = r < lo ? lo : (r > hi ? hi : r);
    const float dc2 = (r > lo && r < hi) ? 1.0f : 0.0f;                  // d c2 / d r
    const float a = c1 * adv, b = c2 * adv;
    out.loss = -(a < b ? a : b);
    // min's gradient: the smaller branch; a tie splits it evenly (torch.min semantics).
    out.d_ratio = a < b ? -adv * dc1 : (a > b ? -adv * dc2 : -0.5f * adv * (dc1 + dc2));
  } else if (p.loss_type == kCispo) {
    const float w = r > p.eps_high ? p.eps_high : r;  // detached; a NaN ratio stays NaN (torch.clamp)
    out.loss = -w * adv * logp;
    out.d_logp = -w * adv;
  } else if (p.loss_type == kSapo) {
    const float tau = adv > 0.0f ? p.sapo_tau_pos : p.sapo_tau_neg;
    const float s = sigmoid_f(tau * (r - 1.0f));
    out.loss = -s * 4.0f / tau * adv;
    out.d_ratio = -4.0f * s * (1.0f - s) * adv;
  } else {  // kVespo
    out.loss = -phi * adv * logp;
    out.d_logp = -phi * adv;
  }
  return out;
}

// KL estimate and its derivative w.r.t. logp, x = logp - ref.
TTRL_HD void kl_term(int32_t estimator, float logp, float ref, float* kl, float* d_kl) {
  const float x = logp - ref;
  if (estimator == kK1) {
    *kl = x;
    *d_kl = 1.0f;
  } else if (estimator == kK2) {
    *kl = 0.5f * x * x;
    *d_kl = x;
  } else {  // k3: e^-x + x - 1
    const float e = expf(-x);
    *kl = e + x - 1.0f;
    *d_kl = 1.0f - e;
  }
}

// The whole per-token loss: the policy term times the rollout-IS factor rho, plus beta * KL (times
// the differentiable ratio with bias correction). kl_metric is the KL as TRL logs it.
struct TokenLoss {
  float loss, d_ratio, d_logp, kl_metric;
};

TTRL_HD TokenLoss token_loss(const PolicyLossParams& p, float r, float adv, float logp, float phi, float rho,
                             float ref) {
  const PolicyTerm term = policy_term(p, r, adv, logp, phi);
  TokenLoss out{term.loss * rho, term.d_ratio * rho, term.d_logp * rho, 0.0f};
  if (p.kl_estimator != kKlNone) {
    float kl, dkl;
    kl_term(p.kl_estimator, logp, ref, &kl, &dkl);
    if (p.bias_correction_kl) {
      out.loss += p.beta * kl * r;
      out.d_ratio += p.beta * kl;
      out.d_logp += p.beta * dkl * r;
      out.kl_metric = kl * r;
    } else {
      out.loss += p.beta * kl;
      out.d_logp += p.beta * dkl;
      out.kl_metric = kl;
    }
  }
  return out;
}

// Per-token aggregation weight d loss / d l_t (mask included).
TTRL_HD float aggregation_weight(const PolicyLossParams& p, float m, float n_seq) {
  if (p.aggregation == kSeqMeanTokenMean) return m / (n_seq > 1.0f ? n_seq : 1.0f) / p.norm;
  if (p.aggregation == kTokenSumNorm) return m / p.norm;
  return m / p.norm;  // kSeqMeanTokenSum: norm = B
}

// ---------------------------------------------------------------------------------------------
// Group advantages
// ---------------------------------------------------------------------------------------------

enum AdvantageMode : int32_t { kAdvGroup = 0, kAdvBatch = 1, kAdvNone = 2, kAdvRloo = 3 };

struct SegmentStats {
  float count;  // non-NaN members
  float mean;   // NaN when count == 0
  float std;    // NaN when count <= correction
};

// Two passes over the members rewards[perm[begin..end)], NaN rewards excluded; fp32 accumulation.
TTRL_HD SegmentStats segment_stats(const float* rewards, const int64_t* perm, int64_t begin, int64_t end,
                                   int32_t correction) {
  float count = 0.0f, sum = 0.0f;
  for (int64_t j = begin; j < end; ++j) {
    const float r = rewards[perm[j]];
    if (r == r) {
      count += 1.0f;
      sum += r;
    }
  }
  SegmentStats s;
  s.count = count;
  s.mean = count > 0.0f ? sum / count : NAN;
  float m2 = 0.0f;
  for (int64_t j = begin; j < end; ++j) {
    const float r = rewards[perm[j]];
    if (r == r) m2 += (r - s.mean) * (r - s.mean);
  }
  s.std = count > static_cast<float>(correction) ? sqrtf(m2 / (count - static_cast<float>(correction))) : NAN;
  return s;
}

// The advantage of one member; NaN results (NaN reward, undefined std) become 0.
TTRL_HD float advantage_of(float r, const SegmentStats& g, int32_t mode, float eps, float batch_std) {
  float a;
  if (mode == kAdvGroup) {
    a = (r - g.mean) / (g.std + eps);
  } else if (mode == kAdvBatch) {
    a = (r - g.mean) / (batch_std + eps);
  } else if (mode == kAdvNone) {
    a = r - g.mean;
  } else {  // leave-one-out: r - mean of the others = n / (n - 1) (r - mean)
    a = g.count > 1.0f ? g.count / (g.count - 1.0f) * (r - g.mean) : 0.0f;
  }
  return a == a ? a : 0.0f;
}

}  // namespace math
}  // namespace ttrl_fast
