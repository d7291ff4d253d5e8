"""Runs TRL 1.16's own `GRPOTrainer._compute_loss` on given per-token tensors.

The method needs a trainer; a stub object supplies exactly the attributes it reads, and the model
forward (`_get_per_token_logps_and_entropies`) is replaced by one that returns our tensors, so the
loss, its gradient w.r.t. the log-probs and the logged metrics are TRL's, computed by TRL's code.
Settings: one process, no gradient accumulation, steps_per_generation = 1, train mode.
"""
from __future__ import annotations

import types
from collections import defaultdict

import torch

trl_grpo = __import__("trl.trainer.grpo_trainer", fromlist=["GRPOTrainer"])
GRPOTrainer = trl_grpo.GRPOTrainer


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def trl_compute_loss(logp, old_logp, advantages, mask, *, ref_logp=None, loss_type="dapo",
                     importance_sampling_level="token", epsilon_low=0.2, epsilon_high=None, delta=None, beta=0.0,
                     use_bias_correction_kl=False, rollout_is_ratio=None, entropy=None, entropy_coef=0.0,
                     max_completion_length=None, num_items_in_batch=None, sapo_temperature_pos=1.0,
                     sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
                     vespo_lambda_neg=2.0):
    """(loss, metrics) from TRL's code; logp must be a leaf with requires_grad for the gradient."""
    entropies = torch.zeros_like(logp) if entropy is None else entropy
    stub = types.SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=importance_sampling_level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_low if epsilon_high is None else epsilon_high,
        use_vllm=rollout_is_ratio is not None,
        vllm_importance_sampling_correction=rollout_is_ratio is not None,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(),
        max_completion_length=logp.shape[1] if max_completion_length is None else max_completion_length,
        _entropy_bonus_enabled=entropy_coef != 0.0,
        entropy_coef=entropy_coef,
        use_adaptive_entropy=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        args=types.SimpleNamespace(
            use_bias_correction_kl=use_bias_correction_kl, delta=delta, steps_per_generation=1,
            sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
            vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg),
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropies, None),
    )
    b, t = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages,
        "num_items_in_batch": torch.as_tensor(mask.sum() if num_items_in_batch is None else num_items_in_batch,
                                              dtype=logp.dtype),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    if rollout_is_ratio is not None:
        inputs["importance_sampling_ratio"] = rollout_is_ratio
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}
    return loss, metrics
