"""`GRPOConfig`: every knob of the update, with the seeds' defaults (β 0.04 as SEER, μ = 1 update per
batch of rollouts as SEER / T2I-R1 / verl ppo_epochs=1, k3 KL, group-std advantages, DeepSeekMath's
1/G Σ_i 1/|y_i| Σ_t aggregation)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ttrl_fast.reference.advantages import MODES as ADVANTAGE_MODES
from ttrl_fast.reference.policy_loss import KL_ESTIMATORS, LOSS_TYPES
from ttrl_fast.sampler.params import SamplingParams

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA on the policy: the reference policy is then the base model with the adapter switched
    off (no second copy of the weights)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraSettings.r must be a positive int, got {self.r!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoraSettings.alpha must be finite and > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO hyperparameters (all runtime values: nothing recompiles when they change).

    Attributes:
        group_size: G rollouts per prompt.
        learning_rate, lr_schedule ("constant" | "cosine" | "linear"), warmup_ratio, max_steps (the
            schedule's horizon; None = constant after warm-up), weight_decay, adam_betas, max_grad_norm
            (None = no clipping).
        beta: KL coefficient against the reference policy (0 = no reference forward at all).
        kl_estimator: "k1" | "k2" | "k3" (k3 = verl's low_var_kl).
        epsilon, epsilon_high: clip range [1 - epsilon, 1 + epsilon_high] (epsilon_high None = epsilon).
        ppo_epochs: μ, policy updates per batch of rollouts (1: the ratio is exactly 1 at the update).
        minibatch_prompts: prompts per optimizer step within an epoch (None = the whole batch).
        backward_rows: rollout rows per forward / backward within a minibatch (gradient accumulation with
            the minibatch's normalisation: the same update, activations of only this many rows alive at
            once; any split works, groups included, since advantages are computed before; None = the
            whole minibatch in one pass).
        loss_type: any of ttrl_fast.policy_loss's ("grpo" = per-sequence token mean, then mean).
        advantage_mode: "group" | "batch" | "none" | "rloo" (ttrl_fast.group_advantages).
        advantage_eps: added to the std.
        temperature, top_p, top_k, min_p, max_new_tokens: rollout sampling (the trainer's log-probs use
            the same temperature, so sampler and trainer agree).
        lora: LoraSettings, or None to train every parameter (the reference is then a frozen copy).
        seed: rollout noise and initialisation seed.
    """

    group_size: int = 8
    learning_rate: float = 1e-6
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0
    max_steps: int | None = None
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    beta: float = 0.04
    kl_estimator: str = "k3"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    ppo_epochs: int = 1
    minibatch_prompts: int | None = None
    backward_rows: int | None = None
    loss_type: str = "grpo"
    advantage_mode: str = "group"
    advantage_eps: float = 1e-4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    seed: int = 0

    def __post_init__(self):
        def positive_int(name, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GRPOConfig.{name} must be a positive int{' or None' if allow_none else ''}, "
                                 f"got {value!r}")

        def non_negative(name, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"GRPOConfig.{name} must be a finite number >= 0, got {value!r}")

        for name in ("group_size", "ppo_epochs", "max_new_tokens"):
            positive_int(name)
        positive_int("max_steps", allow_none=True)
        positive_int("minibatch_prompts", allow_none=True)
        positive_int("backward_rows", allow_none=True)
        for name in ("learning_rate", "weight_decay", "beta", "epsilon", "advantage_eps"):
            non_negative(name)
        non_negative("epsilon_high", allow_none=True)
        non_negative("max_grad_norm", allow_none=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"GRPOConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"GRPOConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"GRPOConfig.kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"GRPOConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(f"GRPOConfig.advantage_mode must be one of {ADVANTAGE_MODES}, "
                             f"got {self.advantage_mode!r}")
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ValueError(f"GRPOConfig.lora must be a LoraSettings or None, got {type(self.lora).__name__}")
        self.sampling_params()  # validates the sampling fields with SamplingParams' messages

    def sampling_params(self, *, seed: int | None = None) -> SamplingParams:
        """The rollout SamplingParams (n = group_size)."""
        return SamplingParams(n=self.group_size, max_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                              seed=self.seed if seed is None else seed)

    def replace(self, **changes) -> "GRPOConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return GRPOConfig(**values)
