"""verl-compatible loss, KL, aggregation and advantage functions: the names, signatures, defaults and
semantics of verl 0.9's `verl.trainer.ppo.core_algos`, so verl actor code can import them from here.

    from ttrl_fast.compat.verl import get_policy_loss_fn, agg_loss, kl_penalty, get_adv_estimator_fn
    loss, metrics = get_policy_loss_fn("vanilla")(old_log_prob, log_prob, advantages, response_mask,
                                                  loss_agg_mode="token-mean", config=actor_config)

What runs on ttrl_fast's kernels: "vanilla" with token-mean aggregation (verl's default) is the fused
`ttrl_fast.policy_loss` op (dapo aggregation; verl's dual-clip bound c is exactly the op's two-sided cap
`delta` = c, for both advantage signs, since c > 1 + clip_ratio_high); GRPO advantages are the
`ttrl_fast.group_advantages` op; `linear_cross_entropy` is `ttrl_fast.fused_linear_logprobs`. The other
losses and aggregation modes are O(tokens) elementwise formulas evaluated here with torch.

`config` is verl's ActorConfig (or any object / mapping with its fields); `ActorLossConfig` below holds
exactly the fields these functions read, for users without verl. Deliberate difference: none in values;
verl clamps log-ratios to [-20, 20] before exp in some losses and the fused path does not, which only
changes tokens whose ratio is already clipped (same loss, same zero gradient).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ttrl_fast.advantages import group_advantages
from ttrl_fast.fused_linear import fused_linear_logprobs
from ttrl_fast.losses import policy_loss as fused_policy_loss

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass
class ActorLossConfig:
    """The ActorConfig fields verl's policy losses read (verl's defaults)."""

    clip_ratio: float = 0.2
    clip_ratio_low: float | None = 0.2
    clip_ratio_high: float | None = 0.2
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    tau_pos: float = 1.0  # SAPO gate temperatures
    tau_neg: float = 1.05
    global_batch_info: dict = field(default_factory=dict)  # dp_size, batch_num_tokens, global_batch_size, ...


def _field(config, name: str, default=None):
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _clip_range(config) -> tuple[float, float]:
    base = _field(config, "clip_ratio", 0.2)
    low, high = _field(config, "clip_ratio_low"), _field(config, "clip_ratio_high")
    return (base if low is None else low), (base if high is None else high)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _check(name: str, x: Tensor, shape) -> None:
    if not isinstance(x, Tensor) or tuple(x.shape) != tuple(shape):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape {tuple(shape)} (batch, response_length), got {got}")


def _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights=None):
    if not isinstance(log_prob, Tensor) or log_prob.dim() != 2:
        raise ValueError(f"log_prob must be a [batch, response_length] tensor, got "
                         f"{tuple(log_prob.shape) if isinstance(log_prob, Tensor) else type(log_prob).__name__}")
    shape = log_prob.shape
    for name, x in (("old_log_prob", old_log_prob), ("advantages", advantages), ("response_mask", response_mask)):
        _check(name, x, shape)
    if rollout_is_weights is not None:
        _check("rollout_is_weights", rollout_is_weights, shape)
    return response_mask.to(log_prob.dtype)


# --------------------------------------------------------------------------- aggregation and KL
def agg_loss(loss_mat: Tensor, loss_mask: Tensor, loss_agg_mode: str, dp_size: int = 1,
             batch_num_tokens: int | None = None, global_batch_size: int | None = None,
             loss_scale_factor: int | None = None) -> Tensor:
    """verl's loss aggregation of a [B, L] loss matrix (global normalisers make it invariant to the
    data-parallel split: each rank's loss times dp_size, averaged by the all-reduce).

    token-mean: sum(m l) / batch_num_tokens * dp_size; seq-mean-token-sum: per-sequence sums averaged
    over non-empty sequences (global_batch_size); seq-mean-token-mean: per-sequence means, likewise;
    seq-mean-token-sum-norm: sum(m l) / loss_scale_factor (default L).
    """
    _check("loss_mask", loss_mask, loss_mat.shape)
    mask = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":
        tokens = mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * mask).sum() / tokens * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        lengths = mask.sum(-1)
        per_seq = (loss_mat * mask).sum(-1)
        if loss_agg_mode == "seq-mean-token-mean":
            per_seq = per_seq / (lengths + 1e-8)
        nonempty = (lengths > 0).to(loss_mat.dtype)
        sequences = nonempty.sum() if global_batch_size is None else global_batch_size
        return (per_seq * nonempty).sum() / sequences * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        scale = loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return (loss_mat * mask).sum() / scale
    raise ValueError(f"loss_agg_mode must be one of {AGG_MODES}, got {loss_agg_mode!r}")


def _kl_value(logprob: Tensor, ref_logprob: Tensor, kind: str) -> Tensor:
    diff = logprob - ref_logprob
    if kind in ("kl", "k1"):
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("mse", "k2"):
        return 0.5 * diff.square()
    if kind in ("low_var_kl", "k3"):
        back = (-diff).clamp(-20, 20)  # log(ref / pi), clamped like verl
        return (back.exp() - back - 1).clamp(-10, 10)
    raise NotImplementedError(f"kl_penalty must be one of kl|k1|abs|mse|k2|low_var_kl|k3 (optionally with a "
                              f"'+' suffix); 'full' needs whole-vocabulary log-probs. Got {kind!r}")


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kl_penalty: str) -> Tensor:
    """Per-token KL estimate. A '+' suffix (e.g. "k3+") keeps the value but takes the gradient of k2,
    the unbiased KL gradient (straight-through), as verl does."""
    kind = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    value = _kl_value(logprob, ref_logprob, kind)
    if not kl_penalty.endswith("+") or kind in ("mse", "k2"):
        return value
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + value.detach()


# --------------------------------------------------------------------------- policy losses
def _metrics(clipfrac, ppo_kl, clipfrac_lower) -> dict[str, float]:
    return {"actor/pg_clipfrac": float(clipfrac), "actor/ppo_kl": float(ppo_kl),
            "actor/pg_clipfrac_lower": float(clipfrac_lower)}


def compute_policy_loss_vanilla(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                                loss_agg_mode: str = "token-mean", config: Any = None,
                                rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """PPO clip with dual clip for negative advantages (verl "vanilla"): per token
    max(-A r, -A clip(r, 1 - low, 1 + high)), and for A < 0 at most -A c (c = clip_ratio_c, default 3)."""
    mask = _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = _clip_range(config)
    c = _field(config, "clip_ratio_c", 3.0)
    if not c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip lower bound), got {c}")
    batch = dict(_field(config, "global_batch_info", {}) or {})
    log_ratio = (log_prob - old_log_prob).detach()
    ratio = log_ratio.clamp(-20, 20).exp()
    adv = advantages.to(log_prob.dtype)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - low, 1 + high)
    standard = torch.maximum(unclipped, clipped)
    clipfrac = _masked_mean((clipped > unclipped).to(mask.dtype), mask)
    clipfrac_lower = _masked_mean(((standard > -adv * c) & (adv < 0)).to(mask.dtype), mask)
    ppo_kl = _masked_mean(-log_ratio, mask)

    if loss_agg_mode == "token-mean" and c >= 1 + high:
        # the fused op: dapo aggregation = sum(m l) / num_items; two-sided cap delta = c is verl's dual clip
        dp_size = batch.get("dp_size", 1)
        tokens = batch.get("batch_num_tokens")
        tokens = mask.sum() if tokens is None else tokens
        loss, _ = fused_policy_loss(log_prob, old_log_prob, adv, response_mask, loss_type="dapo",
                                    epsilon_low=low, epsilon_high=high, delta=c, rollout_is_ratio=rollout_is_weights,
                                    num_items_in_batch=torch.as_tensor(tokens, dtype=torch.float32) / dp_size)
        return loss, _metrics(clipfrac, ppo_kl, clipfrac_lower)

    ratio = (log_prob - old_log_prob).clamp(-20, 20).exp()  # differentiable this time
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - low, 1 + high))
    per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * c), per_token)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    return agg_loss(per_token, response_mask, loss_agg_mode, **batch), _metrics(clipfrac, ppo_kl, clipfrac_lower)


def compute_policy_loss_gspo(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                             loss_agg_mode: str = "seq-mean-token-mean", config: Any = None,
                             rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """GSPO: the sequence ratio exp(mean_t log r) in value, each token's own log-prob in the gradient;
    clipped like PPO; always aggregated seq-mean-token-mean (as verl does, whatever loss_agg_mode says)."""
    mask = _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = _clip_range(config)
    log_ratio = log_prob - old_log_prob
    seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    log_s = (log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=10.0)
    s = log_s.exp()
    adv = advantages.to(log_prob.dtype)
    unclipped, clipped = -adv * s, -adv * s.clamp(1 - low, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    loss = agg_loss(per_token, response_mask, "seq-mean-token-mean", **dict(_field(config, "global_batch_info", {})
                                                                            or {}))
    clipfrac = _masked_mean((clipped > unclipped).to(mask.dtype).detach(), mask)
    return loss, _metrics(clipfrac, _masked_mean(-log_ratio.detach(), mask), 0.0)


def compute_policy_loss_sapo(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                             loss_agg_mode: str = "seq-mean-token-mean", config: Any = None,
                             rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """SAPO: soft gate sigmoid(tau (r - 1)) * 4 / tau instead of a hard clip (tau_pos for A > 0, tau_neg
    otherwise); aggregated seq-mean-token-mean."""
    mask = _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    log_ratio = (log_prob - old_log_prob).clamp(-20, 20)
    adv = advantages.to(log_prob.dtype)
    tau = torch.where(adv > 0, torch.as_tensor(_field(config, "tau_pos", 1.0), dtype=adv.dtype),
                      torch.as_tensor(_field(config, "tau_neg", 1.05), dtype=adv.dtype))
    per_token = -torch.sigmoid(tau * (log_ratio.exp() - 1)) * (4 / tau) * adv
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    loss = agg_loss(per_token, response_mask, "seq-mean-token-mean", **dict(_field(config, "global_batch_info", {})
                                                                            or {}))
    return loss, _metrics(0.0, _masked_mean(-log_ratio.detach(), mask), 0.0)


def compute_policy_loss_gpg(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                            loss_agg_mode: str = "token-mean", config: Any = None,
                            rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """GPG: plain policy gradient -A log pi (no ratio); metrics empty, like verl."""
    _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    per_token = -log_prob * advantages
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    return agg_loss(per_token, response_mask, loss_agg_mode, **dict(_field(config, "global_batch_info", {}) or {})), {}


def compute_policy_loss_cispo(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                              loss_agg_mode: str = "token-mean", config: Any = None,
                              rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """CISPO as verl defines it: -sg(clip(r, 1 - low, 1 + high)) A log pi, clipped on BOTH sides (TRL's
    and ttrl_fast.policy_loss's cispo only caps the ratio from above at epsilon_high)."""
    mask = _inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = _clip_range(config)
    log_ratio = (log_prob - old_log_prob).detach().clamp(-20, 20)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - low, 1 + high)
    per_token = -clipped * advantages * log_prob
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    loss = agg_loss(per_token, response_mask, loss_agg_mode, **dict(_field(config, "global_batch_info", {}) or {}))
    return loss, _metrics(_masked_mean((ratio != clipped).to(mask.dtype), mask), _masked_mean(-log_ratio, mask), 0.0)


