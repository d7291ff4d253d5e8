"""JudgeScore parsing, PairwiseVsBaseline (hard / soft / debiased) and CaptionLikelihood."""
import math

import pytest
import torch

from ttrl_fast.monitors import CaptionLikelihood, JudgeScore, PairwiseVsBaseline, parse_score
from .conftest import FakeCritic, make_rollouts

SCORES = [
    ("Score: 7/10", 7.0),
    ("7.", 7.0),
    ("score=10", 10.0),
    ("The output is fine.\nScore: 8", 8.0),
    ("It shows 3 cats and 2 dogs. Score: 6", 6.0),  # the keyword wins over later / earlier counts
    ("Final rating: **9**", 9.0),
    ("I would give it 8 out of 10.", 8.0),
    ("8/10, not bad; there are 4 legs", 8.0),  # a fraction wins over a bare number
    ("3/5", 6.0),  # rescaled to 0-10
    ("7.5", 7.5),
    ("It has 3 cats and 4 dogs", 4.0),  # no keyword, no fraction: the last number in range
    ("In 2024 I rate it 6", 6.0),  # out-of-range numbers are skipped
    ("score: 0", 0.0),
    ("Score: 11", None),
    ("-3", None),
    ("no score here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", SCORES)
def test_parse_score_table(text, expected):
    assert parse_score(text) == expected


def test_judge_score_rewards_nan_and_one_call():
    texts = {"o1": "Good. Score: 7/10", "o2": "I can't tell.", "o3": "score=10"}
    critic = FakeCritic(default_text=lambda q: next(t for o, t in texts.items() if f"Output: {o}\n" in q))
    result = JudgeScore(critic).score(make_rollouts(["a cat"], ["o1", "o2", "o3"]))
    torch.testing.assert_close(result.rewards[[0, 2]], torch.tensor([0.7, 1.0]))
    assert math.isnan(result.rewards[1]) and result.info["parse_failures"] == 1
    assert critic.calls["generate_text"] == 1 and "Request: a cat" in critic.seen["generate_text"][0][0]
    with pytest.raises(TypeError, match="pass render="):
        JudgeScore(critic).score(make_rollouts(["a cat"], [[1, 2, 3]]))
    custom = JudgeScore(critic, render=lambda prompt, output: f"Output: o{sum(output)}\n")
    torch.testing.assert_close(custom.score(make_rollouts(["x"], [[1, 0], [3]])).rewards[[0, 1]],
                               torch.tensor([0.7, 1.0]))


def pair_critic(p_ab, p_ba=None):
    """yes_prob by rendered pair: A = rollout first (p_ab[rollout]) or the baseline first (p_ba[rollout])."""
    table = {}
    for out, p in p_ab.items():
        table[(f"A={out} B=base", "Is output A better than output B?")] = p
    for out, p in (p_ba or {}).items():
        table[(f"A=base B={out}", "Is output A better than output B?")] = p
    return FakeCritic(table, default=float("nan"))


def render(prompt, a, b):
    return f"A={a} B={b}"


def test_pairwise_hard_soft_debias_by_hand():
    p_ab = {"y0": 0.9, "y1": 0.5, "y2": 0.3}
    p_ba = {"y0": 0.3, "y1": 0.2, "y2": 0.9}
    baseline_calls = []

    def baseline(prompt):
        baseline_calls.append(prompt.id)
        return "base"

    ro = make_rollouts(["x"], ["y0", "y1", "y2"])
    critic = pair_critic(p_ab, p_ba)
    hard = PairwiseVsBaseline(critic, baseline, render=render)
    torch.testing.assert_close(hard.score(ro).rewards, torch.tensor([1.0, 0.0, 0.0]))  # 0.5 is not a win
    soft = PairwiseVsBaseline(critic, baseline, render=render, soft=True).score(ro)
    torch.testing.assert_close(soft.rewards, torch.tensor([0.9, 0.5, 0.3]))
    calls = critic.calls["yes_prob"]
    debiased = PairwiseVsBaseline(critic, baseline, render=render, soft=True, debias=True).score(ro)
    assert critic.calls["yes_prob"] == calls + 1 and len(critic.seen["yes_prob"][-1]) == 6  # one call, both orders
    prefer = [(0.9 + 0.7) / 2, (0.5 + 0.8) / 2, (0.3 + 0.1) / 2]
    torch.testing.assert_close(debiased.rewards, torch.tensor(prefer))
    assert debiased.info["position_bias"] == pytest.approx(((0.9 + 0.3 - 1) + (0.5 + 0.2 - 1) + (0.3 + 0.9 - 1)) / 3)
    hard_debiased = PairwiseVsBaseline(critic, baseline, render=render, debias=True).score(ro)
    torch.testing.assert_close(hard_debiased.rewards, torch.tensor([1.0, 1.0, 0.0]))
    assert hard_debiased.info["win_rate"] == pytest.approx(2 / 3)
    hard.score(ro)
    assert baseline_calls == ["p0"] * 4  # cached per prompt id within each monitor


def test_pairwise_nan_default_template_and_validation():
    critic = FakeCritic(default=float("nan"))
    result = PairwiseVsBaseline(critic, lambda p: "base").score(make_rollouts(["x"], ["y0", "y1"]))
    assert torch.isnan(result.rewards).all()
    rendered = critic.seen["yes_prob"][0][0][0]
    assert rendered == "Request: x\nOutput A: y0\nOutput B: base"
    with pytest.raises(ValueError, match=r"\{a\} and \{b\}"):
        PairwiseVsBaseline(critic, lambda p: "b", template="{prompt}")
    with pytest.raises(TypeError, match="baseline must be callable"):
        PairwiseVsBaseline(critic, "base")


def test_caption_likelihood_is_the_geometric_mean_token_likelihood():
    critic = FakeCritic(logprobs={("o1\nPrompt:", " a cat"): -0.5, ("o2\nPrompt:", " a cat"): -2.0})
    result = CaptionLikelihood(critic).score(make_rollouts(["a cat"], ["o1", "o2"]))
    torch.testing.assert_close(result.rewards, torch.tensor([math.exp(-0.5), math.exp(-2.0)]))
    assert critic.calls["sequence_logprob"] == 1
    images = CaptionLikelihood(critic, render=lambda o: o, target=lambda p: p.text)
    images.score(make_rollouts(["a cat"], [torch.zeros(2, 2)]))
    assert critic.seen["sequence_logprob"][-1][1] == ["a cat"]
    with pytest.raises(ValueError, match="> 0"):
        CaptionLikelihood(FakeCritic(default_logprob=0.5)).score(make_rollouts(["a cat"], ["o"]))
