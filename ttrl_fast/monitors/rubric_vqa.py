"""`RubricVQA`: the critic answers each rubric question about each output (Meta-TTRL Eq. 5-6)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ttrl_fast.monitors.base import Monitor, as_rewards, check_probabilities, check_rollouts, finite_number
from ttrl_fast.monitors.rubric import RubricBuilder, RubricItem, TemplateRubric, topological_order, validate_rubric
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts, Understander

AGGREGATIONS = ("geomean", "mean", "dsg")


class RubricVQA(Monitor):
    """Rubric VQA reward.

    Item score (Eq. 5, target-aware): s_k(y) = P(target_k | q_k, y) renormalised over {yes, no}
        = critic.yes_prob([(y, q_k)])  for target "yes",   1 - yes_prob  for target "no".
    Aggregation over the K items of the prompt's rubric:
        "geomean" (Eq. 6, Meta-TTRL): r = exp(1/K sum_k log max(s_k, floor));
        "mean"    (TIFA-style):       r = 1/K sum_k s_k;
        "dsg"     (DSG):              an item counts 0 when one of its parents scores < dsg_threshold
                                      (parents' scores after this rule, so a failure propagates down the
                                      dependency chain), then the mean.
    Every (output, question) pair of a step goes to the critic in ONE yes_prob call. A NaN item score
    (the critic could not score) makes the row's reward NaN.

    info: "item_scores" [N, K_max] (target-aware s, NaN-padded where a prompt has fewer items),
    "questions" (per prompt), "rubric_size" (per prompt), "mean_reward".
    """

    def __init__(self, critic: Understander, builder: RubricBuilder | None = None, *, agg: str = "geomean",
                 floor: float = 1e-6, dsg_threshold: float = 0.5, name: str = "rubric_vqa"):
        if not callable(getattr(critic, "yes_prob", None)):
            raise TypeError("RubricVQA: critic must implement yes_prob (the Understander protocol)")
        if builder is None:
            builder = TemplateRubric()
        if not isinstance(builder, RubricBuilder):
            raise TypeError(f"RubricVQA: builder must be a RubricBuilder, got {type(builder).__name__}")
        if agg not in AGGREGATIONS:
            raise ValueError(f"RubricVQA: agg must be one of {AGGREGATIONS}, got {agg!r}")
        self.floor = finite_number("RubricVQA floor", floor, low=0.0, high=1.0)
        if agg == "geomean" and self.floor <= 0:
            raise ValueError("RubricVQA: floor must be > 0 for agg='geomean' (log of 0)")
        self.dsg_threshold = finite_number("RubricVQA dsg_threshold", dsg_threshold, low=0.0, high=1.0)
        self.critic, self.builder, self.agg, self.name = critic, builder, agg, name

    def prepare(self, prompts: list[Prompt]) -> None:
        self._rubrics(prompts)

    def _rubrics(self, prompts: list[Prompt]) -> list[list[RubricItem]]:
        rubrics = self.builder.build_many(prompts)
        if len(rubrics) != len(prompts):
            raise ValueError(f"the rubric builder returned {len(rubrics)} rubrics for {len(prompts)} prompts")
        return [validate_rubric(r, where=f"rubric of prompt {p.id!r}") for p, r in zip(prompts, rubrics)]

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        rubrics = self._rubrics(rollouts.prompts)
        index = rollouts.batch.group_index.tolist()
        pairs, owner = [], []
        for row, b in enumerate(index):
            for item in rubrics[b]:
                pairs.append((rollouts.outputs[row], item.question))
                owner.append(row)
        if pairs:
            p_yes = check_probabilities(as_rewards(self.critic.yes_prob(pairs), len(pairs), "critic.yes_prob"),
                                        "critic.yes_prob")
        else:
            p_yes = torch.zeros(0)
        width = max((len(r) for r in rubrics), default=0)
        scores = torch.full((rows, width), math.nan, dtype=torch.float32)
        rewards = torch.empty(rows, dtype=torch.float32)
        start = 0
        for row, b in enumerate(index):
            rubric = rubrics[b]
            p = p_yes[start:start + len(rubric)]
            start += len(rubric)
            is_no = torch.tensor([item.target == "no" for item in rubric])
            s = torch.where(is_no, 1 - p, p)
            scores[row, :len(rubric)] = s
            rewards[row] = self._aggregate(s, rubric)
        info = {
            "item_scores": scores,
            "questions": [[item.question for item in r] for r in rubrics],
            "rubric_size": [len(r) for r in rubrics],
            "mean_reward": float(torch.nanmean(rewards)) if rows else math.nan,
        }
        return RewardBatch(rewards, info)

    def _aggregate(self, s: Tensor, rubric: list[RubricItem]) -> Tensor:
        if self.agg == "geomean":
            return s.clamp(min=self.floor).log().mean().exp()
        if self.agg == "mean":
            return s.mean()
        effective = s.clone()
        for k in topological_order(rubric):
            parents = rubric[k].parents
            if parents and bool((effective[list(parents)] < self.dsg_threshold).any()):
                effective[k] = 0.0
        return effective.mean()
