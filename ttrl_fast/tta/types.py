"""The data that flows through the self-monitoring cycle, free of text assumptions: an output may be a
string (text policies), a token grid (image-token policies) or anything a monitor's critic can read."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ttrl_fast.sampler.rollout import RolloutBatch


@dataclass
class Prompt:
    """One test prompt. `tokens` is filled by the policy from `text` when absent."""

    id: str
    text: str | None = None
    tokens: list[int] | None = None
    meta: dict = field(default_factory=dict)  # e.g. a static rubric, a label the loop never reads


@dataclass
class Rollouts:
    """G samples per prompt, prompt-major (row = b * G + g), with what the critic reads (`outputs`)."""

    prompts: list[Prompt]
    batch: RolloutBatch  # token ids, masks, old (sampling) log-probs
    outputs: list[Any]  # decoded output per row

    @property
    def group_size(self) -> int:
        return self.batch.group_size

    def __len__(self) -> int:
        return len(self.outputs)

    def prompt_of(self, row: int) -> Prompt:
        return self.prompts[int(self.batch.group_index[row])]


@dataclass
class RewardBatch:
    """One scalar reward per rollout row (float32 [N]; NaN = unscorable) plus diagnostics."""

    rewards: Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.rewards = torch.as_tensor(self.rewards, dtype=torch.float32).flatten()


@runtime_checkable
class Understander(Protocol):
    """The critic side of a model (meta level). May share weights with the policy ("live"), be its frozen
    initial weights ("frozen_init") or another model ("external")."""

    def yes_prob(self, items: Sequence[tuple[Any, str]]) -> Tensor:
        """[len(items)] P(yes) / (P(yes) + P(no)) of the next token after asking `question` about `output`."""

    def generate_text(self, prompts: Sequence[str], *, max_tokens: int = 64, temperature: float = 0.0) -> list[str]:
        """Free text (rubric writing, judge reasoning + score)."""

    def sequence_logprob(self, contexts: Sequence[Any], targets: Sequence[str]) -> Tensor:
        """[len(targets)] mean log P(target tokens | context) per item (caption likelihood)."""
