"""policy_loss: exact parity with TRL 1.16's own GRPOTrainer loss code (run through a stub trainer,
see tests/reference/trl_parity.py), on every backend, plus the edge cases."""
import itertools

import pytest
import torch

import ttrl_fast
from ttrl_fast.reference.policy_loss import LOSS_TYPES, policy_loss as spec_policy_loss

from ..conftest import DEVICE

trl_parity = pytest.importorskip("tests.reference.trl_parity", reason="TRL 1.16 is a test dependency")

B, T = 5, 11
CASES = list(itertools.product(LOSS_TYPES, ["token", "sequence"], [0.0, 0.04], [False, True], [False, True]))


def _inputs(seed, *, on_policy=False, per_token_adv=False, ratio_cols=T, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    old = None if on_policy else logp + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    adv = torch.randn((B, T) if per_token_adv else (B,), generator=g, dtype=dtype)
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[1] = 0  # an empty sequence
    ratio = torch.rand(B, ratio_cols, generator=g, dtype=dtype) + 0.5
    entropy = torch.rand(B, T, generator=g, dtype=dtype) * 2
    return logp, old, ref, adv, mask, ratio, entropy


def _knobs(loss_type, level, beta, bias, use_ratio, ratio, ref, entropy):
    return dict(ref_logp=ref, loss_type=loss_type, importance_sampling_level=level, beta=beta,
                use_bias_correction_kl=bias, rollout_is_ratio=ratio if use_ratio else None, entropy=entropy,
                entropy_coef=0.01, epsilon_high=5.0 if loss_type == "cispo" else 0.28,
                delta=1.5 if loss_type in ("grpo", "dapo") else None)


def _trl(logp, old, adv, mask, **kw):
    x = logp.clone().requires_grad_(True)
    loss, metrics = trl_parity.trl_compute_loss(x, old, adv, mask, **kw)
    loss.backward()
    return loss.detach(), x.grad, metrics


@pytest.mark.parametrize("loss_type, level, beta, bias, use_ratio", CASES)
def test_spec_matches_trl_in_float64(loss_type, level, beta, bias, use_ratio):
    for seed, on_policy in [(0, False), (1, True)]:
        logp, old, ref, adv, mask, ratio, ent = _inputs(seed, on_policy=on_policy)
        kw = _knobs(loss_type, level, beta, bias, use_ratio, ratio, ref, ent)
        loss_trl, grad_trl, _ = _trl(logp, old, adv, mask, **kw)
        x = logp.clone().requires_grad_(True)
        loss, _ = spec_policy_loss(x, old, adv, mask, **kw)
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_trl, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(x.grad, grad_trl, rtol=1e-6, atol=1e-9)


def _check_backend(backend, loss_type, level, beta, bias, use_ratio, *, on_policy, per_token_adv, ratio_cols, seed):
    logp, old, ref, adv, mask, ratio, ent = _inputs(seed, on_policy=on_policy, per_token_adv=per_token_adv,
                                                    ratio_cols=ratio_cols)
    kw = _knobs(loss_type, level, beta, bias, use_ratio, ratio, ref, ent)
    loss_trl, grad_trl, metrics_trl = _trl(logp, old, adv, mask, **kw)
    x = logp.float().clone().to(DEVICE).requires_grad_(True)
    dev = {k: (val.float().to(DEVICE) if isinstance(val, torch.Tensor) else val) for k, val in kw.items()}
    loss, metrics = ttrl_fast.policy_loss(x, None if old is None else old.float().to(DEVICE), adv.float().to(DEVICE),
                                          mask.to(DEVICE), backend=backend, **dev)
    loss.backward()
    scale = max(1.0, loss_trl.abs().item())
    assert abs(loss.item() - loss_trl.item()) <= 1e-5 * scale
    gscale = max(1e-3, grad_trl.abs().max().item())
    assert (x.grad.double().cpu() - grad_trl).abs().max().item() <= 1e-5 * gscale
    for name, value in metrics_trl.items():
        if name in ("entropy_coef", "policy_loss"):
            continue
        got = float(metrics[name])
        assert (got != got and value != value) or abs(got - value) <= 1e-5 * max(1.0, abs(value)), (name, got, value)


@pytest.mark.parametrize("loss_type, level, beta, bias, use_ratio", CASES)
def test_every_backend_matches_trl(backend, loss_type, level, beta, bias, use_ratio):
    for seed, (on_policy, per_token_adv, ratio_cols) in enumerate([(False, False, T), (True, False, 1),
                                                                   (False, True, T)]):
        _check_backend(backend, loss_type, level, beta, bias, use_ratio, on_policy=on_policy,
                       per_token_adv=per_token_adv, ratio_cols=ratio_cols, seed=seed)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_masked_batch_gives_zero_loss_and_a_connected_graph(backend, loss_type):
    logp = (-torch.rand(3, 4, device=DEVICE)).requires_grad_(True)
    mask = torch.zeros(3, 4, dtype=torch.bool, device=DEVICE)
    loss, metrics = ttrl_fast.policy_loss(logp, logp.detach() - 0.1, torch.randn(3, device=DEVICE), mask,
                                          loss_type=loss_type, backend=backend)
    assert loss.item() == 0.0
    loss.backward()
    assert logp.grad is not None and (logp.grad == 0).all()
    assert not any(torch.isnan(torch.as_tensor(v)).any() for k, v in metrics.items()
                   if k not in ("clip_ratio/low_min", "clip_ratio/high_max", "ratio/min", "ratio/max"))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_extreme_log_ratios_stay_finite(backend, loss_type, level):
    logp = -torch.rand(4, 6, device=DEVICE)
    old = logp.clone()
    old[:, ::2] += 80.0  # log ratio -80
    old[:, 1::2] -= 80.0  # log ratio +80
    x = logp.clone().requires_grad_(True)
    loss, _ = ttrl_fast.policy_loss(x, old, torch.tensor([1.0, -1.0, 0.5, -2.0], device=DEVICE),
                                    torch.ones(4, 6, device=DEVICE), loss_type=loss_type, beta=0.04,
                                    ref_logp=logp - 0.1, use_bias_correction_kl=loss_type != "sapo",
                                    importance_sampling_level=level, epsilon_high=5.0 if loss_type == "cispo" else None,
                                    backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_metrics_carry_sums_and_counts_for_exact_all_reduce():
    logp, old, ref, adv, mask, _, ent = _inputs(3)
    _, metrics = ttrl_fast.policy_loss(logp.float(), old.float(), adv.float(), mask, entropy=ent.float(), beta=0.04,
                                       ref_logp=ref.float())
    for name in ("kl", "entropy", "clip_ratio/region_mean", "ratio/mean"):
        assert metrics.reduce_ops[name] == "mean"
        torch.testing.assert_close(metrics[name], metrics.sums[name] / metrics.counts[name])
    assert metrics.reduce_ops["clip_ratio/low_min"] == "min" and metrics.reduce_ops["ratio/max"] == "max"
    assert metrics.counts["kl"].item() == mask.sum().item()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(loss_type="ppo"), ValueError, ["loss_type", "ppo"]),
        (dict(importance_sampling_level="batch"), ValueError, ["importance_sampling_level"]),
        (dict(beta=0.1), ValueError, ["ref_logp", "beta"]),
        (dict(kl_estimator="k4"), ValueError, ["kl_estimator"]),
        (dict(epsilon_low=-0.1), ValueError, ["epsilon_low"]),
        (dict(advantages=torch.zeros(3)), ValueError, ["advantages", "(2, 5)"]),
        (dict(old_logp=torch.zeros(2, 4)), ValueError, ["old_logp", "(2, 5)"]),
        (dict(mask=torch.ones(2, 4)), ValueError, ["mask", "(2, 5)"]),
        (dict(rollout_is_ratio=torch.ones(2, 3)), ValueError, ["rollout_is_ratio"]),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, words):
    args = dict(logp=torch.zeros(2, 5), old_logp=None, advantages=torch.zeros(2), mask=torch.ones(2, 5))
    for key in ("advantages", "old_logp", "mask"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(error) as info:
        ttrl_fast.policy_loss(args["logp"], args["old_logp"], args["advantages"], args["mask"], **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("delta", [None, 1.0])
def test_ratio_exactly_on_the_clip_bounds_matches_trl(backend, level, delta):
    """On-policy r = 1 with eps = 0 (and delta = 1) sits on every clamp bound, where torch.clamp's
    gradient is 0 and min's tie splits: the kernels reproduce TRL's gradient there too."""
    logp, _, _, adv, mask, _, _ = _inputs(7, on_policy=True)
    kw = dict(loss_type="grpo", importance_sampling_level=level, epsilon_low=0.0, epsilon_high=0.0, delta=delta)
    loss_trl, grad_trl, _ = _trl(logp, None, adv, mask, **kw)
    x = logp.float().to(DEVICE).requires_grad_(True)
    loss, _ = ttrl_fast.policy_loss(x, None, adv.float().to(DEVICE), mask.to(DEVICE), backend=backend, **kw)
    loss.backward()
    torch.testing.assert_close(x.grad.double().cpu(), grad_trl, rtol=1e-5, atol=1e-7)
