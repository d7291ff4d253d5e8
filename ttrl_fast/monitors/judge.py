"""Critic-as-judge rewards: a 0-10 score (UniCorn), a pairwise preference over a baseline output (SEER)
and the likelihood of the prompt given the output (GvU caption likelihood)."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch

from ttrl_fast.monitors.base import Monitor, as_rewards, check_probabilities, check_rollouts
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts, Understander


def _text_render(template: str, who: str) -> Callable[..., str]:
    def render(prompt: Prompt, *outputs: Any) -> str:
        for output in outputs:
            if not isinstance(output, str):
                raise TypeError(f"{who}: the default rendering needs text outputs, got {type(output).__name__}; "
                                f"pass render= to build what the critic reads")
        fields = {"prompt": prompt.text if prompt.text is not None else ""}
        if len(outputs) == 1:
            fields["output"] = outputs[0]
        else:
            fields["a"], fields["b"] = outputs
        return template.format(**fields)

    return render


# ----------------------------------------------------------------------------------------------- scores
_NUMBER = r"(?<![\w.\-])(\d{1,3}(?:\.\d+)?)(?![\d])"
_KEYWORD = re.compile(r"(?:score|rating|grade)\s*(?:is|of|was|=|:|-)?\s*[*`\"']*\s*" + _NUMBER
                      + r"(?:\s*(?:/|out\s+of)\s*(\d{1,3}))?", re.IGNORECASE)
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*(\d{1,3})(?!\d)", re.IGNORECASE)
_PLAIN = re.compile(_NUMBER)


def parse_score(text: str, *, max_score: float = 10.0) -> float | None:
    """The judge's score in [0, max_score] from free text, or None.

    Preference (the last match of the first kind found wins): a number after a score keyword
    ("Score: 7", "rating=10", "final score is 8/10"); a fraction "7/10" / "7 out of 10" (rescaled to
    max_score when the denominator differs); else the last number in [0, max_score]. Numbers outside the
    range (years, counts > max_score) are skipped; a match whose value is out of range is skipped too.
    """
    if not isinstance(text, str):
        return None

    def value(number: str, denominator: str | None) -> float | None:
        v = float(number)
        if denominator is not None:
            d = float(denominator)
            if d <= 0:
                return None
            v = v * max_score / d
        return v if 0 <= v <= max_score else None

    for pattern, has_denominator in ((_KEYWORD, True), (_FRACTION, True)):
        found = [value(m.group(1), m.group(2) if has_denominator else None) for m in pattern.finditer(text)]
        found = [v for v in found if v is not None]
        if found:
            return found[-1]
    plain = [v for v in (value(m.group(1), None) for m in _PLAIN.finditer(text)) if v is not None]
    return plain[-1] if plain else None


class JudgeScore(Monitor):
    """UniCorn-style judge: the critic writes a rationale and a 0-10 score; r = score / 10.

    The critic's text goes through `parse_score` (a score keyword, an "N/10" fraction, else the last
    number in 0..10). An unparseable answer gives NaN: a judge failure says nothing about the output, so
    the row is left out of the group statistics (group_advantages: advantage 0) instead of being scored
    as a 0. `render(prompt, output)` builds what generate_text reads (default: `template` with {prompt}
    and {output}, text outputs only). All rows go to the critic in ONE generate_text call.
    info: "scores" (raw 0-10, NaN if unparsed), "texts", "parse_failures", "mean_reward".
    """

    TEMPLATE = ("Rate how well the output follows the request, from 0 (not at all) to 10 (perfectly). "
                "Give a short reason, then end with `Score: N`.\nRequest: {prompt}\nOutput: {output}\n")

    def __init__(self, critic: Understander, *, template: str = TEMPLATE,
                 render: Callable[[Prompt, Any], Any] | None = None, max_tokens: int = 64,
                 temperature: float = 0.0, name: str = "judge"):
        if not callable(getattr(critic, "generate_text", None)):
            raise TypeError("JudgeScore: critic must implement generate_text (the Understander protocol)")
        if render is None:
            if not isinstance(template, str) or "{output}" not in template:
                raise ValueError(f"JudgeScore: template must be a string with an {{output}} placeholder, "
                                 f"got {template!r}")
            render = _text_render(template, "JudgeScore")
        self.critic, self.render, self.name = critic, render, name
        self.max_tokens, self.temperature = max_tokens, temperature

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        queries = [self.render(rollouts.prompt_of(r), rollouts.outputs[r]) for r in range(rows)]
        texts = list(self.critic.generate_text(queries, max_tokens=self.max_tokens, temperature=self.temperature)) \
            if rows else []
        if len(texts) != rows:
            raise ValueError(f"critic.generate_text returned {len(texts)} texts for {rows} queries")
        parsed = [parse_score(t) for t in texts]
        scores = torch.tensor([math.nan if s is None else s for s in parsed], dtype=torch.float32)
        rewards = scores / 10.0
        info = {"scores": scores, "texts": texts, "parse_failures": sum(s is None for s in parsed),
                "mean_reward": float(torch.nanmean(rewards)) if rows else math.nan}
        return RewardBatch(rewards, info)


# --------------------------------------------------------------------------------------------- pairwise
class PairwiseVsBaseline(Monitor):
    """SEER-style pairwise reward against a baseline output per prompt.

    p_i = critic.yes_prob([(render(prompt, A=y_i, B=baseline), question)]); with debias=True the swapped
    order is asked too and p_i = (p(A=y_i, B=base) + 1 - p(A=base, B=y_i)) / 2, cancelling a constant
    position bias. r_i = 1[p_i > 0.5] (soft=False, SEER; a tie is not a win) or p_i (soft=True); NaN p ->
    NaN. `baseline(prompt)` (e.g. the naive generation) is computed once per prompt id and cached unless
    cache_baseline=False. All comparisons of a step go in ONE yes_prob call.
    info: "p_prefer" [N], "win_rate", "position_bias" (debias only: mean of p_ab + p_ba - 1, 0 when the
    critic is order-consistent).
    """

    TEMPLATE = "Request: {prompt}\nOutput A: {a}\nOutput B: {b}"
    QUESTION = "Is output A better than output B?"

    def __init__(self, critic: Understander, baseline: Callable[[Prompt], Any], *, template: str = TEMPLATE,
                 question: str = QUESTION, render: Callable[[Prompt, Any, Any], Any] | None = None,
                 debias: bool = False, soft: bool = False, cache_baseline: bool = True, name: str = "pairwise"):
        if not callable(getattr(critic, "yes_prob", None)):
            raise TypeError("PairwiseVsBaseline: critic must implement yes_prob (the Understander protocol)")
        if not callable(baseline):
            raise TypeError(f"PairwiseVsBaseline: baseline must be callable prompt -> output, got {baseline!r}")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"PairwiseVsBaseline: question must be a non-empty string, got {question!r}")
        if render is None:
            if not isinstance(template, str) or "{a}" not in template or "{b}" not in template:
                raise ValueError(f"PairwiseVsBaseline: template must contain {{a}} and {{b}}, got {template!r}")
            render = _text_render(template, "PairwiseVsBaseline")
        self.critic, self.baseline, self.question, self.render = critic, baseline, question, render
        self.debias, self.soft, self.cache_baseline, self.name = bool(debias), bool(soft), bool(cache_baseline), name
        self.baselines: dict[str, Any] = {}

    def prepare(self, prompts: list[Prompt]) -> None:
        for p in prompts:
            self._baseline(p)

    def _baseline(self, prompt: Prompt) -> Any:
        if self.cache_baseline and prompt.id in self.baselines:
            return self.baselines[prompt.id]
        output = self.baseline(prompt)
        if self.cache_baseline:
            self.baselines[prompt.id] = output
        return output

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        base = [self._baseline(p) for p in rollouts.prompts]  # one per prompt (cached per id unless asked not to)
        index = rollouts.batch.group_index.tolist()
        items = [(self.render(rollouts.prompts[b], rollouts.outputs[r], base[b]), self.question)
                 for r, b in enumerate(index)]
        if self.debias:
            items += [(self.render(rollouts.prompts[b], base[b], rollouts.outputs[r]), self.question)
                      for r, b in enumerate(index)]
        if items:
            p = check_probabilities(as_rewards(self.critic.yes_prob(items), len(items), "critic.yes_prob"),
                                    "critic.yes_prob")
        else:
            p = torch.zeros(0)
        info: dict = {}
        if self.debias:
            p_ab, p_ba = p[:rows], p[rows:]
            prefer = (p_ab + (1 - p_ba)) / 2
            info["position_bias"] = float(torch.nanmean(p_ab + p_ba - 1)) if rows else math.nan
        else:
            prefer = p
        if self.soft:
            rewards = prefer.clone()
        else:
            rewards = torch.where(torch.isnan(prefer), prefer, (prefer > 0.5).float())
        info["p_prefer"] = prefer
        info["win_rate"] = float(torch.nanmean((prefer > 0.5).float()[~torch.isnan(prefer)])) \
            if bool((~torch.isnan(prefer)).any()) else math.nan
        info["mean_reward"] = float(torch.nanmean(rewards)) if rows else math.nan
        return RewardBatch(rewards, info)


# ------------------------------------------------------------------------------------ caption likelihood
class CaptionLikelihood(Monitor):
    """GvU intrinsic reward: how well the output explains its prompt.

    r_i = exp(critic.sequence_logprob([render(y_i)], [target(prompt)])), the per-token geometric-mean
    likelihood of the prompt text given the output, in (0, 1]. Default render: text outputs as
    "{output}\\nPrompt:" and target " {prompt.text}" (a critic reading images takes render=identity).
    All rows in ONE sequence_logprob call. info: "mean_logprob" [N], "mean_reward".
    """

    def __init__(self, critic: Understander, *, render: Callable[[Any], Any] | None = None,
                 target: Callable[[Prompt], str] | None = None, name: str = "caption_likelihood"):
        if not callable(getattr(critic, "sequence_logprob", None)):
            raise TypeError("CaptionLikelihood: critic must implement sequence_logprob (the Understander protocol)")
        self.critic, self.name = critic, name
        self.render = render if render is not None else self._default_render
        self.target = target if target is not None else self._default_target

    @staticmethod
    def _default_render(output: Any) -> str:
        if not isinstance(output, str):
            raise TypeError(f"CaptionLikelihood: the default rendering needs text outputs, got "
                            f"{type(output).__name__}; pass render=")
        return f"{output}\nPrompt:"

    @staticmethod
    def _default_target(prompt: Prompt) -> str:
        if not isinstance(prompt.text, str) or not prompt.text.strip():
            raise ValueError(f"CaptionLikelihood needs prompt text; prompt {prompt.id!r} has text={prompt.text!r}")
        return " " + prompt.text.strip()

    def score(self, rollouts: Rollouts) -> RewardBatch:
        rows = check_rollouts(rollouts)
        contexts = [self.render(o) for o in rollouts.outputs]
        targets = [self.target(rollouts.prompt_of(r)) for r in range(rows)]
        if rows:
            logp = as_rewards(self.critic.sequence_logprob(contexts, targets), rows, "critic.sequence_logprob")
        else:
            logp = torch.zeros(0)
        bad = ~torch.isnan(logp) & (logp > 1e-4)
        if bool(bad.any()):
            raise ValueError(f"critic.sequence_logprob returned a mean log-probability > 0 ({float(logp[bad][0])})")
        rewards = logp.clamp(max=0).exp()
        info = {"mean_logprob": logp, "mean_reward": float(torch.nanmean(rewards)) if rows else math.nan}
        return RewardBatch(rewards, info)