POLICY_LOSSES: dict[str, Callable] = {"vanilla": compute_policy_loss_vanilla, "gspo": compute_policy_loss_gspo,
                                      "sapo": compute_policy_loss_sapo, "gpg": compute_policy_loss_gpg,
                                      "cispo": compute_policy_loss_cispo}
_NOT_PROVIDED = ("clip_cov", "kl_cov", "geo_mean", "bypass_mode")


def get_policy_loss_fn(name: str) -> Callable:
    """verl's policy-loss registry lookup."""
    if name in POLICY_LOSSES:
        return POLICY_LOSSES[name]
    if name in _NOT_PROVIDED:
        raise NotImplementedError(f"verl policy loss {name!r} is not provided by ttrl_fast.compat.verl; "
                                  f"available: {sorted(POLICY_LOSSES)}")
    raise ValueError(f"Unsupported loss mode: {name}. Supported modes are: {sorted(POLICY_LOSSES)}")


# --------------------------------------------------------------------------- advantages
def _group_ids(index) -> Tensor:
    """verl's index (an array of uids of any hashable type) -> dense int64 group ids."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(u.item() if hasattr(u, "item") else u, len(ids)) for u in index],
                        dtype=torch.int64)


def compute_grpo_outcome_advantage(token_level_rewards: Tensor, response_mask: Tensor, index, epsilon: float = 1e-6,
                                   norm_adv_by_std_in_grpo: bool = True, config: Any = None
                                   ) -> tuple[Tensor, Tensor]:
    """GRPO outcome advantages: score = sum of token rewards, (score - group mean) / (group std + eps)
    (unbiased std; Dr. GRPO without the division), broadcast over the response mask. A group of one
    gets mean 0 and std 1, as in verl. Returns (advantages, returns), both [B, L]."""
    if token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards must be [batch, response_length], got {tuple(token_level_rewards.shape)}")
    _check("response_mask", response_mask, token_level_rewards.shape)
    if len(index) != token_level_rewards.shape[0]:
        raise ValueError(f"index must hold one uid per row ({token_level_rewards.shape[0]}), got {len(index)}")
    scores = token_level_rewards.sum(-1).float()
    groups = _group_ids(index).to(scores.device)
    adv, stats = group_advantages(scores, group_ids=groups, mode="group" if norm_adv_by_std_in_grpo else "none",
                                  std_correction=1, eps=epsilon)
    singleton = (stats["count"] == 1)[torch.searchsorted(stats["group_ids"].to(groups.device), groups)]
    lone = scores / (1.0 + epsilon) if norm_adv_by_std_in_grpo else scores
    adv = torch.where(singleton, lone, adv).to(token_level_rewards.dtype)
    out = adv.unsqueeze(-1) * response_mask
    return out, out


ADVANTAGE_ESTIMATORS: dict[str, Callable] = {"grpo": compute_grpo_outcome_advantage}


def get_adv_estimator_fn(name_or_enum) -> Callable:
    name = getattr(name_or_enum, "value", name_or_enum)
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"Unknown advantage estimator simply: {name}; ttrl_fast.compat.verl provides "
                         f"{sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]


# --------------------------------------------------------------------------- fused LM head
def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                         reduction: str = "none", dist_process_group=None) -> tuple[Tensor, Tensor]:
    """verl.utils.kernel.linear_cross_entropy: (log-probs of labels, entropy), both fp32, per token for
    reduction="none" or summed / averaged; the [N, V] logits never exist (ttrl_fast.fused_linear_logprobs).
    Vocabulary-parallel heads (dist_process_group) are not supported."""
    if dist_process_group is not None:
        raise NotImplementedError("linear_cross_entropy: vocabulary-parallel heads (dist_process_group) are not "
                                  "supported by ttrl_fast; gather the head or pass dist_process_group=None")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    logp, entropy = fused_linear_logprobs(hidden, weight, labels, temperature=temperature, return_entropy=True)
    if reduction == "sum":
        return logp.sum(), entropy.sum()
    if reduction == "mean":
        return logp.mean(), entropy.mean()
    return logp, entropy
