"""group_advantages on every backend against TRL 1.16's formula, the spec loop, and the edge cases."""
import pytest
import torch

import ttrl_fast
from ttrl_fast.reference.advantages import group_advantages as spec

from ..conftest import DEVICE

trl_utils = pytest.importorskip("trl.trainer.utils", reason="TRL 1.16 is a test dependency")


def trl_advantages(rewards, num_generations, scale_rewards):
    """Transcribed from TRL 1.16 GRPOTrainer._generate_and_score_completions (sum_then_normalize; the
    grouping is inline there, not callable) using TRL's own nanstd."""
    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    if scale_rewards in ("group", "none"):
        std = trl_utils.nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    else:
        std = trl_utils.nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std))


def _rewards(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=g, dtype=torch.float64)
    r[3] = float("nan")  # unscorable
    r[8:12] = 0.5  # a zero-std group (G = 4)
    r[12:15] = float("nan")  # a group with a single scorable member
    return r


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
def test_matches_trl(backend, mode):
    rewards = _rewards()
    expected, is_std_zero = trl_advantages(rewards, 4, mode)
    adv, stats = ttrl_fast.group_advantages(rewards.float().to(DEVICE), group_size=4, mode=mode, backend=backend)
    torch.testing.assert_close(adv.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    if mode == "group":  # TRL logs the per-sample fraction; with equal groups it is the group fraction
        assert stats["frac_zero_std"].item() == pytest.approx(is_std_zero.float().mean().item())


@pytest.mark.parametrize("mode", ["group", "batch", "none", "rloo"])
@pytest.mark.parametrize("std_correction", [0, 1])
def test_group_ids_in_any_order_match_the_spec(backend, mode, std_correction):
    g = torch.Generator().manual_seed(1)
    rewards = _rewards(30, seed=2)
    ids = torch.randint(100, 107, (30,), generator=g)  # uneven sizes, arbitrary ids
    ids[0] = 999  # a singleton group
    adv, stats = ttrl_fast.group_advantages(rewards.float().to(DEVICE), group_ids=ids.to(DEVICE), mode=mode,
                                            std_correction=std_correction, backend=backend)
    keys, index = torch.unique(ids, return_inverse=True)
    expected, expected_stats = spec(rewards, index, len(keys), mode=mode, std_correction=std_correction)
    torch.testing.assert_close(adv.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["mean"].double().cpu(), expected_stats[:, 1], rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    torch.testing.assert_close(stats["std"].double().cpu(), expected_stats[:, 2], rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    assert adv[ids == 999].item() == 0.0 and torch.isfinite(adv).all()
    assert (stats["group_ids"].cpu() == keys).all()


def test_rloo_is_leave_one_out(backend):
    rewards = torch.tensor([1.0, 2.0, 6.0, 3.0, 3.0, 9.0])
    adv, _ = ttrl_fast.group_advantages(rewards.to(DEVICE), group_size=3, mode="rloo", backend=backend)
    expected = torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 3 - 6.0, 3 - 6.0, 9 - 3.0])
    torch.testing.assert_close(adv.cpu(), expected)


def test_group_of_one_and_all_nan_give_zero(backend):
    adv, stats = ttrl_fast.group_advantages(torch.tensor([1.0, 2.0, float("nan")], device=DEVICE), group_size=1,
                                            backend=backend)
    assert (adv == 0).all()
    adv, _ = ttrl_fast.group_advantages(torch.full((4,), float("nan"), device=DEVICE), group_size=2, backend=backend)
    assert (adv == 0).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(group_size=5), ["group_size=5", "(12,)"]),
        (dict(), ["exactly one of group_size"]),
        (dict(group_size=3, group_ids=torch.zeros(12, dtype=torch.long)), ["exactly one"]),
        (dict(group_ids=torch.zeros(11, dtype=torch.long)), ["group_ids", "(12,)"]),
        (dict(group_ids=torch.zeros(12)), ["group_ids", "integer"]),
        (dict(group_size=3, mode="zscore"), ["mode"]),
        (dict(group_size=0), ["group_size"]),
    ],
)
def test_bad_input_names_the_argument(kwargs, words):
    with pytest.raises(ValueError) as info:
        ttrl_fast.group_advantages(torch.randn(12), **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)
