"""Control rewards: never self-monitoring (`intrinsic = False`). Use them as baselines and upper bounds."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from ttrl_fast.monitors.base import Monitor, check_rollouts, finite_number
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts


class Oracle(Monitor):
    """Ground truth: r_i = float(checker(prompt, output)) (bool -> 0/1; None -> NaN).

    For measurement and as an upper-bound control only (the analogue of Meta-TTRL's "RL leakage"):
    it reads labels the test-time loop must never see, hence intrinsic = False.
    """

    intrinsic = False

    def __init__(self, checker: Callable[[Prompt, Any], float | bool | None], *, name: str = "oracle"):
        if not callable(checker):
            raise TypeError(f"Oracle: checker must be callable (prompt, output) -> float | bool, got {checker!r}")
        self.checker, self.name = checker, name

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        values = []
        for r in range(rows):
            v = self.checker(rollouts.prompt_of(r), rollouts.outputs[r])
            if v is None:
                values.append(math.nan)
            elif isinstance(v, (bool, numbers.Real)) or (torch.is_tensor(v) and v.numel() == 1):
                values.append(float(v))
            else:
                raise TypeError(f"Oracle: checker returned {type(v).__name__} for row {r}; expected a number or bool")
        rewards = torch.tensor(values, dtype=torch.float32)
        return RewardBatch(rewards, {"mean_reward": float(torch.nanmean(rewards)) if rows else math.nan})


class RandomReward(Monitor):
    """r_i ~ U[low, high) i.i.d. from its own seeded generator (reproducible; a new draw every call).
    The "random reward" control of TTRV / TTRL: any gain it gives is not from the monitor."""

    intrinsic = False

    def __init__(self, seed: int = 0, *, low: float = 0.0, high: float = 1.0, name: str = "random"):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"RandomReward: seed must be an int, got {seed!r}")
        self.low = finite_number("RandomReward low", low)
        self.high = finite_number("RandomReward high", high)
        if not self.low < self.high:
            raise ValueError(f"RandomReward: need low < high, got low={low!r} high={high!r}")
        self.seed, self.name = seed, name
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        rewards = self.low + (self.high - self.low) * torch.rand(rows, generator=self.generator, dtype=torch.float32)
        return RewardBatch(rewards, {"mean_reward": float(rewards.mean()) if rows else math.nan})


class Constant(Monitor):
    """r_i = value for every row (zero-std groups: no learning signal; a sanity control)."""

    intrinsic = False

    def __init__(self, value: float = 0.0, *, name: str = "constant"):
        self.value, self.name = finite_number("Constant value", value), name

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        return RewardBatch(torch.full((rows,), self.value, dtype=torch.float32), {"mean_reward": self.value})
