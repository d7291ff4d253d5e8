"""Triton fused LM-head kernels (ttrl_fast/kernels/triton/fused_linear.py) against a float64 torch
ground truth: logits = hidden @ weight.T + bias in float64, log_softmax(logits * inv_t), gather,
entropy, and autograd for dX, dW, db under random upstream gradients.

Without CUDA the kernels run on CPU under TRITON_INTERPRET=1, which triton reads when a kernel is
decorated: it has to be set before the kernel module is imported. Shapes stay tiny; the interpreter
launch configuration (BLOCK_N=16, BLOCK_V=32, BLOCK_K=16) makes them cover several token blocks,
several vocab tiles, and ragged H / V / N edges.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402

from . import load_kernel_module  # noqa: E402

pytest.importorskip("triton")

fl = load_kernel_module("fused_linear")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-5, atol=1e-5)

# The interpreter's numpy ops warn on exp/log of inf and 0 * inf in lanes that tl.where discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _reference(hidden, weight, bias, targets, valid, inv_t, g_logp=None, g_ent=None):
    """float64 ground truth: logp, entropy, stats, and (dx, dw, db) (None without upstream grads)."""
    keep = valid.cpu()
    h = torch.where(keep[:, None], hidden.detach().cpu().double(), 0.0).requires_grad_(True)
    w = weight.detach().cpu().double().requires_grad_(True)
    # Without a bias, db is the gradient w.r.t. a zero bias (the column sums of dlogits).
    b = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().cpu().double()
    b.requires_grad_(True)
    x = h @ w.t() + b
    lsm = torch.log_softmax(x * inv_t, dim=-1)
    logp = lsm.gather(1, targets.cpu().clamp(0, x.shape[1] - 1)[:, None]).squeeze(1)
    p = lsm.exp()
    ent = -(p * torch.where(p > 0, lsm, torch.zeros_like(lsm))).sum(-1)  # 0 * (-inf) = 0, also in grads
    logp = torch.where(keep, logp, torch.zeros_like(logp))
    ent = torch.where(keep, ent, torch.zeros_like(ent))
    xd = x.detach()
    row_max = xd.max(-1).values
    log_sum = torch.logsumexp((xd - row_max[:, None]) * inv_t, dim=-1)
    stats = torch.stack([row_max, log_sum], -1) * keep[:, None]
    terms = []
    if g_logp is not None:
        terms.append((g_logp.cpu().double() * logp).sum())
    if g_ent is not None:
        terms.append((g_ent.cpu().double() * ent).sum())
    grads = (None, None, None)
    if terms:
        grads = torch.autograd.grad(sum(terms), [h, w, b])
    return logp.detach(), ent.detach(), stats, grads


def _close(actual, expected, **tol):
    torch.testing.assert_close(actual.cpu().double(), expected.double(), **(tol or TOL))


def _case(N, H, V, bias, seed, valid_p=0.75):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) * 0.5
    b = torch.randn(V, generator=gen) if bias else None
    targets = torch.randint(0, V, (N,), generator=gen)
    valid = torch.rand(N, generator=gen) < valid_p
    valid[0] = True
    g_logp = torch.randn(N, generator=gen)
    g_ent = torch.randn(N, generator=gen)
    return hidden, weight, b, targets, valid, g_logp, g_ent


def _to(*ts):
    return tuple(None if t is None else t.to(DEVICE) for t in ts)


def _run_and_check(hidden, weight, bias, targets, valid, inv_t, g_logp, g_ent, with_entropy=True,
                   need=(True, True, True), tol=None):
    tol = tol or TOL
    hidden, weight, bias, targets, valid, g_logp, g_ent = _to(hidden, weight, bias, targets, valid, g_logp, g_ent)
    N, H = hidden.shape
    V = weight.shape[0]
    logp, ent, stats = fl.fused_linear_logprob_fwd(hidden, weight, bias, targets, valid, inv_t, with_entropy)
    dx, dw, db = fl.fused_linear_logprob_bwd(g_logp, g_ent, hidden, weight, bias, targets, valid, stats, ent,
                                             inv_t, *need)
    r_logp, r_ent, r_stats, (r_dx, r_dw, r_db) = _reference(hidden, weight, bias, targets, valid, inv_t,
                                                            g_logp, g_ent)
    assert logp.shape == (N,) and logp.dtype == torch.float32
    assert stats.shape == (N, 2) and stats.dtype == torch.float32
    _close(logp, r_logp, **tol)
    _close(stats, r_stats, **tol)
    if with_entropy:
        assert ent.shape == (N,) and ent.dtype == torch.float32
        _close(ent, r_ent, **tol)
    else:
        assert ent.numel() == 0
    for got, ref, shape, wanted in ((dx, r_dx, (N, H), need[0]), (dw, r_dw, (V, H), need[1]),
                                    (db, r_db, (V,), need[2])):
        if not wanted:
            assert got is None
            continue
        assert got.shape == shape and got.dtype == torch.float32
        if ref is None:
            ref = torch.zeros(shape, dtype=torch.float64)
        _close(got, ref, **tol)
    inval = ~valid
    assert (logp[inval] == 0).all() and (stats[inval] == 0).all()
    if with_entropy:
        assert (ent[inval] == 0).all()
    if need[0]:
        assert (dx[inval] == 0).all()
    return logp, ent, stats, dx, dw, db


@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("V", [1, 33, 70])
@pytest.mark.parametrize("H", [16, 24])
@pytest.mark.parametrize("N", [1, 5, 37])
def test_matches_float64(N, H, V, bias, temperature):
    seed = hash((N, H, V, bias, temperature)) % 2**31
    hidden, weight, b, targets, valid, g_logp, g_ent = _case(N, H, V, bias, seed)
    _run_and_check(hidden, weight, b, targets, valid, 1.0 / temperature, g_logp, g_ent)


def _exact_case(N, H, V, seed):
    """Inputs on a dyadic grid (multiples of 1/8, products multiples of 1/64): hidden @ weight.T +
    bias is exact in fp32 even with +-1e3 offsets, so the float64 reference differs from the kernel
    only by the log-sum-exp arithmetic, and 1e-5 tests that no precision is lost to the offsets."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-8, 9, (N, H), generator=gen).float() / 8
    weight = torch.randint(-8, 9, (V, H), generator=gen).float() / 8
    bias = torch.randint(-128, 129, (V,), generator=gen).float() / 64
    targets = torch.randint(0, V, (N,), generator=gen)
    valid = torch.rand(N, generator=gen) < 0.8
    valid[0] = True
    g_logp = torch.randn(N, generator=gen)
    g_ent = torch.randn(N, generator=gen)
    return hidden, weight, bias, targets, valid, g_logp, g_ent


