"""Properties of group_advantages on every backend against the float64 spec loop
(ttrl_fast.reference.advantages.group_advantages): every mode, both std corrections, eps, NaN rewards
(including all-NaN groups), singleton and constant groups, contiguous blocks (group_size) and group_ids
in any order (uneven sizes, negative and huge ids), input dtypes; plus the invariants: finite
advantages, 0 for NaN rewards and for undefined statistics, zero-sum groups (none / rloo / group), and
equivariance under a permutation of the samples.

Tolerance: the kernels accumulate in fp32 (csrc/include/ttrl_fast/policy_loss_math.h), so the error of
a group mean is up to n * u32 * max|r|; an advantage divides it by (std + eps). The bound below is that
forward error (times a small constant), plus 1e-5 relative."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ttrl_fast
from ttrl_fast.reference.advantages import MODES
from ttrl_fast.reference.advantages import group_advantages as spec

from .conftest import (Counter, assert_budget_spent, backend_params, device_of, forced_isa, generator, interpreted,
                       isa_strategy, prop_settings)

OP = "group_advantages"
U32 = 2.0 ** -24
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@st.composite
def cases(draw, backend):
    small = interpreted(backend)
    layout = draw(st.sampled_from(["size", "ids"]))
    if layout == "size":
        group_size = draw(st.integers(1, 9 if small else 17))
        groups = draw(st.integers(1, 4 if small else 8))
        n = group_size * groups
    else:
        group_size = None
        n = draw(st.integers(1, 24 if small else 80))
    return dict(
        layout=layout, group_size=group_size, n=n,
        distinct_ids=draw(st.integers(1, 6)),
        id_kind=draw(st.sampled_from(["small", "negative", "huge"])),
        mode=draw(st.sampled_from(MODES)),
        std_correction=draw(st.sampled_from([0, 1])),
        eps=draw(st.sampled_from([1e-4, 1e-4, 1e-2, 1e-6, 0.0])),
        reward_kind=draw(st.sampled_from(["binary", "dyadic", "continuous", "offset", "mixed"])),
        nan_fraction=draw(st.sampled_from([0.0, 0.0, 0.2, 0.7, 1.0])),
        constant_groups=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        isa=draw(isa_strategy(backend)),
    )


def _make(case):
    g = generator(case["seed"])
    n = case["n"]
    kind = case["reward_kind"]
    if kind == "binary":
        r = (torch.rand(n, generator=g) < 0.5).double()
    elif kind == "dyadic":
        r = torch.randint(-32, 33, (n,), generator=g).double() / 8
    elif kind == "continuous":
        scale = [0.1, 1.0, 10.0][int(torch.randint(0, 3, (), generator=g))]
        r = torch.randn(n, generator=g, dtype=torch.float64) * scale
    elif kind == "offset":
        r = 100.0 + torch.randn(n, generator=g, dtype=torch.float64)
    else:
        r = torch.where(torch.rand(n, generator=g) < 0.5, torch.randn(n, generator=g, dtype=torch.float64),
                        (torch.rand(n, generator=g) < 0.5).double())
    if case["layout"] == "size":
        index = torch.arange(n) // case["group_size"]
        ids = None
    else:
        k = case["distinct_ids"]
        pool = {"small": torch.arange(k), "negative": torch.arange(k) * 7 - 10,
                "huge": torch.arange(k) * 1_000_003 + 2 ** 40}[case["id_kind"]]
        ids = pool[torch.randint(0, k, (n,), generator=g)]
        index = torch.unique(ids, return_inverse=True)[1]
    if case["constant_groups"]:  # every other group constant (a dyadic value: exact sums), std 0
        value = float(torch.randint(-8, 9, (), generator=g)) / 4
        r = torch.where(index % 2 == 0, torch.full_like(r, value), r)
    if case["nan_fraction"] > 0:
        r = r.masked_fill(torch.rand(n, generator=g) < case["nan_fraction"], float("nan"))
    rewards = r.to(case["dtype"])
    return rewards, ids, index


def _group_max(x, index, groups):
    return torch.zeros(groups, dtype=torch.float64).scatter_reduce(0, index, x, "amax", include_self=True)


def _check(backend, case):
    device = device_of(backend)
    rewards, ids, index = _make(case)
    values = rewards.float().double()  # what the kernels see
    groups = int(index.max()) + 1 if index.numel() else 0
    mode, corr, eps = case["mode"], case["std_correction"], case["eps"]
    want, want_stats = spec(values, index, groups, mode=mode, std_correction=corr, eps=eps)
    kwargs = dict(mode=mode, std_correction=corr, eps=eps, backend=backend)
    with forced_isa(backend, case["isa"]):
        if ids is None:
            adv, stats = ttrl_fast.group_advantages(rewards.to(device), group_size=case["group_size"], **kwargs)
        else:
            adv, stats = ttrl_fast.group_advantages(rewards.to(device), group_ids=ids.to(device), **kwargs)
    adv = adv.cpu().double()
    assert adv.dtype == torch.float64 and adv.shape == rewards.shape
    assert torch.isfinite(adv).all(), "non-finite advantage"
    nan = torch.isnan(values)
    assert (adv[nan] == 0).all(), "NaN rewards must get advantage 0"

    # Forward-error bound of fp32 accumulation per group (and over the batch for mode="batch").
    finite = torch.where(nan, 0.0, values)
    counts = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, (~nan).double())
    big = _group_max(finite.abs(), index, groups)
    std = want_stats[:, 2]
    if mode == "batch":
        batch_std = torch.nan_to_num(spec(values, torch.zeros_like(index), 1, std_correction=corr)[1][0, 2], nan=0.0)
        denom = torch.full_like(std, float(batch_std)) + eps
        err_sum = 8 * (values.numel() + 1) * U32 * float(finite.abs().max() if finite.numel() else 0.0)
    else:
        denom = torch.nan_to_num(std, nan=0.0) + eps
        err_sum = None
    mean_err = 8 * (counts + 1) * U32 * big  # [G]
    if mode in ("group", "batch"):
        spread = mean_err if err_sum is None else mean_err + err_sum
        # numerator error / denominator, plus the denominator's own relative error times |A|
        biggest_adv = _group_max(want.abs(), index, groups)
        bound = spread / denom.clamp(min=1e-30) * (1 + biggest_adv)
    elif mode == "rloo":
        bound = 2 * mean_err
    else:
        bound = mean_err
    tol = 1e-5 * torch.maximum(torch.ones_like(want), want.abs()) + bound[index]
    diff = (adv - want).abs()
    assert (diff <= tol).all(), (f"advantage error {float(diff.max()):.3e} over bound "
                                 f"{float(tol[diff.argmax()]):.3e} at sample {int(diff.argmax())}")

    got_count, got_mean, got_std = (stats[k].cpu().double() for k in ("count", "mean", "std"))
    assert torch.equal(got_count, want_stats[:, 0]), "group counts"
    assert torch.equal(torch.isnan(got_mean), torch.isnan(want_stats[:, 1]))
    assert torch.equal(torch.isnan(got_std), torch.isnan(want_stats[:, 2]))
    ok = ~torch.isnan(want_stats[:, 1])
    assert ((got_mean - want_stats[:, 1]).abs()[ok] <= (1e-6 + mean_err)[ok]).all(), "group means"
    ok = ~torch.isnan(want_stats[:, 2])
    std_tol = 1e-5 * want_stats[:, 2].abs() + 4 * torch.sqrt(mean_err * (big + 1e-30)) + mean_err
    assert ((got_std - want_stats[:, 2]).abs()[ok] <= std_tol[ok]).all(), "group stds"
    assert 0.0 <= float(stats["frac_zero_std"]) <= 1.0
    if ids is not None:
        assert torch.equal(stats["group_ids"].cpu(), torch.unique(ids)), "group_ids: sorted distinct ids"
    # Members of a group sum to 0 (group / none / rloo center on the group mean).
    if mode in ("none", "rloo", "group"):
        sums = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, adv)
        scale = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, adv.abs()) + 1.0
        assert (sums.abs() <= 1e-5 * scale + counts * bound.nan_to_num(0.0)).all(), "group advantages do not sum to 0"

    # Equivariance: the same samples with their ids in another order give the permuted advantages.
    if ids is not None and rewards.numel() > 1:
        perm = torch.randperm(rewards.numel(), generator=generator(case["seed"] + 1))
        with forced_isa(backend, case["isa"]):
            adv_p, _ = ttrl_fast.group_advantages(rewards[perm].to(device), group_ids=ids[perm].to(device), **kwargs)
        assert ((adv_p.cpu().double() - adv[perm]).abs() <= 2 * tol[perm]).all(), "not permutation-equivariant"


@pytest.mark.parametrize("backend", backend_params(OP))
def test_group_advantages_match_the_float64_spec(backend):
    counter = Counter()

    @prop_settings(backend, OP)
    @given(case=cases(backend))
    def prop(case):
        _check(backend, case)
        counter.n += 1

    prop()
    assert_budget_spent(counter, backend, OP)

