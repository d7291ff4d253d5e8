"""nn.Module front ends."""
from __future__ import annotations

from typing import Optional

import torch

from ttrl_fast.fused_linear import fused_linear_grpo_loss, fused_linear_logprobs
from ttrl_fast.reference.policy_loss import PPO_CLIP_TYPES


class FusedLinearGRPOLoss(torch.nn.Module):
    """Drop-in for Liger's LigerFusedLinearGRPOLoss (same constructor and forward signature, same
    (loss, metrics) return), computing exactly what ttrl_fast.policy_loss computes (TRL 1.16
    semantics) from hidden states and the LM head, chunked so the [B, T, V] logits never exist.

    `compiled` and Liger's per-sequence `chunk_size` are accepted for compatibility; chunking here is
    by tokens (`token_chunk_size`, default: an fp32 tile of <= 16 MiB). The full Metrics of the last
    call are kept in `self.last_metrics`.
    """

    def __init__(
        self,
        beta: float = 0.04,
        compiled: bool = True,
        use_ref_model: bool = True,
        chunk_size: int = 1,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        loss_type: str = "dapo",
        max_completion_length: Optional[int] = None,
        importance_sampling_level: str = "token",
        sapo_temperature_pos: float = 1.0,
        sapo_temperature_neg: float = 1.05,
        temperature: float = 1.0,
        delta: Optional[float] = None,
        use_bias_correction_kl: bool = False,
        vespo_k_pos: float = 2.0,
        vespo_lambda_pos: float = 3.0,
        vespo_k_neg: float = 3.0,
        vespo_lambda_neg: float = 2.0,
        *,
        token_chunk_size: Optional[int] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        for name, value in (("sapo_temperature_pos", sapo_temperature_pos), ("sapo_temperature_neg", sapo_temperature_neg)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if delta is not None and delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.beta, self.use_ref_model, self.temperature = beta, use_ref_model, temperature
        self.loss_kwargs = dict(
            loss_type=loss_type, importance_sampling_level=importance_sampling_level, epsilon_low=epsilon_low,
            epsilon_high=epsilon_high, delta=delta, beta=beta, use_bias_correction_kl=use_bias_correction_kl,
            max_completion_length=max_completion_length, sapo_temperature_pos=sapo_temperature_pos,
            sapo_temperature_neg=sapo_temperature_neg, vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos,
            vespo_k_neg=vespo_k_neg, vespo_lambda_neg=vespo_lambda_neg)
        self.token_chunk_size, self.backend = token_chunk_size, backend
        self.last_metrics = None

    def forward(
        self,
        _input,  # [B, T, H]
        lin_weight,  # [V, H]
        selected_token_ids,  # [B, T]
        attention_mask,  # [B, T]
        advantages,  # [B]
        bias=None,
        ref_per_token_logps=None,
        old_per_token_logps=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        vllm_is_ratio=None,
        num_items_in_batch=None,
    ):
        ref_logp = ref_per_token_logps
        if self.beta != 0.0 and self.use_ref_model and ref_logp is None:
            if ref_input is None:
                raise ValueError("beta != 0 needs ref_per_token_logps or ref_input (+ ref_weight)")
            with torch.no_grad():  # the reference model's log-probs: no graph, no gradients
                ref_logp = fused_linear_logprobs(ref_input, lin_weight if ref_weight is None else ref_weight,
                                                 selected_token_ids, bias=ref_bias, temperature=self.temperature,
                                                 chunk_size=self.token_chunk_size, backend=self.backend)
        kwargs = dict(self.loss_kwargs)
        if not self.use_ref_model:
            kwargs["beta"] = 0.0
        loss, metrics = fused_linear_grpo_loss(
            _input, lin_weight, selected_token_ids, attention_mask, advantages, bias=bias,
            old_logp=old_per_token_logps, ref_logp=ref_logp, rollout_is_ratio=vllm_is_ratio,
            temperature=self.temperature, chunk_size=self.token_chunk_size, backend=self.backend,
            num_items_in_batch=num_items_in_batch, **kwargs)
        self.last_metrics = metrics
        out = []
        if kwargs["beta"] != 0.0:
            out.append(metrics["kl"])
        loss_type = kwargs["loss_type"]
        if loss_type in PPO_CLIP_TYPES:
            out.append(metrics["clip_ratio/region_mean"])
        elif loss_type == "cispo":
            out.append(metrics["cispo_clip_ratio"])
        else:
            out.append(torch.zeros(()))
        return loss, tuple(out)