@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("offset", ["+1e3", "-1e3", "ramp+1e3", "spikes"])
def test_offsets_and_growing_max(offset, temperature):
    """Common offsets of +-1e3 (relative arithmetic), a max that grows tile after tile (rebasing
    with moderate factors), and +-1e3 spikes in later tiles (rebasing that wipes the earlier sums)."""
    N, H, V = 21, 24, 70
    hidden, weight, bias, targets, valid, g_logp, g_ent = _exact_case(N, H, V, seed=len(offset))
    if offset == "+1e3":
        bias += 1e3
    elif offset == "-1e3":
        bias -= 1e3
    elif offset == "ramp+1e3":
        bias += 1e3 + torch.arange(V).float() / 8  # ~4 per 32-wide tile
    else:
        bias[40] += 1e3  # second tile
        bias[69] += 1e3  # last (partial) tile: ties the max of the second
        bias[5] -= 1e3
        targets[1] = 40
        targets[2] = 5
        valid[1] = valid[2] = True
    _run_and_check(hidden, weight, bias, targets, valid, 1.0 / temperature, g_logp, g_ent)


def test_neg_inf_bias_and_empty_leading_tile():
    """A -inf bias (masked vocabulary) gives p = 0 there; a first vocab tile entirely -inf leaves the
    online state empty until the second tile."""
    N, H, V = 20, 16, 70
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(N, H, V, True, seed=9)
    bias[:32] = float("-inf")
    bias[50:55] = float("-inf")
    targets = torch.randint(55, V, (N,), generator=torch.Generator().manual_seed(1))
    logp, ent, stats, dx, dw, db = _run_and_check(hidden, weight, bias, targets, valid, 1 / 0.7, g_logp, g_ent)
    assert torch.isfinite(logp).all() and torch.isfinite(dx).all() and torch.isfinite(dw).all()
    assert (db[:32].cpu() == 0).all() and (dw[:32].cpu() == 0).all()


@pytest.mark.parametrize("grads,with_entropy", [("logp_only", True), ("logp_only", False), ("entropy_only", True),
                                                ("none", True), ("none", False)])
def test_gradient_subsets(grads, with_entropy):
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(19, 24, 40, True, seed=3)
    g_logp = g_logp if grads == "logp_only" else None
    g_ent = g_ent if grads == "entropy_only" else None
    _run_and_check(hidden, weight, bias, targets, valid, 1 / 1.3, g_logp, g_ent, with_entropy=with_entropy)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True)], ids=["dx", "dw", "db", "dw_db"])
def test_need_flags(need):
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(18, 16, 33, True, seed=4)
    _run_and_check(hidden, weight, bias, targets, valid, 1.0, g_logp, g_ent, need=need)


