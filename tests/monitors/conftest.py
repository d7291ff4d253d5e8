"""Helpers for the monitor tests: a deterministic FakeCritic and Rollouts built from plain outputs."""
from __future__ import annotations

import torch

from ttrl_fast import RolloutBatch
from ttrl_fast.tta.types import Prompt, Rollouts


class FakeCritic:
    """An Understander whose answers come from tables; counts its calls.

    yes_prob: table[(output, question)], else table[question], else `default`.
    generate_text: texts[prompt] if present, else `default_text` (a str or a callable prompt -> str).
    sequence_logprob: logprobs[(context, target)], else `default_logprob`.
    """

    def __init__(self, table=None, *, default=0.5, texts=None, default_text="", logprobs=None,
                 default_logprob=-1.0):
        self.table, self.default = dict(table or {}), default
        self.texts, self.default_text = dict(texts or {}), default_text
        self.logprobs, self.default_logprob = dict(logprobs or {}), default_logprob
        self.calls = {"yes_prob": 0, "generate_text": 0, "sequence_logprob": 0}
        self.seen = {"yes_prob": [], "generate_text": [], "sequence_logprob": []}

    def yes_prob(self, items):
        self.calls["yes_prob"] += 1
        self.seen["yes_prob"].append(list(items))
        out = []
        for output, question in items:
            key = (output, question)
            out.append(self.table.get(key, self.table.get(question, self.default)) if _hashable(key)
                       else self.table.get(question, self.default))
        return torch.tensor(out, dtype=torch.float32)

    def generate_text(self, prompts, *, max_tokens=64, temperature=0.0):
        self.calls["generate_text"] += 1
        self.seen["generate_text"].append(list(prompts))
        result = []
        for p in prompts:
            if p in self.texts:
                result.append(self.texts[p])
            else:
                result.append(self.default_text(p) if callable(self.default_text) else self.default_text)
        return result

    def sequence_logprob(self, contexts, targets):
        self.calls["sequence_logprob"] += 1
        self.seen["sequence_logprob"].append((list(contexts), list(targets)))
        return torch.tensor([self.logprobs.get((c, t), self.default_logprob) for c, t in zip(contexts, targets)],
                            dtype=torch.float32)


def _hashable(value) -> bool:
    try:
        hash(value)
        return True
    except TypeError:
        return False


def make_rollouts(prompts, outputs, group_size=None) -> Rollouts:
    """Rollouts for `prompts` (Prompt or text) with `outputs` prompt-major; token tensors are dummies."""
    prompts = [p if isinstance(p, Prompt) else Prompt(id=f"p{i}", text=p) for i, p in enumerate(prompts)]
    group_size = group_size or len(outputs) // len(prompts)
    assert group_size * len(prompts) == len(outputs)
    rows = len(outputs)
    batch = RolloutBatch(
        prompt_ids=[[1] for _ in prompts],
        completion_ids=torch.zeros(rows, 1, dtype=torch.int64),
        completion_mask=torch.ones(rows, 1, dtype=torch.bool),
        logprobs=torch.zeros(rows, 1),
        processed_logprobs=None,
        log_kept_mass=None,
        finish_reason=["stop"] * rows,
        group_index=torch.arange(len(prompts)).repeat_interleave(group_size),
        prompt_lengths=torch.ones(rows, dtype=torch.int64),
        group_size=group_size,
    )
    return Rollouts(prompts=prompts, batch=batch, outputs=list(outputs))
