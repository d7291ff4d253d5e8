"""Composite weights / NaN / naming, served_index, controls and External."""
import math

import pytest
import torch

from ttrl_fast.monitors import Composite, Constant, External, Monitor, Oracle, RandomReward, served_index
from ttrl_fast.tta.types import RewardBatch

from .conftest import make_rollouts

NAN = float("nan")


class Fixed(Monitor):
    """Returns given rewards; counts prepare calls."""

    def __init__(self, values, name="fixed", intrinsic=True):
        self.values, self.name, self.intrinsic, self.prepared = values, name, intrinsic, 0

    def prepare(self, prompts):
        self.prepared += 1

    def score(self, rollouts):
        return RewardBatch(torch.tensor(self.values), {"tag": self.name})


def rollouts4():
    return make_rollouts(["a", "b"], ["x0", "x1", "y0", "y1"])


def test_composite_weighted_sum_and_info():
    a, b = Fixed([1.0, 0.0, 0.5, 0.25], "a"), Fixed([0.0, 1.0, 1.0, 1.0], "b")
    comp = Composite([(2.0, a), (-0.5, b)])
    result = comp.score(rollouts4())
    torch.testing.assert_close(result.rewards, torch.tensor([2.0, -0.5, 0.5, 0.0]))
    assert result.rewards.dtype == torch.float32
    assert result.info["a/tag"] == "a" and result.info["b/tag"] == "b"
    torch.testing.assert_close(result.info["b/rewards"], torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert result.info["weights"] == {"a": 2.0, "b": -0.5}
    comp.prepare([])
    assert a.prepared == b.prepared == 1


def test_composite_nan_propagates_and_zero_weight_only_logs():
    a = Fixed([1.0, NAN, 0.5, 0.5], "a")
    oracle = Fixed([NAN, NAN, 1.0, 0.0], "oracle", intrinsic=False)
    result = Composite([(1.0, a), (0.0, oracle)]).score(rollouts4())
    assert math.isnan(result.rewards[1]) and not math.isnan(result.rewards[0])
    torch.testing.assert_close(result.rewards[[0, 2, 3]], torch.tensor([1.0, 0.5, 0.5]))
    assert math.isnan(result.info["oracle/rewards"][0])
    assert Composite([(1.0, a), (0.0, oracle)]).intrinsic
    assert not Composite([(1.0, a), (0.5, oracle)]).intrinsic


def test_composite_names_are_made_unique():
    comp = Composite([(1.0, Fixed([0.0] * 4, "m")), (1.0, Fixed([1.0] * 4, "m"))])
    info = comp.score(rollouts4()).info
    assert "m/rewards" in info and "m#1/rewards" in info


@pytest.mark.parametrize("components,match", [
    ([], "non-empty"),
    ([(float("inf"), Constant(1.0))], "finite"),
    ([(float("nan"), Constant(1.0))], "finite"),
    ([("1", Constant(1.0))], "real number"),
    ([(1.0, "not a monitor")], "Monitor"),
    ([(1.0,)], "pair"),
])
def test_composite_validation(components, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Composite(components)


def test_composite_rejects_wrong_length():
    with pytest.raises(ValueError, match="returned 3 values for 4"):
        Composite([(1.0, Fixed([1.0, 2.0, 3.0]))]).score(rollouts4())


def test_served_index_best_of_group_ties_lowest_nan_loses():
    ro = make_rollouts(["a", "b", "c"], list("abcdefghi"), 3)
    rewards = torch.tensor([0.2, 0.9, 0.9, NAN, 0.1, NAN, NAN, NAN, NAN])
    assert served_index(ro, rewards) == [1, 4, 6]
    assert served_index(ro, RewardBatch(rewards)) == [1, 4, 6]
    assert served_index(ro, torch.zeros(9)) == [0, 3, 6]


def test_rollout_shape_mismatch_is_an_error():
    ro = rollouts4()
    ro.outputs.pop()
    with pytest.raises(ValueError, match="3 outputs but its batch has 4 rows"):
        Constant(0.0).score(ro)


def test_controls_and_intrinsic_flags():
    ro = make_rollouts(["2+2", "3+3"], ["4", "5", "6", None])
    truth = {"2+2": "4", "3+3": "6"}
    oracle = Oracle(lambda p, out: None if out is None else out == truth[p.text])
    torch.testing.assert_close(oracle.score(ro).rewards[:3], torch.tensor([1.0, 0.0, 1.0]))
    assert math.isnan(oracle.score(ro).rewards[3])
    assert not oracle.intrinsic and not RandomReward(0).intrinsic and not Constant(1.0).intrinsic
    with pytest.raises(TypeError, match="checker returned str"):
        Oracle(lambda p, out: "yes").score(ro)

    r1, r2 = RandomReward(7), RandomReward(7)
    first = r1.score(ro).rewards
    torch.testing.assert_close(first, r2.score(ro).rewards)
    assert ((first >= 0) & (first < 1)).all() and first.dtype == torch.float32
    assert not torch.equal(first, r1.score(ro).rewards)  # a new draw every step
    scaled = RandomReward(1, low=-1.0, high=-0.5).score(ro).rewards
    assert ((scaled >= -1) & (scaled < -0.5)).all()
    with pytest.raises(ValueError, match="low < high"):
        RandomReward(0, low=1.0, high=1.0)

    torch.testing.assert_close(Constant(0.3).score(ro).rewards, torch.full((4,), 0.3))
    with pytest.raises(ValueError, match="Constant value must be finite"):
        Constant(float("inf"))


def test_external_marks_the_critic_and_keeps_scores():
    inner = Fixed([0.1, 0.2, 0.3, 0.4], "rubric_vqa")
    ext = External(inner)
    result = ext.score(rollouts4())
    torch.testing.assert_close(result.rewards, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert result.info["critic"] == "external" and result.info["tag"] == "rubric_vqa"
    assert inner.intrinsic and not ext.intrinsic and ext.name == "rubric_vqa"
    ext.prepare([])
    assert inner.prepared == 1
    with pytest.raises(TypeError, match="Monitor"):
        External(lambda r: r)
