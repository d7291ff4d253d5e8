"""Consensus (TTRL majority, TTRV frequency - entropy) by hand, and the group-normalisation claim."""
import math

import pytest
import torch

import ttrl_fast
from ttrl_fast.monitors import Consensus

from .conftest import make_rollouts


def answer_of(output):
    return output.split("=")[-1].strip() or None if "=" in output else None


def ro(*groups):
    outs = [o for g in groups for o in g]
    return make_rollouts([f"q{i}" for i in range(len(groups))], outs)


G1 = ["x=4", "x=4", "x=5", "x=4", "x=6", "x=5"]      # 4:3, 5:2, 6:1
G2 = ["x=7", "x=8", "x=8", "x=7", "no answer", "x="]  # tie 7/8 (7 first), two unextractable


def test_majority_by_hand_ties_first_seen_and_none_is_zero():
    result = Consensus(answer_of).score(ro(G1, G2))
    torch.testing.assert_close(result.rewards, torch.tensor([1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0.0]))
    assert result.info["majority_answer"] == ["4", "7"]
    torch.testing.assert_close(result.info["majority_ratio"], torch.tensor([3 / 6, 2 / 6]))
    assert result.info["unique_answers"].tolist() == [3, 2]
    assert result.info["extract_rate"] == pytest.approx(10 / 12)
    assert result.info["answers"][4] == "6" and result.info["answers"][10] is None


def test_frequency_and_normalised_entropy_by_hand():
    alpha = 0.75
    result = Consensus(answer_of, mode="frequency", entropy_alpha=alpha).score(ro(G1, G2))
    q1 = [3 / 6, 2 / 6, 1 / 6]
    h1 = -sum(q * math.log(q) for q in q1) / math.log(3)
    h2 = math.log(2) / math.log(2)  # two answers, 2 each among the 4 answered rows: normalised entropy 1
    p1 = {"4": 3 / 6, "5": 2 / 6, "6": 1 / 6}
    expected = [p1[answer_of(o)] - alpha * h1 for o in G1] + [2 / 6 - alpha * h2] * 4 + [0 - alpha * h2] * 2
    torch.testing.assert_close(result.rewards, torch.tensor(expected))
    torch.testing.assert_close(result.info["entropy"], torch.tensor([h1, h2]))
    raw = Consensus(answer_of, mode="frequency", entropy_alpha=alpha, entropy_norm=False).score(ro(G1))
    torch.testing.assert_close(raw.rewards[0], torch.tensor(3 / 6 + alpha * sum(q * math.log(q) for q in q1)))


def test_unanimous_group_has_zero_entropy_and_empty_group_gets_none_reward():
    result = Consensus(answer_of, mode="frequency", entropy_alpha=1.0).score(ro(["=1"] * 3, ["?", "!", "."]))
    torch.testing.assert_close(result.rewards, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    assert result.info["majority_answer"] == ["1", None]
    nan = Consensus(answer_of, none_reward=float("nan")).score(ro(G2))
    assert torch.isnan(nan.rewards[4:]).all() and not torch.isnan(nan.rewards[:4]).any()


def test_group_entropy_term_cancels_in_group_advantages_per_sample_does_not():
    rollouts = ro(G1, ["x=1", "x=2", "x=2", "x=3", "x=2", "x=1"])
    plain = Consensus(answer_of, mode="frequency").score(rollouts).rewards
    group = Consensus(answer_of, mode="frequency", entropy_alpha=0.75).score(rollouts).rewards
    per_sample = Consensus(answer_of, mode="frequency", entropy_alpha=0.75, per_sample_entropy=True).score(rollouts)
    assert not torch.allclose(plain, group)  # the rewards differ ...
    adv_plain, _ = ttrl_fast.group_advantages(plain, group_size=6)
    adv_group, _ = ttrl_fast.group_advantages(group, group_size=6)
    adv_sample, _ = ttrl_fast.group_advantages(per_sample.rewards, group_size=6)
    torch.testing.assert_close(adv_group, adv_plain, rtol=0, atol=1e-5)  # ... the advantages do not
    assert (adv_sample - adv_plain).abs().max() > 1e-2  # the per-sample term does move them
    # the per-sample surprisal averages to the group entropy: same group mean reward as the group term
    means_group = group.view(2, 6).mean(1)
    torch.testing.assert_close(per_sample.rewards.view(2, 6).mean(1), means_group, rtol=0, atol=1e-6)


def test_per_sample_entropy_values_by_hand():
    alpha = 0.5
    result = Consensus(answer_of, mode="frequency", entropy_alpha=alpha, per_sample_entropy=True).score(ro(G1))
    q = {"4": 3 / 6, "5": 2 / 6, "6": 1 / 6}
    expected = [q[answer_of(o)] - alpha * (-math.log(q[answer_of(o)])) / math.log(3) for o in G1]
    torch.testing.assert_close(result.rewards, torch.tensor(expected))
    assert result.rewards[4] < result.rewards[2] < result.rewards[0]  # rare answers are penalised most


def test_validation():
    with pytest.raises(ValueError, match="mode must be one of"):
        Consensus(answer_of, mode="vote")
    with pytest.raises(ValueError, match="entropy_alpha must be finite"):
        Consensus(answer_of, entropy_alpha=float("nan"))
    with pytest.raises(TypeError, match="extract must be callable"):
        Consensus("not callable")
    with pytest.raises(TypeError, match="unhashable list"):
        Consensus(lambda o: [o]).score(ro(["a", "b"]))
