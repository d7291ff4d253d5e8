"""Divergence guard: TTRV reports collapses on weak bases. When the monitor's reward (smoothed) falls
more than `reward_drop` below its best, or the KL to the reference exceeds `kl_max`, for `patience`
consecutive steps, the trainer is rolled back to the last healthy state and its learning rate scaled by
`lr_factor`."""
from __future__ import annotations

import copy
import math


class DivergenceGuard:
    def __init__(self, *, reward_drop: float = 0.2, kl_max: float | None = None, patience: int = 3,
                 lr_factor: float = 0.5, smoothing: float = 0.5, max_rollbacks: int = 10):
        if not reward_drop > 0:
            raise ValueError(f"reward_drop must be > 0, got {reward_drop!r}")
        if kl_max is not None and not kl_max > 0:
            raise ValueError(f"kl_max must be > 0 or None, got {kl_max!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int, got {patience!r}")
        if not 0 < lr_factor <= 1:
            raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.reward_drop, self.kl_max, self.patience = reward_drop, kl_max, patience
        self.lr_factor, self.smoothing, self.max_rollbacks = lr_factor, smoothing, max_rollbacks
        self.ema: float | None = None
        self.best: float = -math.inf
        self.bad_steps = 0
        self.rollbacks = 0
        self._snapshot = None

    def state_dict(self) -> dict:
        return {"ema": self.ema, "best": self.best, "bad_steps": self.bad_steps, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.best = state["ema"], state["best"]
        self.bad_steps, self.rollbacks = state["bad_steps"], state["rollbacks"]

    def snapshot(self, trainer) -> None:
        """Remember the trainer's current weights and optimizer as the last healthy state."""
        self._snapshot = (trainer.policy.trainable_state(), copy.deepcopy(trainer.optimizer.state_dict()))

    def observe(self, trainer, metrics: dict) -> str | None:
        """Call after each update; returns "rollback" when it rolled the trainer back, else None."""
        if self._snapshot is None:
            self.snapshot(trainer)
        reward = metrics.get("reward_mean", float("nan"))
        kl = metrics.get("kl", 0.0)
        if math.isfinite(reward):
            self.ema = reward if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * reward
        too_far = self.kl_max is not None and math.isfinite(kl) and kl > self.kl_max
        degraded = self.ema is not None and self.ema < self.best - self.reward_drop
        if not (too_far or degraded or not math.isfinite(reward)):
            self.bad_steps = 0
            if self.ema is not None and self.ema > self.best:
                self.best = self.ema
            self.snapshot(trainer)
            return None
        self.bad_steps += 1
        if self.bad_steps < self.patience or self.rollbacks >= self.max_rollbacks:
            return None
        weights, optimizer = self._snapshot
        trainer.policy.load_trainable_state(weights)
        trainer.optimizer.load_state_dict(copy.deepcopy(optimizer))
        trainer.lr_scale *= self.lr_factor
        self.rollbacks += 1
        self.bad_steps = 0
        self.ema = self.best  # smoothing restarts from the healthy level
        return "rollback"
