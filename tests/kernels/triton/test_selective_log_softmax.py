"""Triton selective_log_softmax kernels against a float64 torch ground truth.

Without CUDA the kernels run on CPU under TRITON_INTERPRET=1, which triton reads when a kernel is
decorated: it has to be set before the kernel module is imported. Shapes stay tiny because the
interpreter is slow; the chunk cap is lowered to 64 so that V = 97 / 300 take the multi-chunk path.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402

from . import load_kernel_module  # noqa: E402

pytest.importorskip("triton")

sls = load_kernel_module("selective_log_softmax")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-5, atol=1e-5)

# The interpreter's numpy ops warn on log(0) / 0 * inf in lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True, params=[64] + ([None] if DEVICE == "cuda" else []), ids=lambda p: f"cap{p}")
def block_cap(request, monkeypatch):
    """Chunk cap 64 everywhere; on a GPU the default launch configuration runs as well."""
    if request.param is not None:
        monkeypatch.setattr(sls, "_GPU_MAX_BLOCK_V", request.param)
        monkeypatch.setattr(sls, "_INTERPRET_MAX_BLOCK_V", request.param)


def _reference(logits, index, mask, inv_t, g_logp=None, g_ent=None):
    """float64 ground truth: (logp, entropy, stats, grad_logits or None)."""
    A, B, V = logits.shape
    rows = A * B
    keep = torch.ones(rows, dtype=torch.bool) if mask is None else mask.cpu()
    x = logits.detach().cpu().to(torch.float64).requires_grad_(True)
    # Masked rows may hold garbage (NaN logits, any index): zero them before they reach any math.
    x_eff = torch.where(keep.view(A, B, 1), x, torch.zeros_like(x))
    lsm = torch.log_softmax(x_eff * inv_t, dim=-1).reshape(rows, V)
    logp = lsm.gather(1, index.cpu().clamp(0, V - 1)[:, None]).squeeze(1)
    p = lsm.exp()
    # p == 0 terms count 0; the where keeps 0 * (-inf) out of the values and of the gradient.
    ent = -(p * torch.where(p > 0, lsm, torch.zeros_like(lsm))).sum(-1)
    logp = torch.where(keep, logp, torch.zeros_like(logp))
    ent = torch.where(keep, ent, torch.zeros_like(ent))

    flat = x_eff.detach().reshape(rows, V)
    row_max = flat.max(-1).values
    log_sum = torch.logsumexp((flat - row_max[:, None]) * inv_t, dim=-1)
    stats = torch.stack([row_max, log_sum], dim=-1) * keep[:, None]

    grad = None
    terms = []
    if g_logp is not None:
        terms.append((g_logp.cpu().double() * logp).sum())
    if g_ent is not None:
        terms.append((g_ent.cpu().double() * ent).sum())
    if terms:
        (grad,) = torch.autograd.grad(sum(terms), x)
    return logp, ent, stats, grad


def _close(actual, expected, **tol):
    torch.testing.assert_close(actual.cpu().float(), expected.float(), **(tol or TOL))


def _make_case(A, B, V, offset, seed, neg_inf=True, mask_p=0.7):
    gen = torch.Generator().manual_seed(seed)
    rows = A * B
    logits = torch.randn(A, B, V, generator=gen) * 3 + offset
    index = torch.randint(0, V, (rows,), generator=gen)
    if neg_inf and V > 1:
        flat = logits.view(rows, V)
        flat[torch.rand(rows, V, generator=gen) < 0.15] = float("-inf")
        # The target is never -inf, so no row is entirely -inf either.
        flat[torch.arange(rows), index] = (torch.randn(rows, generator=gen) * 3 + offset)
    mask = torch.rand(rows, generator=gen) < mask_p
    mask[0] = True
    g_logp = torch.randn(rows, generator=gen)
    g_ent = torch.randn(rows, generator=gen)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return to(logits), to(index), to(mask), to(g_logp), to(g_ent)


def _run_and_check(logits, index, mask, inv_t, g_logp, g_ent, with_entropy=True):
    logp, ent, stats = sls.selective_log_softmax_fwd(logits, index, mask, inv_t, with_entropy)
    grad = sls.selective_log_softmax_bwd(g_logp, g_ent, logits, index, mask, stats, ent, inv_t)
    r_logp, r_ent, r_stats, r_grad = _reference(logits, index, mask, inv_t, g_logp, g_ent)

    rows = index.numel()
    assert logp.shape == (rows,) and logp.dtype == torch.float32
    assert stats.shape == (rows, 2) and stats.dtype == torch.float32
    _close(logp, r_logp)
    _close(stats, r_stats)
    if with_entropy:
        assert ent.shape == (rows,) and ent.dtype == torch.float32
        _close(ent, r_ent)
    else:
        assert ent.numel() == 0
    assert grad.shape == logits.shape and grad.dtype == logits.dtype and grad.is_contiguous()
    if r_grad is None:
        r_grad = torch.zeros(logits.shape, dtype=torch.float64)
    _close(grad, r_grad)
    if mask is not None:
        assert (grad.view(rows, -1)[~mask] == 0).all()
    return logp, ent, stats, grad


_SHAPES = [(1, 1), (2, 3), (3, 5)]


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4], ids=["off0", "off+1e4", "off-1e4"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("shape", _SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("V", [1, 97, 300])
def test_matches_float64(V, shape, temperature, offset):
    seed = hash((V, shape, temperature, offset)) % 2**31
    logits, index, mask, g_logp, g_ent = _make_case(*shape, V, offset, seed)
    _run_and_check(logits, index, mask, 1.0 / temperature, g_logp, g_ent)


@pytest.mark.parametrize("with_entropy", [True, False])
@pytest.mark.parametrize("V", [97, 300])
def test_without_entropy_gradient(V, with_entropy):
    """grad_entropy None skips the entropy term, with or without an entropy from the forward."""
    logits, index, mask, g_logp, _ = _make_case(3, 5, V, 0.0, seed=V)
    _run_and_check(logits, index, mask, 1 / 1.3, g_logp, None, with_entropy=with_entropy)


def test_entropy_gradient_only_and_no_gradients():
    logits, index, mask, _, g_ent = _make_case(2, 3, 300, 5.0, seed=7)
    _run_and_check(logits, index, mask, 1 / 0.7, None, g_ent)
    _run_and_check(logits, index, mask, 1 / 0.7, None, None)


def test_mask_none_equals_all_true():
    logits, index, _, g_logp, g_ent = _make_case(3, 5, 97, 0.0, seed=11)
    out_none = _run_and_check(logits, index, None, 1.0, g_logp, g_ent)
    all_true = torch.ones_like(index, dtype=torch.bool)
    out_true = _run_and_check(logits, index, all_true, 1.0, g_logp, g_ent)
    for a, b in zip(out_none, out_true):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_masked_rows_are_zero_even_with_garbage():
    """Masked rows are never read: NaN logits and an out-of-range index there change nothing."""
    logits, index, mask, g_logp, g_ent = _make_case(2, 3, 97, 0.0, seed=3)
    mask[:] = True
    mask[4] = False
    logits[1, 1, 5] = float("nan")  # row 4
    index[4] = 10**6
    logp, ent, stats, grad = _run_and_check(logits, index, mask, 1.0, g_logp, g_ent)
    assert logp[4] == 0 and ent[4] == 0 and (stats[4] == 0).all()
    assert (grad[1, 1] == 0).all()


@pytest.mark.parametrize("view", ["drop_last_b", "padded_vocab", "transposed"])
def test_non_contiguous_views(view):
    gen = torch.Generator().manual_seed(5)
    A, B, V = 3, 5, 97
    if view == "drop_last_b":  # the typical logits[:, :-1, :]
        logits = torch.randn(A, B + 1, V, generator=gen)[:, :-1, :]
    elif view == "padded_vocab":  # row pitch larger than V
        logits = torch.randn(A, B, V + 7, generator=gen)[..., :V]
    else:  # stride(0) < stride(1)
        logits = torch.randn(B, A, V, generator=gen).transpose(0, 1)
    logits = logits.to(DEVICE)
    assert not logits.is_contiguous() and logits.stride(-1) == 1
    rows = A * B
    index = torch.randint(0, V, (rows,), generator=gen).to(DEVICE)
    mask = (torch.rand(rows, generator=gen) < 0.8).to(DEVICE)
    g_logp = torch.randn(rows, generator=gen).to(DEVICE)
    g_ent = torch.randn(rows, generator=gen).to(DEVICE)
    _run_and_check(logits, index, mask, 1 / 0.7, g_logp, g_ent)


@pytest.mark.parametrize("V", [128, 300])
def test_chunk_boundaries(V):
    """Leading all -inf chunk (empty state), a max that grows chunk after chunk, target in the
    last (partial) chunk, and a max that sits in the first chunk only."""
    A, B = 1, 3
    ramp = torch.arange(V, dtype=torch.float32) * 0.05
    logits = torch.stack([ramp, -ramp, ramp.flip(0) + 1e4]).reshape(A, B, V)
    logits[0, 0, :64] = float("-inf")
    logits[0, 1, 70:90] = float("-inf")
    index = torch.tensor([V - 1, 0, V // 2])
    mask = torch.ones(3, dtype=torch.bool)
    g = torch.tensor([0.5, -1.0, 2.0])
    args = [t.to(DEVICE) for t in (logits, index, mask, g, -g)]
    _run_and_check(*args[:3], 1 / 1.3, *args[3:])


def test_nan_and_inf_poison_the_row():
    logits, index, _, _, _ = _make_case(2, 3, 300, 0.0, seed=13, neg_inf=False)
    logits[0, 0, 250] = float("nan")  # row 0, away from the first chunk
    logits[0, 2, 3] = float("inf")  # row 2
    logits[1, 0, index[3]] = float("nan")  # row 3: NaN target
    logp, ent, stats = sls.selective_log_softmax_fwd(logits, index, None, 1.0, True)
    poisoned = torch.tensor([True, False, True, True, False, False], device=DEVICE)
    assert logp[poisoned].isnan().all() and ent[poisoned].isnan().all()
    assert stats[poisoned].isnan().all()
    assert logp[~poisoned].isfinite().all() and ent[~poisoned].isfinite().all()
    r_logp, r_ent, _, _ = _reference(logits, index, None, 1.0)
    _close(logp[~poisoned], r_logp[~poisoned.cpu()])
    _close(ent[~poisoned], r_ent[~poisoned.cpu()])
    grad = sls.selective_log_softmax_bwd(torch.ones_like(logp), None, logits, index, None, stats, ent, 1.0)
    assert grad[0, 0].isnan().all() and grad[0, 1].isfinite().all()


def test_out_of_range_index_gives_nan():
    logits, index, _, _, _ = _make_case(2, 3, 97, 0.0, seed=17)
    index[1] = -1
    index[4] = 97
    logp, ent, _ = sls.selective_log_softmax_fwd(logits, index, None, 1.0, True)
    bad = torch.zeros(6, dtype=torch.bool, device=DEVICE)
    bad[[1, 4]] = True
    assert logp[bad].isnan().all()
    assert logp[~bad].isfinite().all() and ent.isfinite().all()


def test_logp_never_positive():
    """Certain tokens (one dominant logit, V = 1) must give logp <= 0, never +1 ulp."""
    V = 97
    rows = []
    for big, offset in itertools.product([30.0, 100.0, 1e3], [0.0, 1e4, -1e4]):
        row = torch.full((V,), offset)
        row[7] = offset + big
        rows.append(row)
    logits = torch.stack(rows)[None].to(DEVICE)  # [1, 9, V]
    index = torch.full((len(rows),), 7, device=DEVICE)
    for inv_t in (1 / 0.7, 1.0, 1 / 1.3):
        logp, ent, _ = sls.selective_log_softmax_fwd(logits, index, None, inv_t, True)
        assert (logp <= 0).all() and (ent >= 0).all()
    one = torch.randn(2, 3, 1, device=DEVICE) * 1e4
    logp, ent, _ = sls.selective_log_softmax_fwd(one, torch.zeros(6, dtype=torch.long, device=DEVICE), None, 1.3, True)
    assert (logp == 0).all() and (ent == 0).all()


def test_float16_logits():
    logits, index, mask, g_logp, g_ent = _make_case(2, 3, 97, 0.0, seed=19)
    logits16 = logits.half()
    logp, ent, stats = sls.selective_log_softmax_fwd(logits16, index, mask, 1.0, True)
    grad = sls.selective_log_softmax_bwd(g_logp, g_ent, logits16, index, mask, stats, ent, 1.0)
    assert grad.dtype == torch.float16
    r_logp, r_ent, _, r_grad = _reference(logits16.float(), index, mask, 1.0, g_logp, g_ent)
    _close(logp, r_logp)
    _close(ent, r_ent)
    _close(grad, r_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter has no bfloat16")
def test_bfloat16_logits():
    logits, index, mask, g_logp, g_ent = _make_case(2, 3, 300, 0.0, seed=23)
    logits16 = logits.bfloat16()
    logp, ent, stats = sls.selective_log_softmax_fwd(logits16, index, mask, 1.0, True)
    grad = sls.selective_log_softmax_bwd(g_logp, g_ent, logits16, index, mask, stats, ent, 1.0)
    assert grad.dtype == torch.bfloat16
    r_logp, r_ent, _, r_grad = _reference(logits16.float(), index, mask, 1.0, g_logp, g_ent)
    _close(logp, r_logp)
    _close(ent, r_ent)
    _close(grad, r_grad, rtol=2e-2, atol=2e-3)
