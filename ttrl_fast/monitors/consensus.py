"""`Consensus`: agreement among a prompt's G samples (TTRL majority vote, TTRV frequency - entropy)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Hashable

import torch

from ttrl_fast.monitors.base import Monitor, check_rollouts, finite_number, group_rows
from ttrl_fast.tta.types import RewardBatch, Rollouts

MODES = ("majority", "frequency")


class Consensus(Monitor):
    """Self-consistency reward over the G samples of each prompt.

    `extract(output) -> answer | None` maps an output to a hashable final answer (None = no answer could
    be extracted). In a group of G rows with extracted answers a_1..a_G, let count(a) be how many rows
    gave a, n the number of rows with an answer, M the number of distinct answers, and
    p(a) = count(a) / G (the share of the WHOLE group, unextractable rows included).

        mode="majority"  (TTRL):  r_i = 1[a_i == a*],  a* = the most common answer; ties -> the answer
                                  seen first (lowest g);
        mode="frequency" (TTRV):  r_i = p(a_i).
    Then, with entropy_alpha = alpha > 0, the TTRV diversity term:
        group (default):       r_i -= alpha * H,   H = -sum_m q_m log q_m over the distinct answers, with
                               q_m = count_m / n; divided by log M when entropy_norm (0 when M <= 1).
        per_sample_entropy:    r_i -= alpha * S_i, S_i = -log q(a_i) (the surprisal of the row's own
                               answer), divided by log M when entropy_norm (0 when M <= 1).

    The group term is CONSTANT within a group, so it cancels exactly in group-normalised advantages
    ((r - mean_g) / std_g, ttrl_fast.group_advantages mode "group" / "none" / "rloo"): as in the TTRV
    code, only the frequency term then moves the policy. The per-sample variant decomposes the same
    entropy sample by sample: the mean of S_i over the rows with an answer is exactly H, so its group
    mean equals the group term, but rare answers (those that raise the entropy) are penalised most, so
    it survives group normalisation. (It is monotone in q(a_i): it reshapes the frequency reward
    towards stronger pressure on rare answers.)

    Unextractable outputs (extract -> None) are not candidates for the vote; they get `none_reward`
    (default 0.0, as in TTRL: failing to answer is scored like disagreeing with the majority, so the
    policy is pushed away from it) and the group's entropy term (S_i := H in the per-sample variant).
    Pass none_reward=float("nan") to leave them unscored instead (group_advantages then gives them
    advantage 0 and ignores them in the group statistics). A group without any answer gets none_reward
    everywhere (and no entropy term).

    info: "majority_answer" (per prompt, None when no answer), "majority_ratio" (count(a*) / G),
    "unique_answers" (M), "entropy" (H, normalised when entropy_norm), "answers" (per row),
    "extract_rate" (fraction of rows with an answer), "mean_reward".
    """

    intrinsic = True

    def __init__(self, extract: Callable[[Any], Hashable | None], *, mode: str = "majority",
                 entropy_alpha: float = 0.0, entropy_norm: bool = True, per_sample_entropy: bool = False,
                 none_reward: float = 0.0, name: str = "consensus"):
        if not callable(extract):
            raise TypeError(f"Consensus: extract must be callable output -> answer | None, got {extract!r}")
        if mode not in MODES:
            raise ValueError(f"Consensus: mode must be one of {MODES}, got {mode!r}")
        self.entropy_alpha = finite_number("Consensus entropy_alpha", entropy_alpha)
        self.none_reward = finite_number("Consensus none_reward", none_reward, allow_nan=True)
        if not isinstance(entropy_norm, bool) or not isinstance(per_sample_entropy, bool):
            raise ValueError("Consensus: entropy_norm and per_sample_entropy must be bools")
        self.extract, self.mode, self.name = extract, mode, name
        self.entropy_norm, self.per_sample_entropy = entropy_norm, per_sample_entropy

    def _answer(self, output: Any, row: int) -> Hashable | None:
        answer = self.extract(output)
        try:
            hash(answer)
        except TypeError:
            raise TypeError(f"Consensus: extract returned an unhashable {type(answer).__name__} for row {row}; "
                            f"return a str / int / tuple or None") from None
        return answer

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        answers = [self._answer(out, row) for row, out in enumerate(rollouts.outputs)]
        rewards = torch.empty(rows, dtype=torch.float32)
        info = {"majority_answer": [], "majority_ratio": [], "unique_answers": [], "entropy": []}
        for members in group_rows(rollouts):
            group = [answers[r] for r in members]
            counts = Counter(a for a in group if a is not None)  # insertion order = first seen
            size, answered = len(group), sum(counts.values())
            if not counts:
                for r in members:
                    rewards[r] = self.none_reward
                info["majority_answer"].append(None)
                info["majority_ratio"].append(0.0)
                info["unique_answers"].append(0)
                info["entropy"].append(0.0)
                continue
            top = max(counts.values())
            majority = next(a for a, c in counts.items() if c == top)  # first seen among the tied
            q = {a: c / answered for a, c in counts.items()}
            entropy = -sum(v * math.log(v) for v in q.values())
            scale = 1.0
            if self.entropy_norm:
                scale = 1.0 / math.log(len(counts)) if len(counts) > 1 else 0.0
            for r, a in zip(members, group):
                if a is None:
                    base, penalty = self.none_reward, entropy
                else:
                    base = float(a == majority) if self.mode == "majority" else counts[a] / size
                    penalty = -math.log(q[a]) if self.per_sample_entropy else entropy
                rewards[r] = base - self.entropy_alpha * penalty * scale
            info["majority_answer"].append(majority)
            info["majority_ratio"].append(top / size)
            info["unique_answers"].append(len(counts))
            info["entropy"].append(entropy * scale if self.entropy_norm else entropy)
        info["majority_ratio"] = torch.tensor(info["majority_ratio"], dtype=torch.float32)
        info["unique_answers"] = torch.tensor(info["unique_answers"], dtype=torch.int64)
        info["entropy"] = torch.tensor(info["entropy"], dtype=torch.float32)
        info["answers"] = answers
        info["extract_rate"] = sum(a is not None for a in answers) / rows if rows else math.nan
        info["mean_reward"] = float(torch.nanmean(rewards)) if rows else math.nan
        return RewardBatch(rewards, info)
