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


@torch.no_grad()
def fused_selective_log_softmax(logits: Tensor, input_ids: Tensor, temperature: float = 0.9, mask=None) -> Tensor:
    """Liger 0.8.5 `liger_kernel.ops.grpo_loss.fused_selective_log_softmax`: logits (B, L + 1, V), the last
    L ids of input_ids (and of mask) -> fp32 (B, L) log-probs, 0 where mask is 0, no gradient."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, L + 1, V), got {tuple(logits.shape)}")
    length = logits.shape[1] - 1
    ids = input_ids[:, -length:]
    keep = None if mask is None else mask[:, -length:] != 0
    return selective_log_softmax(logits[:, :-1], ids, temperature=temperature, mask=keep).float()


@torch.no_grad()
def get_gamma_weights(advantages: Tensor, log_ratio_per_token: Tensor, mask: Tensor,
                      importance_sampling_ratio: Tensor | None = None, k_pos: float = 2.0, lambda_pos: float = 3.0,
                      k_neg: float = 3.0, lambda_neg: float = 2.0) -> Tensor:
    """Liger / TRL VESPO sequence weight phi(w) = exp(lambda + k log w - lambda w) (phi(1) = 1), detached,
    (B, 1); w is the sequence importance ratio (times the rollout IS ratio), both clamped to [1e-8, e^20]."""
    from ttrl_fast.reference.policy_loss import vespo_phi

    mask = mask.to(log_ratio_per_token.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return vespo_phi(log_ratio_per_token, mask, adv, importance_sampling_ratio, k_pos=k_pos, lambda_pos=lambda_pos,
                     k_neg=k_neg, lambda_neg=lambda_neg)


class LigerFusedLinearGRPOLoss(torch.nn.Module):
    """Liger 0.8.5 `liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss` (same constructor, defaults, forward
    and return (loss, (kl_mean if beta != 0, clip_ratio))), on ttrl_fast.fused_linear_logprobs (no [B, T, V]
    logits, no per-chunk torch.compile) and the fused policy_loss. `compiled` and `chunk_size` are accepted
    and ignored (nothing to compile; the head is tiled by memory, not by rows). luspo uses TRL's corrected
    aggregation, as in triton_grpo_loss above."""

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True, chunk_size: int = 1,
                 epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "dapo",
                 max_completion_length: int | None = None, importance_sampling_level: str = "token",
                 sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05, temperature: float = 1.0,
                 delta: float | None = None, use_bias_correction_kl: bool = False, vespo_k_pos: float = 2.0,
                 vespo_lambda_pos: float = 3.0, vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0):
        super().__init__()
        for name, value in (("sapo_temperature_pos", sapo_temperature_pos),
                            ("sapo_temperature_neg", sapo_temperature_neg)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if delta is not None and delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        if importance_sampling_level == "sequence" and loss_type in ("cispo", "sapo", "vespo"):
            raise ValueError(f"Sequence-level importance sampling is not supported for loss_type='{loss_type}'. "
                             "Use importance_sampling_level='token' instead.")
        self.beta, self.use_ref_model, self.temperature = beta, use_ref_model, temperature
        self.knobs = dict(loss_type=loss_type, importance_sampling_level=importance_sampling_level,
                          epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta, beta=beta,
                          use_bias_correction_kl=use_bias_correction_kl, max_completion_length=max_completion_length,
                          sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
                          vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
                          vespo_lambda_neg=vespo_lambda_neg)
        if loss_type == "dr_grpo" and max_completion_length is None:
            raise ValueError("max_completion_length must be provided for loss_type 'dr_grpo'")

    def forward(self, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,
                ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None, ref_bias=None,
                vllm_is_ratio=None, num_items_in_batch=None):
        """_input (B, T, H), lin_weight (V, H), selected_token_ids / attention_mask (B, T), advantages (B,)."""
        from ttrl_fast.fused_linear import fused_linear_logprobs

        if self.use_ref_model and self.beta != 0 and ref_per_token_logps is None and ref_input is None:
            raise ValueError("If use_ref_model is True, ref_per_token_logps or ref_input must be provided")
        mask = attention_mask != 0
        targets = selected_token_ids.masked_fill(~mask, -100)
        logp = fused_linear_logprobs(_input, lin_weight, targets, bias=bias, temperature=self.temperature)
        ref = ref_per_token_logps
        if self.beta != 0 and ref is None:
            if self.use_ref_model:
                with torch.no_grad():
                    ref = fused_linear_logprobs(ref_input, ref_weight if ref_weight is not None else lin_weight,
                                                targets, bias=ref_bias, temperature=self.temperature)
            else:
                ref = logp.detach()  # no reference model: the KL term is 0 with 0 gradient, as in Liger
        if vllm_is_ratio is not None and vllm_is_ratio.dim() == 1:
            vllm_is_ratio = vllm_is_ratio.unsqueeze(-1)
        loss, parts = policy_loss(logp, old_per_token_logps, advantages, mask, ref_logp=ref,
                                  rollout_is_ratio=vllm_is_ratio, num_items_in_batch=num_items_in_batch,
                                  **self.knobs)
        metrics = []
        if self.beta != 0:
            metrics.append(parts["kl"])
        clip_key = {"cispo": "cispo_clip_ratio"}.get(self.knobs["loss_type"], "clip_ratio/region_mean")
        metrics.append(parts[clip_key] if clip_key in parts else torch.zeros((), device=logp.device))
        return loss, tuple(metrics)
