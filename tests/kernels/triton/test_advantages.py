"""Triton group_advantages kernel against a plain float64 torch computation.

Without CUDA the kernel runs on CPU under TRITON_INTERPRET=1 (set before the module is imported);
the chunk cap is 4 there, so groups of 5+ members loop over several chunks.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402

from . import load_kernel_module  # noqa: E402

pytest.importorskip("triton")

tadv = load_kernel_module("advantages")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-5, atol=1e-5)
MODES = {"group": 0, "batch": 1, "none": 2, "rloo": 3}

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def reference(rewards, perm, offsets, mode, correction, eps, batch_std):
    """float64: per group mean / std over the non-NaN members (Bessel `correction`), then the mode."""
    r64 = rewards.double()
    adv = torch.zeros_like(r64)
    stats = torch.zeros(len(offsets) - 1, 3, dtype=torch.float64)
    for g in range(len(offsets) - 1):
        idx = perm[offsets[g]:offsets[g + 1]]
        vals = r64[idx]
        kept = vals[~torch.isnan(vals)]
        n = kept.numel()
        mean = kept.mean() if n else torch.tensor(math.nan, dtype=torch.float64)
        std = (((kept - mean) ** 2).sum() / (n - correction)).sqrt() if n > correction else \
            torch.tensor(math.nan, dtype=torch.float64)
        if mode == 0:
            a = (vals - mean) / (std + eps)
        elif mode == 1:
            a = (vals - mean) / (batch_std + eps)
        elif mode == 2:
            a = vals - mean
        else:
            a = n / (n - 1) * (vals - mean) if n > 1 else torch.zeros_like(vals)
        adv[idx] = torch.nan_to_num(a, nan=0.0)
        stats[g] = torch.stack([torch.tensor(float(n), dtype=torch.float64), mean, std])
    return adv, stats


def make_groups(sizes, seed, nan_p=0.15, binary=False):
    gen = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    if binary:
        rewards = (torch.rand(N, generator=gen) < 0.5).float()
    else:
        rewards = torch.randn(N, generator=gen) * 2.0 + 0.5
    rewards[torch.rand(N, generator=gen) < nan_p] = math.nan
    perm = torch.randperm(N, generator=gen)  # groups are scattered over the batch
    offsets = torch.tensor([0] + list(torch.tensor(sizes).cumsum(0)), dtype=torch.int64)
    return rewards, perm, offsets


def check(rewards, perm, offsets, mode, correction=1, eps=1e-4, batch_std=1.7):
    adv, stats = tadv.group_advantages_fwd(rewards.to(DEVICE), perm.to(DEVICE), offsets.to(DEVICE),
                                           mode, correction, eps, batch_std)
    assert adv.shape == rewards.shape and adv.dtype == torch.float32
    assert stats.shape == (offsets.numel() - 1, 3) and stats.dtype == torch.float32
    r_adv, r_stats = reference(rewards, perm, offsets.tolist(), mode, correction, eps, batch_std)
    torch.testing.assert_close(adv.cpu().double(), r_adv, **TOL)
    torch.testing.assert_close(stats.cpu().double(), r_stats, equal_nan=True, **TOL)
    assert (adv.cpu()[torch.isnan(rewards)] == 0).all()
    return adv.cpu(), stats.cpu()


# Uneven sizes, singletons, groups larger than one chunk (cap 4 under the interpreter).
_SIZES = [[4, 4, 4], [1, 7, 3, 1, 9, 2], [16], [5, 1]]


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
@pytest.mark.parametrize("sizes", _SIZES, ids=lambda s: "-".join(map(str, s)))
def test_matches_float64(sizes, mode, correction):
    rewards, perm, offsets = make_groups(sizes, seed=len(sizes) * 31 + sum(sizes))
    check(rewards, perm, offsets, MODES[mode], correction=correction)


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_binary_rewards_zero_std_groups(mode):
    """0/1 rewards: some groups are constant (std 0: advantage 0 in group mode, up to eps)."""
    rewards, perm, offsets = make_groups([4, 4, 4, 4, 6], seed=3, nan_p=0.0, binary=True)
    rewards[perm[0:4]] = 1.0
    rewards[perm[4:8]] = 0.0
    adv, stats = check(rewards, perm, offsets, MODES[mode])
    assert (stats[:2, 2] == 0).all()
    assert (adv[perm[:8]] == 0).all()


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_all_nan_and_singleton_groups(mode):
    """An all-NaN group: count 0, NaN mean and std, advantages 0; singletons: std NaN with
    correction 1 (advantage 0 in group mode), 0 with correction 0."""
    rewards, perm, offsets = make_groups([3, 1, 1, 5], seed=9, nan_p=0.0)
    rewards[perm[0:3]] = math.nan
    for correction in (0, 1):
        adv, stats = check(rewards, perm, offsets, MODES[mode], correction=correction)
        assert stats[0, 0] == 0 and math.isnan(stats[0, 1]) and math.isnan(stats[0, 2])
        assert (adv[perm[:3]] == 0).all()
        assert stats[1, 0] == 1 and (math.isnan(stats[1, 2]) if correction else stats[1, 2] == 0)


def test_empty_groups_and_multi_chunk_caps(monkeypatch):
    """Empty groups (offsets repeat) and several chunk caps give the same results."""
    rewards, perm, offsets = make_groups([0, 6, 0, 11, 3], seed=21)
    outs = []
    for cap in (1, 4, 32):
        monkeypatch.setattr(tadv, "_INTERPRET_MAX_BLOCK", cap)
        monkeypatch.setattr(tadv, "_GPU_MAX_BLOCK", cap)
        outs.append(check(rewards, perm, offsets, 0))
    assert outs[0][1][0, 0] == 0 and outs[0][1][2, 0] == 0
    for adv, stats in outs[1:]:
        torch.testing.assert_close(adv, outs[0][0], **TOL)
        torch.testing.assert_close(stats, outs[0][1], equal_nan=True, **TOL)


def test_no_groups():
    adv, stats = tadv.group_advantages_fwd(torch.zeros(0, device=DEVICE), torch.zeros(0, dtype=torch.int64,
                                           device=DEVICE), torch.zeros(1, dtype=torch.int64, device=DEVICE),
                                           0, 1, 1e-4, 1.0)
    assert adv.numel() == 0 and stats.shape == (0, 3)


def test_large_offset_rewards():
    """Rewards around 100 with a spread of 0.1: the two-pass std keeps its precision in fp32."""
    rewards, perm, offsets = make_groups([8, 8], seed=5, nan_p=0.0)
    rewards = rewards * 0.05 + 100.0
    adv, _ = tadv.group_advantages_fwd(rewards.to(DEVICE), perm.to(DEVICE), offsets.to(DEVICE), 0, 1, 1e-4, 1.0)
    r_adv, _ = reference(rewards, perm, offsets.tolist(), 0, 1, 1e-4, 1.0)
    torch.testing.assert_close(adv.cpu().double(), r_adv, rtol=1e-4, atol=1e-4)
