"""GRPO-family policy losses: the spec (plain autograd, any float dtype). Parity target: TRL 1.16
`GRPOTrainer._compute_loss` with one process, no gradient accumulation and one step per generation
(the trainer-level scalings are the caller's: pass num_items_in_batch for dapo/cispo/vespo).

Shapes: B sequences, T completion positions.
    logp, old_logp, ref_logp, mask, entropy, rollout_is_ratio: [B, T] (ratio may be [B, 1])
    advantages: [B] or [B, T]

Per token (r = importance ratio, A = advantage, m = mask):
    token level     r_t = exp(logp_t - old_t)                 old = None: old = sg(logp) (r = 1, dr = dlogp)
    sequence level  s_i = exp(sum_t m (logp - old) / max(sum_t m, 1))   (GSPO; every t of i uses s_i)
    grpo/bnpo/dr_grpo/dapo/luspo  l = -min(c1 A, clip(r, 1 - eps_lo, 1 + eps_hi) A), c1 = min(r, delta) if delta
    cispo           l = -sg(min(r, eps_hi)) A logp
    sapo            l = -A sigmoid(tau (r - 1)) 4 / tau,  tau = tau_pos if A > 0 else tau_neg
    vespo           l = -sg(phi_i) A logp,  phi = exp(lam + k log w - lam w),
                    log w = clamp(sum_t m clamp(logp - old, +-20) [+ sum_t clamp(log rho)], log 1e-8, 20)
    then l *= rollout_is_ratio (not vespo), then l += beta * KL_t (KL_t *= r if use_bias_correction_kl)
Aggregation (S = sum_{i,t} m l):
    grpo, sapo: mean_i(sum_t m l / max(sum_t m, 1));  bnpo: S / max(sum m, 1);  dr_grpo: S / (B * max_len)
    dapo, cispo, vespo: S / max(num_items_in_batch, 1) (default: sum m);  luspo: mean_i sum_t m l
    entropy bonus: loss -= entropy_coef * sum m H / max(sum m, 1)
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
PPO_CLIP_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
KL_ESTIMATORS = ("k1", "k2", "k3")
_LOG_1E8 = math.log(1e-8)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(pi || ref) estimates with x = logp - ref: k1 = x, k2 = x^2 / 2, k3 = e^-x + x - 1."""
    x = logp - ref_logp
    if estimator == "k1":
        return x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        return torch.exp(-x) + x - 1
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def vespo_phi(log_ratio: Tensor, mask: Tensor, advantages: Tensor, rollout_is_ratio: Tensor | None, *,
              k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float) -> Tensor:
    """VESPO's gamma weight per sequence [B, 1] (no gradient: it only scales A logp)."""
    with torch.no_grad():
        seq = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)  # [B, 1]
        if rollout_is_ratio is not None:
            seq = seq + rollout_is_ratio.log().clamp(_LOG_1E8, 20.0).sum(-1, keepdim=True)
        log_w = seq.clamp(_LOG_1E8, 20.0)
        nonneg = advantages >= 0
        k = torch.where(nonneg, k_pos, k_neg)
        lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def aggregation_weights(mask: Tensor, loss_type: str, max_completion_length: int | None = None,
                        num_items_in_batch: float | Tensor | None = None) -> Tensor:
    """w [B, T] with loss = sum_{i,t} w l: TRL 1.16's aggregation of each loss type as token weights."""
    batch, length = mask.shape
    if loss_type in ("grpo", "sapo"):
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / batch
    if loss_type == "bnpo":
        return mask / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return mask / (batch * (length if max_completion_length is None else max_completion_length))
    if loss_type in ("dapo", "cispo", "vespo"):
        n_items = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=mask.dtype)
        return mask / n_items.clamp(min=1.0)
    if loss_type == "luspo":
        return mask / batch
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def _masked_mean_parts(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum, count) of x over masked tokens, or over sequences when x is [B, 1] (TRL's convention)."""
    if x.shape[-1] == 1:
        return x.sum(), torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)
    return (x * mask).sum(), mask.sum()