def test_invalid_rows_are_never_read():
    """NaN hidden states and out-of-range targets on invalid rows change nothing, and a token block
    holding no valid row (rows 0-15 under the interpreter configuration) is skipped."""
    N, H, V = 37, 24, 33
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(N, H, V, True, seed=5)
    valid[:] = True
    valid[:16] = False
    valid[20] = False
    hidden[~valid] = float("nan")
    targets[~valid] = 10**6
    g_logp[~valid] = float("nan")
    g_ent[~valid] = float("nan")
    # The reference must not see the garbage either: it zeroes invalid hidden rows, and the
    # upstream gradients of invalid rows are irrelevant (their outputs are constants 0).
    r_g_logp = torch.where(valid, g_logp, 0.0)
    r_g_ent = torch.where(valid, g_ent, 0.0)
    dev = _to(hidden, weight, bias, targets, valid, g_logp, g_ent)
    logp, ent, stats = fl.fused_linear_logprob_fwd(*dev[:5], 1.0, True)
    dx, dw, db = fl.fused_linear_logprob_bwd(dev[5], dev[6], *dev[:5], stats, ent, 1.0, True, True, True)
    r_logp, r_ent, r_stats, (r_dx, r_dw, r_db) = _reference(hidden, weight, bias, targets.clamp(max=V - 1), valid,
                                                            1.0, r_g_logp, r_g_ent)
    _close(logp, r_logp)
    _close(ent, r_ent)
    _close(stats, r_stats)
    _close(dx, r_dx)
    _close(dw, r_dw)
    _close(db, r_db)


def test_poisoned_rows():
    """A +inf hidden value makes that row's logits inf/NaN: NaN outputs there, other rows exact."""
    N, H, V = 9, 16, 33
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(N, H, V, True, seed=6)
    valid[:] = True
    hidden[3, 2] = float("inf")
    dev = _to(hidden, weight, bias, targets, valid)
    logp, ent, stats = fl.fused_linear_logprob_fwd(*dev, 1.0, True)
    assert logp[3].isnan() and ent[3].isnan() and stats[3].isnan().all()
    ok = torch.ones(N, dtype=torch.bool)
    ok[3] = False
    r_logp, r_ent, r_stats, _ = _reference(hidden[ok], weight, bias, targets[ok], valid[ok], 1.0)
    _close(logp[ok.to(logp.device)], r_logp)
    _close(ent[ok.to(ent.device)], r_ent)
    _close(stats[ok.to(stats.device)], r_stats)


def test_out_of_range_target_gives_nan():
    hidden, weight, bias, targets, valid, _, _ = _case(5, 16, 33, False, seed=8)
    valid[:] = True
    targets[2] = 33
    logp, _, _ = fl.fused_linear_logprob_fwd(*_to(hidden, weight, bias, targets, valid), 1.0, False)
    assert logp[2].isnan() and not logp[[0, 1, 3, 4]].isnan().any()


def test_deterministic():
    hidden, weight, bias, targets, valid, g_logp, g_ent = _to(*_case(37, 24, 70, True, seed=10))
    outs = []
    for _ in range(2):
        logp, ent, stats = fl.fused_linear_logprob_fwd(hidden, weight, bias, targets, valid, 1 / 0.7, True)
        outs.append((logp, ent, stats) + fl.fused_linear_logprob_bwd(
            g_logp, g_ent, hidden, weight, bias, targets, valid, stats, ent, 1 / 0.7, True, True, True))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_inputs(dtype):
    """16-bit hidden / weight / bias: the reference upcasts the same 16-bit values; products of
    16-bit values are exact in fp32, so fp32 accumulation keeps 1e-5. (Under the interpreter bf16
    runs through the fp32 dot path: the interpreter's bf16 tl.dot is broken.)"""
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(21, 24, 40, True, seed=11)
    hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
    _run_and_check(hidden, weight, bias, targets, valid, 1 / 0.7, g_logp, g_ent)


def test_mixed_dtypes():
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(17, 16, 33, True, seed=12)
    _run_and_check(hidden.to(torch.float16), weight, bias, targets, valid, 1.0, g_logp, g_ent)


def test_gpu_block_sizes(monkeypatch):
    """The GPU tile sizes (BLOCK_N=64, BLOCK_V=128, BLOCK_K=64), run here under the interpreter."""
    if DEVICE == "cpu":
        monkeypatch.setattr(fl, "_INTERPRET_CONFIG", dict(fl._GPU_CONFIG, num_warps=1))
    hidden, weight, bias, targets, valid, g_logp, g_ent = _case(70, 80, 200, True, seed=13)
    _run_and_check(hidden, weight, bias, targets, valid, 1 / 0.7, g_logp, g_ent)


def test_empty_batch():
    hidden = torch.zeros(0, 16, device=DEVICE)
    weight = torch.randn(33, 16, device=DEVICE)
    targets = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    valid = torch.zeros(0, dtype=torch.bool, device=DEVICE)
    logp, ent, stats = fl.fused_linear_logprob_fwd(hidden, weight, None, targets, valid, 1.0, True)
    assert logp.shape == (0,) and ent.shape == (0,) and stats.shape == (0, 2)
    dx, dw, db = fl.fused_linear_logprob_bwd(logp, ent, hidden, weight, None, targets, valid, stats, ent, 1.0,
                                             True, True, True)
    assert dx.shape == (0, 16) and (dw == 0).all() and (db == 0).all()
