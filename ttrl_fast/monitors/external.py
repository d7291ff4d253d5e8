"""`External`: a monitor whose critic is another model (Meta-TTRL's E-TTRL ablation, GIT-VQA monitor)."""
from __future__ import annotations

from ttrl_fast.monitors.base import Monitor
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts


class External(Monitor):
    """Marks `monitor` as backed by a different model than the policy: same scores, intrinsic = False,
    info["critic"] = "external". Build the inner monitor with the external critic, e.g.
    External(RubricVQA(HFTextUnderstander(other_model, other_tokenizer), SelfRubric(...)))."""

    intrinsic = False

    def __init__(self, monitor: Monitor, *, name: str | None = None):
        if not isinstance(monitor, Monitor):
            raise TypeError(f"External: monitor must be a ttrl_fast.monitors.Monitor, got {type(monitor).__name__}")
        self.monitor = monitor
        self.name = name if name is not None else monitor.name

    def prepare(self, prompts: list[Prompt]) -> None:
        self.monitor.prepare(prompts)

    def score(self, rollouts: Rollouts) -> RewardBatch:
        result = self.monitor.score(rollouts)
        return RewardBatch(result.rewards, {**result.info, "critic": "external"})