def _seq_means(x: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence masked means [B] (NaN for empty sequences, skipped by nanmin/nanmax)."""
    if x.shape[-1] == 1:
        return x.squeeze(-1)
    return (x * mask).sum(-1) / mask.sum(-1)


def nan_reduce(x: Tensor, op: str) -> Tensor:
    """min or max of the non-NaN entries (NaN if there are none), like TRL's nanmin / nanmax."""
    kept = x[~torch.isnan(x)]
    if kept.numel() == 0:
        return torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
    return kept.min() if op == "min" else kept.max()


def policy_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    use_bias_correction_kl: bool = False,
    rollout_is_ratio: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor] | Tensor]]:
    """The spec. Returns (loss, parts): parts maps mean metrics to (sum, count) and min/max metrics
    ("clip_ratio/low_min", "clip_ratio/high_max", "ratio/min", "ratio/max") to their value;
    "per_token_loss" (differentiable), "per_token_kl" and "ratio" are the per-token tensors before
    aggregation."""
    eps_hi = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    old = logp.detach() if old_logp is None else old_logp.to(logp.dtype)

    log_ratio = logp - old  # [B, T]
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    ratio = torch.exp(log_w)  # [B, T] or [B, 1]

    kl = None
    if beta != 0.0:
        kl = kl_penalty(logp, ref_logp.to(logp.dtype), kl_estimator)
        if use_bias_correction_kl:
            kl = kl * ratio  # the differentiable ratio, before any delta clamp

    parts: dict[str, tuple[Tensor, Tensor] | Tensor] = {}
    clipped_ratio = ratio
    if loss_type in PPO_CLIP_TYPES:
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_hi)
        if delta is not None:
            clipped_ratio = torch.clamp(ratio, max=delta)
        per_token = -torch.min(clipped_ratio * adv, clipped * adv)
    elif loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=eps_hi).detach() * adv * logp
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg)
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    elif loss_type == "vespo":
        phi = vespo_phi(log_ratio, mask, adv, rollout_is_ratio, k_pos=vespo_k_pos, lambda_pos=vespo_lambda_pos,
                        k_neg=vespo_k_neg, lambda_neg=vespo_lambda_neg)  # [B, 1]
        per_token = -phi * adv * logp
        parts["vespo/phi_seq_mean"] = _masked_mean_parts(phi, mask)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")

    if rollout_is_ratio is not None and loss_type != "vespo":
        per_token = per_token * rollout_is_ratio.to(logp.dtype)
    if kl is not None:
        per_token = per_token + beta * kl

    parts["per_token_loss"] = per_token  # differentiable; [B, T] or [B, 1]
    parts["per_token_kl"] = kl
    parts["ratio"] = ratio.detach()
    weights = aggregation_weights(mask, loss_type, max_completion_length, num_items_in_batch)  # [B, T]
    loss = (per_token * weights).sum()
    parts["policy_loss"] = (loss.detach(), torch.ones((), dtype=logp.dtype, device=logp.device))

    if entropy is not None and entropy_coef != 0.0:
        loss = loss - entropy_coef * (entropy.to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1.0)

    with torch.no_grad():
        if kl is not None:
            parts["kl"] = _masked_mean_parts(kl.detach(), mask)
        if entropy is not None:
            parts["entropy"] = _masked_mean_parts(entropy.detach().to(logp.dtype), mask)
        r = clipped_ratio.detach()
        if loss_type in PPO_CLIP_TYPES:
            low = ((r < 1 - epsilon_low) & (adv < 0)).to(logp.dtype)
            high = ((r > 1 + eps_hi) & (adv > 0)).to(logp.dtype)
            region = torch.maximum(low, high)
            parts["clip_ratio/low_mean"] = _masked_mean_parts(low, mask)
            parts["clip_ratio/high_mean"] = _masked_mean_parts(high, mask)
            parts["clip_ratio/region_mean"] = _masked_mean_parts(region, mask)
            parts["clip_ratio/low_min"] = nan_reduce(_seq_means(low, mask), "min")
            parts["clip_ratio/high_max"] = nan_reduce(_seq_means(high, mask), "max")
        elif loss_type == "cispo":
            parts["cispo_clip_ratio"] = _masked_mean_parts(((ratio.detach() > eps_hi) & (adv > 0)).to(logp.dtype),
                                                           mask)
        raw = ratio.detach()
        keep = torch.ones_like(raw, dtype=torch.bool) if raw.shape[-1] == 1 else mask > 0
        parts["ratio/mean"] = _masked_mean_parts(raw, mask)
        parts["ratio/min"] = raw[keep].min() if keep.any() else torch.tensor(float("nan"))
        parts["ratio/max"] = raw[keep].max() if keep.any() else torch.tensor(float("nan"))
    return loss, parts



@contextlib.contextmanager
def _autograd_inside_op():
    """Re-enables autograd inside a torch.library op body, which runs below the autograd dispatch
    keys with grad mode off, so the reference backend can differentiate the spec itself."""
    keys = torch._C.DispatchKey
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False), \
            torch._C._SetExcludeDispatchKeyGuard(keys.ADInplaceOrView, False):
        yield


# Kernel loss codes (csrc/include/ttrl_fast/policy_loss_math.h) -> a spec loss_type with that
# per-token math; the aggregation code is applied separately (kernel_weights).
_SPEC_TYPE = {0: "dapo", 1: "cispo", 2: "sapo", 3: "vespo"}


