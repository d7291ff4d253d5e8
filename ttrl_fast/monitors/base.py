"""The monitor interface (one scoring method per class), weighted composition and best-of-G serving."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import Tensor

from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts


class Monitor(ABC):
    """A reward source: one float32 reward per rollout row (NaN = unscorable).

    Attributes:
        name: a short label, used as the prefix of this monitor's info inside a `Composite`.
        intrinsic: True when the model monitors itself (its own critic); False for controls (oracle,
            random, constant) and for `External` critics.
    """

    name: str = "monitor"
    intrinsic: bool = True

    def prepare(self, prompts: list[Prompt]) -> None:
        """Called once before a step's rollouts are scored (e.g. to build and cache rubrics). No-op here."""

    @abstractmethod
    def score(self, rollouts: Rollouts) -> RewardBatch:
        """Rewards [len(rollouts)] float32 for the rows of `rollouts` (prompt-major, row = b * G + g)."""

    def __call__(self, rollouts: Rollouts) -> RewardBatch:
        return self.score(rollouts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, intrinsic={self.intrinsic})"


# ---------------------------------------------------------------------------------------------- helpers
def check_rollouts(rollouts: Rollouts) -> int:
    """Validate the shape contract shared by every monitor; returns the number of rows."""
    if not isinstance(rollouts, Rollouts):
        raise TypeError(f"rollouts must be a ttrl_fast.tta.types.Rollouts, got {type(rollouts).__name__}")
    rows = len(rollouts.outputs)
    index = rollouts.batch.group_index
    if index.numel() != rows:
        raise ValueError(f"rollouts has {rows} outputs but its batch has {index.numel()} rows (group_index)")
    if rows and (int(index.min()) < 0 or int(index.max()) >= len(rollouts.prompts)):
        raise ValueError(f"rollouts.batch.group_index must index rollouts.prompts (0..{len(rollouts.prompts) - 1}), "
                         f"got values in [{int(index.min())}, {int(index.max())}]")
    return rows


def group_rows(rollouts: Rollouts) -> list[list[int]]:
    """Row indices of each prompt's group, in row order (prompt b -> [rows with group_index == b])."""
    groups: list[list[int]] = [[] for _ in rollouts.prompts]
    for row, b in enumerate(rollouts.batch.group_index.tolist()):
        groups[b].append(row)
    return groups


def as_rewards(values: Any, rows: int, who: str) -> Tensor:
    """A float32 CPU [rows] tensor from a critic's / checker's answer, with a clear error otherwise."""
    tensor = torch.as_tensor(values).detach()
    if not (tensor.dtype.is_floating_point or tensor.dtype in (torch.bool, torch.int32, torch.int64)):
        raise TypeError(f"{who} must return numbers, got dtype {tensor.dtype}")
    tensor = tensor.to("cpu", torch.float32).flatten()
    if tensor.numel() != rows:
        raise ValueError(f"{who} returned {tensor.numel()} values for {rows} items")
    return tensor


def check_probabilities(values: Tensor, who: str) -> Tensor:
    """Probabilities must be in [0, 1] (NaN allowed: it marks an unscorable item and propagates)."""
    bad = ~torch.isnan(values) & ((values < 0) | (values > 1))
    if bool(bad.any()):
        raise ValueError(f"{who} returned values outside [0, 1], e.g. {float(values[bad][0])}")
    return values


def finite_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  allow_nan: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) and allow_nan:
        return value
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return value


# -------------------------------------------------------------------------------------------- composite
class Composite(Monitor):
    """Weighted sum of monitors: r = sum_j w_j r_j.

    NaN propagates: a row that any (non-zero-weight) component cannot score gets NaN. A component of
    weight 0 is still scored and logged but does not enter the reward (e.g. an `Oracle` for measurement).
    `info` holds each component's info under "<name>/<key>" (names made unique with "#1", "#2", ...),
    its rewards under "<name>/rewards" and the weights under "weights".
    The composite is intrinsic when every component with a non-zero weight is.
    """

    def __init__(self, components: Sequence[tuple[float, Monitor]], *, name: str = "composite"):
        if isinstance(components, (str, bytes)) or not isinstance(components, Sequence) or not components:
            raise ValueError("components must be a non-empty list of (weight, monitor) pairs")
        checked, names = [], []
        for i, pair in enumerate(components):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"components[{i}] must be a (weight, monitor) pair, got {pair!r}")
            weight, monitor = pair
            weight = finite_number(f"components[{i}] weight", weight)
            if not isinstance(monitor, Monitor):
                raise TypeError(f"components[{i}] monitor must be a ttrl_fast.monitors.Monitor, "
                                f"got {type(monitor).__name__}")
            label, k = monitor.name, 1
            while label in names:
                label, k = f"{monitor.name}#{k}", k + 1
            names.append(label)
            checked.append((weight, monitor))
        self.components = checked
        self.labels = names
        self.name = name
        self.intrinsic = all(m.intrinsic for w, m in checked if w != 0)

    def prepare(self, prompts: list[Prompt]) -> None:
        for _, monitor in self.components:
            monitor.prepare(prompts)

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        total = torch.zeros(rows, dtype=torch.float32)
        info: dict = {"weights": {label: w for label, (w, _) in zip(self.labels, self.components)}}
        for label, (weight, monitor) in zip(self.labels, self.components):
            result = monitor.score(rollouts)
            rewards = as_rewards(result.rewards, rows, f"{label}.score")
            if weight != 0:
                total += weight * rewards
            info[f"{label}/rewards"] = rewards
            for key, value in result.info.items():
                info[f"{label}/{key}"] = value
        info["mean_reward"] = float(torch.nanmean(total)) if rows else float("nan")
        return RewardBatch(total, info)


# --------------------------------------------------------------------------------------------- serving
def served_index(rollouts: Rollouts, rewards: RewardBatch | Tensor) -> list[int]:
    """Per prompt, the row to serve online: the best reward of its group (best-of-G).

    Ties go to the lowest g; NaN rewards lose to any number; a group with only NaN serves its first row.
    Returns one global row index per prompt, in prompt order.
    """
    rows = check_rollouts(rollouts)
    values = rewards.rewards if isinstance(rewards, RewardBatch) else rewards
    values = as_rewards(values, rows, "rewards")
    chosen = []
    for b, members in enumerate(group_rows(rollouts)):
        if not members:
            raise ValueError(f"prompt {b} ({rollouts.prompts[b].id!r}) has no rollout rows")
        best = members[0]
        for row in members[1:]:
            value, current = float(values[row]), float(values[best])
            if not math.isnan(value) and (math.isnan(current) or value > current):
                best = row
        chosen.append(best)
    return chosen
