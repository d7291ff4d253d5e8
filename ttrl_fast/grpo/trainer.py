"""`GRPOTrainer`: one step is Meta-TTRL's Algorithm 1 body,

    rollouts = policy.generate(x, n=G)                        2  generation
    r        = monitor.score(rollouts)                        3  intrinsic monitoring
    A        = (r - mean_group) / (std_group + eps)           4a group-relative advantages
    repeat μ times: θ <- θ + η ∇ [ 1/G Σ_i 1/|y_i| Σ_t min(ρ A, clip(ρ) A) - β KL_t ]   4b policy control

with the old log-probs taken from the sampler (no second forward) and the loss, KL and clipping fused
in ttrl_fast.policy_loss. `step` runs all of it; `rollout`, `score` and `update` are exposed so that a
caller (TestTimeAdapter) can serve an output between scoring and updating.

Under torchrun each rank updates on its own prompts and the gradients are averaged (ttrl_fast/distributed.py);
token-level losses are normalised by the global token count, metrics are global.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ttrl_fast.advantages import group_advantages
from ttrl_fast import distributed as dp
from ttrl_fast.grpo.config import GRPOConfig
from ttrl_fast.losses import policy_loss
from ttrl_fast.metrics import Metrics
from ttrl_fast.policy.base import Policy
from ttrl_fast.reference.sampling import mix32_int
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts


TOKEN_NORMALISED = ("dapo", "cispo", "vespo")  # losses normalised by a token count (num_items_in_batch)


@dataclass
class StepResult:
    rollouts: Rollouts
    rewards: RewardBatch
    metrics: dict[str, float] = field(default_factory=dict)


def lr_factor(config: GRPOConfig, step: int) -> float:
    """Multiplier of the learning rate at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    horizon = config.max_steps
    warmup = int(config.warmup_ratio * horizon) if horizon else 0
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant" or not horizon:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
    if config.lr_schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class GRPOTrainer:
    """GRPO on a Policy with a reward monitor (anything with score(rollouts) -> RewardBatch)."""

    def __init__(self, policy: Policy, config: GRPOConfig | None = None, monitor=None):
        self.policy = policy
        self.config = config or GRPOConfig()
        self.monitor = monitor
        self.step_count = 0  # batches of rollouts processed
        self.update_count = 0  # optimizer steps taken
        self.lr_scale = 1.0  # lowered by the divergence guard
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = self.policy.trainable_parameters()
        if not params:
            raise ValueError("the policy has no trainable parameters")
        c = self.config
        return torch.optim.AdamW(params, lr=c.learning_rate, betas=c.adam_betas, weight_decay=c.weight_decay)

    def reset_optimizer(self) -> None:
        self.optimizer = self._make_optimizer()

    # ------------------------------------------------------------------ the algorithm
    def step(self, prompts: Sequence[Prompt]) -> StepResult:
        rollouts = self.rollout(prompts)
        rewards = self.score(rollouts)
        metrics = self.update(rollouts, rewards)
        return StepResult(rollouts, rewards, metrics)

    def rollout(self, prompts: Sequence[Prompt]) -> Rollouts:
        """G samples per prompt; the noise seed changes every step (same prompt, new draws)."""
        seed = mix32_int(self.config.seed) << 32 | mix32_int(self.step_count)
        return self.policy.generate(list(prompts), self.config.sampling_params(seed=seed))

    def score(self, rollouts: Rollouts) -> RewardBatch:
        if self.monitor is None:
            raise ValueError("GRPOTrainer has no monitor: pass monitor= or call update() with rewards")
        return self.monitor.score(rollouts)

    def update(self, rollouts: Rollouts, rewards: RewardBatch | torch.Tensor) -> dict[str, float]:
        """μ = ppo_epochs passes of minibatch policy updates on one batch of scored rollouts."""
        c = self.config
        values = rewards.rewards if isinstance(rewards, RewardBatch) else torch.as_tensor(rewards, dtype=torch.float32)
        batch = rollouts.batch
        device = batch.completion_ids.device
        group = batch.group_size
        advantages, stats = group_advantages(values.to(device), group_size=group, mode=c.advantage_mode,
                                             eps=c.advantage_eps)
        mask = batch.completion_mask
        old = batch.logprobs  # the sampler's raw log-probs: log_softmax(logits / T), full vocabulary
        ref = self.policy.token_logprobs(rollouts, reference=True) if c.beta != 0 else None
        prompts = len(rollouts.prompts)
        per_step = c.minibatch_prompts or prompts
        metrics: dict[str, list[float]] = {}
        _, world = dp.rank_and_world()
        for epoch in range(c.ppo_epochs):
            for first in range(0, prompts, per_step):
                rows = list(range(first * group, min(prompts, first + per_step) * group))
                self.optimizer.zero_grad(set_to_none=True)
                logp, m = self._accumulate(rollouts, rows, old, advantages, mask, ref, world)
                dp.average_gradients(self.policy.trainable_parameters())  # DDP's mean, before clipping
                grad_norm = self._clip()
                for g in self.optimizer.param_groups:
                    g["lr"] = c.learning_rate * self.lr_scale * lr_factor(c, self.update_count)
                self.optimizer.step()
                self.update_count += 1
                row_metrics = {k: float(v) for k, v in m.all_reduce().items()}  # m: merged over chunks
                row_metrics["grad_norm"] = grad_norm
                if epoch == 0 and first == 0:
                    # sampler vs trainer log-prob gap at the first update (ratio 1 up to rounding)
                    sel = mask[rows]
                    row_metrics["sampler_logprob_gap"] = dp.global_max(
                        float((logp.detach() - old[rows])[sel].abs().max()) if bool(sel.any()) else 0.0)
                for k, v in row_metrics.items():
                    metrics.setdefault(k, []).append(v)
        self.step_count += 1
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        everyone = dp.gather_values(values.float().cpu())  # rewards of all ranks' rollouts
        finite = everyone[~torch.isnan(everyone)]
        zero_std = dp.gather_values(stats["frac_zero_std"].reshape(1).float().cpu()).mean()
        out.update({
            "reward_mean": float(finite.mean()) if finite.numel() else float("nan"),
            "reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
            "frac_zero_std_groups": float(zero_std),
            "completion_length": float(dp.gather_values(mask.sum(-1).float().cpu()).mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        return out

    def _accumulate(self, rollouts, rows, old, advantages, mask, ref, world):
        """Forward + backward of one minibatch, in chunks of `backward_rows` rows whose losses are
        scaled so that their gradients sum to the whole minibatch's (activations of one chunk alive at a
        time). Returns the minibatch's log-probs (detached) and its metrics."""
        c = self.config
        step = min(c.backward_rows or len(rows), len(rows))
        tokens = mask[rows].sum()
        num_items = None  # token-level losses: the minibatch's (global) token count per rank, TRL's convention
        if c.loss_type in TOKEN_NORMALISED and (world > 1 or step < len(rows)):
            num_items = (dp.global_sum(tokens) / world) if world > 1 else tokens.float()
        parts, logps = [], []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            logp = self.policy.token_logprobs(rollouts, chunk)
            loss, m = policy_loss(logp, old[chunk], advantages[chunk], mask[chunk],
                                  ref_logp=None if ref is None else ref[chunk], loss_type=c.loss_type,
                                  epsilon_low=c.epsilon, epsilon_high=c.epsilon_high, beta=c.beta,
                                  kl_estimator=c.kl_estimator, num_items_in_batch=num_items)
            if num_items is None and step < len(rows):  # the other losses are means over rows / tokens
                share = (mask[chunk].sum() / tokens.clamp(min=1)) if c.loss_type == "bnpo" else len(chunk) / len(rows)
                loss = loss * share
            loss.backward()
            parts.append((float(loss.detach()), m))
            logps.append(logp.detach())
        return torch.cat(logps), Metrics.merge([m for _, m in parts], policy_loss=sum(v for v, _ in parts))

    def _clip(self) -> float:
        params = [p for p in self.policy.trainable_parameters() if p.grad is not None]
        if not params:
            return 0.0
        limit = self.config.max_grad_norm
        if limit is None:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, limit)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor norm