def kernel_weights(mask: Tensor, aggregation: int, norm: float) -> Tensor:
    """The kernels' aggregation weights w [B, T] (aggregation_weight in policy_loss_math.h)."""
    if aggregation == 0:  # seq-mean-token-mean, norm = B
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / norm
    return mask / norm  # token sum / norm; seq-mean-token-sum with norm = B


def policy_loss_fwd(logp: Tensor, old_logp: Tensor | None, advantages: Tensor, mask: Tensor,
                    ref_logp: Tensor | None, rollout_is_ratio: Tensor | None, entropy: Tensor | None,
                    iparams: list[int], fparams: list[float]) -> tuple[Tensor, Tensor]:
    """Reference backend of the raw contract (ttrl_fast/kernels/__init__.py): the spec in float64,
    its gradient by autograd, the per-sequence statistics vectorised."""
    loss_type, aggregation, kl_est, seq_level, bias_kl, has_delta, on_policy = iparams
    eps_low, eps_high, delta, beta, tau_pos, tau_neg, vk_pos, vl_pos, vk_neg, vl_neg, norm = fparams
    b, t = logp.shape
    f64 = torch.float64
    with _autograd_inside_op():
        x = logp.detach().to(f64).requires_grad_(True)
        old = None if on_policy else old_logp.to(f64)
        adv, mask_d = advantages.to(f64), mask.to(f64)
        is_ratio = None if rollout_is_ratio is None else rollout_is_ratio.to(f64)
        _, parts = policy_loss(
            x, old, adv, mask_d, ref_logp=None if ref_logp is None else ref_logp.to(f64),
            loss_type=_SPEC_TYPE[loss_type], importance_sampling_level="sequence" if seq_level else "token",
            epsilon_low=eps_low, epsilon_high=eps_high, delta=delta if has_delta else None,
            beta=beta if kl_est else 0.0, kl_estimator=KL_ESTIMATORS[max(kl_est, 1) - 1],
            use_bias_correction_kl=bool(bias_kl), rollout_is_ratio=is_ratio,
            sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg,
            vespo_k_pos=vk_pos, vespo_lambda_pos=vl_pos, vespo_k_neg=vk_neg, vespo_lambda_neg=vl_neg)
        weighted = parts["per_token_loss"] * kernel_weights(mask_d, aggregation, norm)  # [B, T]
        loss = weighted.sum()
        (grad,) = torch.autograd.grad(loss, x)

    with torch.no_grad():
        lp = x.detach()
        lr = lp - lp if on_policy else lp - old  # on-policy: 0, NaN where logp is not finite (as the loss)
        n = mask_d.sum(-1)  # [B]
        s = torch.exp((lr * mask_d).sum(-1) / n.clamp(min=1.0)) if seq_level else torch.ones(b, dtype=f64)
        r = s.unsqueeze(-1).expand(b, t) if seq_level else lr.exp()  # [B, T]
        a = adv.expand(b, t)  # [B, T] from [B, 1] or [B, T]

        def flags(ratio, advantage):
            c1 = torch.clamp(ratio, max=delta) if has_delta else ratio
            low = ((c1 < 1 - eps_low) & (advantage < 0)).to(f64)
            high = ((c1 > 1 + eps_high) & (advantage > 0)).to(f64)
            return low, high, torch.maximum(low, high), ((ratio > eps_high) & (advantage > 0)).to(f64)

        low, high, region, cispo = flags(r, a)
        low0, high0, region0, cispo0 = flags(s, adv[:, 0])
        kl = torch.zeros_like(lp)
        if kl_est:
            kl = kl_penalty(lp, ref_logp.to(f64), KL_ESTIMATORS[kl_est - 1]) * (r if bias_kl else 1.0)
        phi, phi0 = torch.zeros_like(lp), torch.zeros(b, dtype=f64)
        if loss_type == 3:
            gamma = dict(k_pos=vk_pos, lambda_pos=vl_pos, k_neg=vk_neg, lambda_neg=vl_neg)
            phi = vespo_phi(lr, mask_d, a, is_ratio, **gamma).expand(b, t)
            phi0 = vespo_phi(lr, mask_d, adv[:, :1], is_ratio, **gamma).squeeze(-1)
        ent = torch.zeros_like(lp) if entropy is None else entropy.to(f64)
        kept = mask_d > 0
        inf = torch.tensor(float("inf"), dtype=f64)
        stats = torch.stack([
            weighted.detach().sum(-1), n, (mask_d * kl).sum(-1), (mask_d * ent).sum(-1),
            (mask_d * low).sum(-1), (mask_d * high).sum(-1), (mask_d * region).sum(-1), low0, high0, region0,
            (mask_d * cispo).sum(-1), cispo0, (mask_d * phi).sum(-1), phi0, (mask_d * r).sum(-1),
            torch.where(kept, r, inf).amin(-1), torch.where(kept, r, -inf).amax(-1), s,
        ], dim=1)
    return grad.to(torch.float32), stats.to(torch.float32)
