"""OpenRLHF's `PolicyLoss` (openrlhf.models.loss) with its constructor, forward signature, defaults and
return value, backed by ttrl_fast.

    loss_fn = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=3.0)
    loss, clip_ratio, ppo_kl, vllm_kl = loss_fn(log_probs, old_log_probs, advantages, action_mask)

PPO with token-level aggregation (OpenRLHF's default) runs on the fused `ttrl_fast.policy_loss` op:
dapo aggregation (masked sum / batch_num_tokens * dp_size), dual clip as the op's two-sided cap
delta = dual_clip (identical for both advantage signs since dual_clip > 1 + clip_eps_high), and the
vLLM importance-sampling corrections (tis / icepop / seq-mask-tis) as the op's per-token rollout
weight. GSPO and sample-level aggregation are evaluated here with torch (O(tokens) elementwise work).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ttrl_fast.losses import policy_loss as fused_policy_loss


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum()


def aggregate_loss(loss: Tensor, loss_mask: Tensor, token_level_loss: bool = True, dp_size: int = 1,
                   batch_num_tokens: float | None = None, global_batch_size: float | None = None) -> Tensor:
    """OpenRLHF's aggregation: token level = masked sum / global token count; sample level = per-sequence
    token means summed over non-empty sequences / global sample count (x dp_size with global counts)."""
    mask = loss_mask.to(loss.dtype)
    if token_level_loss:
        if batch_num_tokens is None:
            return _masked_mean(loss, mask)
        return (loss * mask).sum() / batch_num_tokens * dp_size
    counts = mask.sum(-1)
    per_seq = (loss * mask).sum(-1) / (counts + 1e-8)
    nonempty = (counts > 0).to(loss.dtype)
    if global_batch_size is None:
        return _masked_mean(per_seq, nonempty)
    return (per_seq * nonempty).sum() / global_batch_size * dp_size


class PolicyLoss(nn.Module):
    """PPO / GSPO policy loss with OpenRLHF's interface.

    forward(log_probs [B, T], old_log_probs [B, T], advantages [B, T], action_mask [B, T] or None,
    rollout_log_probs [B, T] or None, dp_size, batch_num_tokens, global_batch_size)
    -> (loss, clip_ratio, ppo_kl, vllm_kl or None).
    """

    def __init__(self, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip: float | None = None,
                 token_level_loss: bool = True, policy_loss_type: str = "ppo",
                 enable_vllm_is_correction: bool = False, vllm_is_truncated_threshold: list | None = None,
                 vllm_is_correction_type: str = "tis") -> None:
        super().__init__()
        if policy_loss_type not in ("ppo", "gspo"):
            raise ValueError(f"Invalid policy loss type: {policy_loss_type} (ppo or gspo)")
        if dual_clip is not None and not dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1.0, got {dual_clip}")
        if vllm_is_correction_type not in ("tis", "icepop", "seq-mask-tis"):
            raise ValueError(f"Invalid vllm_is_correction_type: {vllm_is_correction_type}, must be one of "
                             f"tis/icepop/seq-mask-tis")
        if enable_vllm_is_correction and (vllm_is_truncated_threshold is None
                                          or len(vllm_is_truncated_threshold) != 2):
            raise ValueError("vllm_is_truncated_threshold must be [low, high] when enable_vllm_is_correction")
        self.clip_eps_low, self.clip_eps_high, self.dual_clip = clip_eps_low, clip_eps_high, dual_clip
        self.policy_loss_type = policy_loss_type
        self.token_level_loss = token_level_loss and policy_loss_type != "gspo"  # GSPO: per-sample mean
        self.enable_vllm_is_correction = enable_vllm_is_correction
        self.vllm_is_truncated_threshold = vllm_is_truncated_threshold
        self.vllm_is_correction_type = vllm_is_correction_type

    def _vllm_weights(self, old_log_probs: Tensor, rollout_log_probs: Tensor, mask: Tensor) -> Tensor:
        """Per-token weight correcting for the inference engine's sampling distribution (no gradient)."""
        low, high = self.vllm_is_truncated_threshold
        log_ratio = (old_log_probs - rollout_log_probs).detach()
        if self.vllm_is_correction_type == "icepop":  # drop tokens outside [low, high]
            weight = log_ratio.exp()
            return weight * ((weight >= low) & (weight <= high))
        if self.vllm_is_correction_type == "seq-mask-tis":  # filter whole sequences by their geometric mean
            seq = ((log_ratio * mask).sum(-1) / mask.sum(-1)).exp()
            return ((seq >= low) & (seq <= high)).unsqueeze(-1) * log_ratio.exp()
        return log_ratio.exp().clamp(min=low, max=high)  # tis

    def forward(self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, action_mask: Tensor | None = None,
                rollout_log_probs: Tensor | None = None, dp_size: int = 1, batch_num_tokens: float | None = None,
                global_batch_size: float | None = None):
        if log_probs.dim() != 2:
            raise ValueError(f"log_probs must be [batch, response_length], got {tuple(log_probs.shape)}")
        for name, x in (("old_log_probs", old_log_probs), ("advantages", advantages), ("action_mask", action_mask),
                        ("rollout_log_probs", rollout_log_probs)):
            if x is not None and tuple(x.shape) != tuple(log_probs.shape):
                raise ValueError(f"{name} must have the shape of log_probs {tuple(log_probs.shape)}, "
                                 f"got {tuple(x.shape)}")
        if self.enable_vllm_is_correction and rollout_log_probs is None:
            raise ValueError("rollout_log_probs are required when enable_vllm_is_correction=True")
        mask = torch.ones_like(log_probs) if action_mask is None else action_mask.to(log_probs.dtype)
        raw_log_ratio = log_probs - old_log_probs
        vllm_weight = vllm_kl = None
        if self.enable_vllm_is_correction and self.policy_loss_type == "ppo":
            vllm_weight = self._vllm_weights(old_log_probs, rollout_log_probs, mask)
            vllm_kl = _masked_mean(rollout_log_probs - old_log_probs, mask)

        if self.policy_loss_type == "ppo":
            ratio = raw_log_ratio.detach().clamp(-20.0, 20.0).exp()
        else:
            log_ratio = (log_probs - rollout_log_probs) if self.enable_vllm_is_correction else raw_log_ratio
            ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)).exp().unsqueeze(-1) * mask
        surr1, surr2 = ratio * advantages, ratio.clamp(1 - self.clip_eps_low, 1 + self.clip_eps_high) * advantages
        clip_ratio = _masked_mean(torch.lt(surr2, surr1).float().detach(), mask)
        ppo_kl = _masked_mean(-raw_log_ratio.detach(), mask)

        fused = (self.policy_loss_type == "ppo" and self.token_level_loss
                 and (self.dual_clip is None or self.dual_clip >= 1 + self.clip_eps_high))
        if fused:
            tokens = mask.sum() if batch_num_tokens is None else torch.as_tensor(batch_num_tokens) / dp_size
            loss, _ = fused_policy_loss(log_probs, old_log_probs, advantages, mask, loss_type="dapo",
                                        epsilon_low=self.clip_eps_low, epsilon_high=self.clip_eps_high,
                                        delta=self.dual_clip, rollout_is_ratio=vllm_weight,
                                        num_items_in_batch=torch.as_tensor(tokens, dtype=torch.float32))
            return loss, clip_ratio, ppo_kl, vllm_kl

        if self.policy_loss_type == "ppo":
            ratio = raw_log_ratio.clamp(-20.0, 20.0).exp()  # with gradient this time
            surr1 = ratio * advantages
            surr2 = ratio.clamp(1 - self.clip_eps_low, 1 + self.clip_eps_high) * advantages
        best = torch.min(surr1, surr2)
        if self.dual_clip is not None:
            best = torch.where(advantages < 0, torch.max(best, self.dual_clip * advantages), best)
        loss = -best if vllm_weight is None else -best * vllm_weight
        loss = aggregate_loss(loss, mask, self.token_level_loss, dp_size, batch_num_tokens, global_batch_size)
        return loss, clip_ratio, ppo_kl, vllm_kl
