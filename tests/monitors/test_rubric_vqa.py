"""RubricVQA math against hand computations with a table-driven critic."""
import math

import pytest
import torch

from ttrl_fast.monitors import RubricItem, RubricVQA, SelfRubric, StaticRubric
from ttrl_fast.tta.types import Prompt

from .conftest import FakeCritic, make_rollouts

RUBRIC = [
    {"dim": "object", "question": "Is there a cat?"},                            # 0
    {"dim": "attribute", "question": "Is the cat black?", "parents": [0]},       # 1
    {"dim": "count", "question": "Are there two cats?", "target": "no"},          # 2
]
P = {  # yes-probabilities per (output, question)
    ("img0", "Is there a cat?"): 0.9, ("img0", "Is the cat black?"): 0.8, ("img0", "Are there two cats?"): 0.3,
    ("img1", "Is there a cat?"): 0.4, ("img1", "Is the cat black?"): 0.9, ("img1", "Are there two cats?"): 0.0,
}


def setup(agg, **kwargs):
    critic = FakeCritic(P)
    monitor = RubricVQA(critic, StaticRubric(), agg=agg, **kwargs)
    ro = make_rollouts([Prompt("p", "a black cat", meta={"rubric": RUBRIC})], ["img0", "img1"])
    return critic, monitor, ro


def test_geomean_by_hand_with_target_no_and_one_call():
    critic, monitor, ro = setup("geomean")
    result = monitor.score(ro)
    s0, s1 = [0.9, 0.8, 0.7], [0.4, 0.9, 1.0]  # target "no": 1 - P(yes)
    expected = [math.exp(sum(map(math.log, s)) / 3) for s in (s0, s1)]
    torch.testing.assert_close(result.rewards, torch.tensor(expected))
    torch.testing.assert_close(result.info["item_scores"], torch.tensor([s0, s1]))
    assert critic.calls["yes_prob"] == 1 and len(critic.seen["yes_prob"][0]) == 6
    assert result.info["questions"] == [[r["question"] for r in RUBRIC]] and result.info["rubric_size"] == [3]
    assert result.info["mean_reward"] == pytest.approx(sum(expected) / 2)


def test_mean_and_dsg_by_hand():
    _, monitor, ro = setup("mean")
    torch.testing.assert_close(monitor.score(ro).rewards, torch.tensor([(0.9 + 0.8 + 0.7) / 3, (0.4 + 0.9 + 1.0) / 3]))
    _, monitor, ro = setup("dsg")
    # img1: the parent "Is there a cat?" scores 0.4 < 0.5, so its child "black?" counts 0
    expected = [(0.9 + 0.8 + 0.7) / 3, (0.4 + 0.0 + 1.0) / 3]
    torch.testing.assert_close(monitor.score(ro).rewards, torch.tensor(expected))


def test_dsg_failure_propagates_down_a_chain():
    rubric = [RubricItem("object", "Is there a cat?"), RubricItem("attribute", "Is the cat black?", parents=(0,)),
              RubricItem("attribute", "Is its collar red?", parents=(1,))]
    critic = FakeCritic({"Is there a cat?": 0.2, "Is the cat black?": 0.9, "Is its collar red?": 0.9})
    ro = make_rollouts([Prompt("p", "x", meta={"rubric": rubric})], ["o"])
    assert float(RubricVQA(critic, StaticRubric(), agg="dsg").score(ro).rewards[0]) == pytest.approx(0.2 / 3)


def test_geomean_floor_and_nan():
    critic = FakeCritic({("a", "Is there a cat?"): 0.0, ("b", "Is there a cat?"): float("nan")}, default=1.0)
    rubric = [RubricItem("object", "Is there a cat?"), RubricItem("object", "Is there a dog?")]
    ro = make_rollouts([Prompt("p", "x", meta={"rubric": rubric})], ["a", "b"])
    rewards = RubricVQA(critic, StaticRubric(), floor=1e-4).score(ro).rewards
    assert float(rewards[0]) == pytest.approx(math.sqrt(1e-4))
    assert math.isnan(rewards[1])


def test_ragged_rubrics_one_call_nan_padded_matrix():
    prompts = [Prompt("a", "x", meta={"rubric": ["object | Is there a cat? | yes"]}),
               Prompt("b", "y", meta={"rubric": ["object | Is there a dog? | yes", "count | Are there two dogs? | no"]})]
    critic = FakeCritic({"Is there a cat?": 0.6, "Is there a dog?": 0.5, "Are there two dogs?": 0.25})
    result = RubricVQA(critic, StaticRubric(), agg="mean").score(make_rollouts(prompts, ["o1", "o2", "o3", "o4"]))
    assert critic.calls["yes_prob"] == 1 and len(critic.seen["yes_prob"][0]) == 2 * 1 + 2 * 2
    torch.testing.assert_close(result.rewards, torch.tensor([0.6, 0.6, 0.625, 0.625]))
    scores = result.info["item_scores"]
    assert scores.shape == (4, 2) and torch.isnan(scores[:2, 1]).all() and not torch.isnan(scores[2:]).any()


def test_self_rubric_end_to_end_prepare_then_score():
    critic = FakeCritic({"Is there a cat?": 0.8, "Is it red?": 0.1},
                        default_text="1. object | Is there a cat? | yes\n2. attribute | Is it red? | no")
    monitor = RubricVQA(critic, SelfRubric(critic))
    prompts = [Prompt("p", "a cat that is not red")]
    monitor.prepare(prompts)
    result = monitor.score(make_rollouts(prompts, ["x", "y"]))
    assert critic.calls["generate_text"] == 1  # the rubric was written once, in prepare
    torch.testing.assert_close(result.rewards, torch.full((2,), math.sqrt(0.8 * 0.9)))


def test_validation():
    critic = FakeCritic()
    with pytest.raises(ValueError, match="agg must be one of"):
        RubricVQA(critic, agg="max")
    with pytest.raises(ValueError, match="floor must be > 0"):
        RubricVQA(critic, floor=0.0)
    with pytest.raises(TypeError, match="yes_prob"):
        RubricVQA(object())
    with pytest.raises(TypeError, match="RubricBuilder"):
        RubricVQA(critic, builder=[RubricItem("object", "Is there a cat?")])
    ro = make_rollouts([Prompt("p", "x", meta={"rubric": []})], ["o"])
    with pytest.raises(ValueError, match="empty"):
        RubricVQA(critic, StaticRubric()).score(ro)
    bad = FakeCritic(default=1.5)
    ro = make_rollouts([Prompt("p", "x", meta={"rubric": ["Is there a cat?"]})], ["o"])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        RubricVQA(bad, StaticRubric()).score(ro)
