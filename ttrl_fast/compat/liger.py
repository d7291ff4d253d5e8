"""`triton_grpo_loss` with Liger-Kernel 0.8.5's exact signature, defaults (temperature=0.9, beta=0.04,
eps_high=0.4, use_bias_correction_kl=False) and return shapes, backed by ttrl_fast.

    reduce=True:  (loss, [kl_mean] + [clip_ratio])   kl_mean only when beta != 0
    reduce=False: (per_token_loss * mask, per_token_kl * mask or None, is_clipped * mask), all [B, L]

Differences from Liger, on purpose:
  * luspo uses TRL's corrected aggregation (mean_i sum_t m l, TRL #6654); Liger 0.8.5 still has the
    old quadratic-length form.
  * `inplace` is accepted and ignored: the logits are never overwritten (Liger writes the gradient
    into them); the backward returns a fresh gradient. Liger's clip flags (taken before the delta
    clamp) are reproduced in clip_ratio / is_clipped.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ttrl_fast.functional import selective_log_softmax
from ttrl_fast.losses import policy_loss
from ttrl_fast.reference.policy_loss import PPO_CLIP_TYPES, policy_loss as spec_policy_loss


def _clip_flags(ratio: Tensor, adv: Tensor, loss_type: str, eps_low: float, eps_high: float) -> Tensor:
    """Liger's is_clipped (on the raw ratio, before any delta clamp)."""
    if loss_type in PPO_CLIP_TYPES:
        return (((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))).float()
    if loss_type == "cispo":
        return ((ratio > eps_high) & (adv > 0)).float()
    return torch.zeros_like(ratio)


def triton_grpo_loss(
    logits,
    old_logp,
    ref_logp,
    completion_ids,
    advantages,
    completion_mask=None,
    temperature=0.9,
    beta=0.04,
    eps_low=0.2,
    eps_high=0.4,
    inplace=True,
    loss_type="dapo",
    max_completion_length=None,
    importance_sampling_level="token",
    reduce=False,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vllm_is_ratio=None,
    delta=None,
    use_bias_correction_kl=False,
    num_items_in_batch=None,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
):
    """Liger 0.8.5 `liger_kernel.transformers.grpo_loss.triton_grpo_loss`.

    Args:
        logits: (B, L + 1, V); the last position is ignored (read in place, not copied).
        old_logp, ref_logp: (B, L) or None (ref required if beta != 0). completion_ids: (B, L).
        advantages: (B,). completion_mask: (B, L) or None. vllm_is_ratio: (B, L), (B, 1), (B,) or None.
    """
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level}")
    if delta is not None and loss_type in ("cispo", "sapo", "vespo"):
        raise ValueError(f"delta (two-sided clipping) is not supported for loss_type='{loss_type}'.")
    if importance_sampling_level == "sequence" and loss_type in ("cispo", "sapo", "vespo"):
        raise ValueError(f"Sequence-level importance sampling is not supported for loss_type='{loss_type}'. "
                         "Use importance_sampling_level='token' instead.")
    if logits.dim() != 3 or logits.shape[1] != completion_ids.shape[1] + 1:
        raise ValueError(f"logits must be (B, L + 1, V) for completion_ids (B, L) = {tuple(completion_ids.shape)}, "
                         f"got {tuple(logits.shape)}")
    batch, length = completion_ids.shape
    mask = torch.ones(batch, length, device=logits.device) if completion_mask is None else completion_mask
    if vllm_is_ratio is not None and vllm_is_ratio.dim() == 1:
        vllm_is_ratio = vllm_is_ratio.unsqueeze(-1)
    logp = selective_log_softmax(logits[:, :-1], completion_ids, temperature=temperature, mask=mask != 0)
    knobs = dict(ref_logp=ref_logp, loss_type=loss_type, importance_sampling_level=importance_sampling_level,
                 epsilon_low=eps_low, epsilon_high=eps_high, delta=delta, beta=beta,
                 use_bias_correction_kl=use_bias_correction_kl, rollout_is_ratio=vllm_is_ratio,
                 max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch,
                 sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
                 vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
                 vespo_lambda_neg=vespo_lambda_neg)
    mask_f = mask.float()
    # Per-token tensors (O(B L), from the fused log-probs): what reduce=False returns, and Liger's
    # clip flags for reduce=True.
    _, parts = spec_policy_loss(logp, old_logp, advantages, mask_f, **knobs)
    ratio = parts["ratio"].expand(batch, length)
    is_clipped = _clip_flags(ratio, advantages.unsqueeze(-1), loss_type, eps_low, eps_high)
    kl = parts["per_token_kl"]
    if not reduce:
        per_token = parts["per_token_loss"].expand(batch, length)
        return per_token * mask_f, None if kl is None else kl * mask_f, is_clipped * mask_f
    loss, _ = policy_loss(logp, old_logp, advantages, mask, **knobs)
    tokens = mask_f.sum().clamp(min=1.0)
    metrics = []
    if beta != 0.0:
        metrics.append((kl.detach() * mask_f).sum() / tokens)
    metrics.append((is_clipped * mask_f).sum() / tokens)
    return loss, metrics
