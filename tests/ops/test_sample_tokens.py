"""sample_tokens on every backend against the float64 spec (ttrl_fast/reference/sampling.py), plus the
statistical properties the spec promises (exact draws from the truncated distribution)."""
import math

import pytest
import torch

import ttrl_fast
from ttrl_fast.reference import sampling as spec

from ..conftest import DEVICE


def _logits(rows, vocab, dtype=torch.float32, ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2
    if ties:
        x = torch.round(x * 2) / 2  # few distinct values: ties matter for top-k / top-p
    return x.to(dtype).to(DEVICE)


def _keys(rows, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64).to(DEVICE)


def _check(backend, logits, keys, step=3, seen=None, ban=None, **kw):
    got = ttrl_fast.sample_tokens(logits, row_keys=keys, step=step, seen=seen, ban_ids=ban, backend=backend, **kw)
    ref = ttrl_fast.sample_tokens(logits, row_keys=keys, step=step, seen=seen, ban_ids=ban, backend="reference", **kw)
    assert torch.equal(got.tokens.cpu(), ref.tokens.cpu())
    for name in ("logprobs", "processed_logprobs", "log_kept_mass"):
        a, b = getattr(got, name).cpu().double(), getattr(ref, name).cpu().double()
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
        assert (a <= 0).all(), f"{name} must be <= 0"
    return got


@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (5, 100), (17, 1000)])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_matches_reference_plain(backend, rows, vocab, temperature):
    _check(backend, _logits(rows, vocab), _keys(rows), temperature=temperature)


@pytest.mark.parametrize("top_k,top_p,min_p", [(1, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.9, 0.0), (0, 0.3, 0.0),
                                               (0, 1.0, 0.05), (7, 0.8, 0.02)])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_truncated(backend, top_k, top_p, min_p, ties):
    logits = _logits(6, 300, ties=ties)
    out = _check(backend, logits, _keys(6), top_k=top_k, top_p=top_p, min_p=min_p, temperature=0.9)
    raw_minus_processed = out.logprobs - out.processed_logprobs
    torch.testing.assert_close(raw_minus_processed, out.log_kept_mass, rtol=1e-5, atol=1e-5)
    assert (out.log_kept_mass < 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    _check(backend, _logits(4, 257, dtype), _keys(4), top_p=0.9)


def test_penalty_ban_strided_extreme(backend):
    base = _logits(5, 131)
    base[0, :10] = 1e4
    base[1, 5:] = -1e4
    base[2, 3] = -math.inf
    logits = torch.cat([base, base[:, :5]], dim=1)[:, :131]  # strided rows
    seen = torch.rand(5, 131, generator=torch.Generator().manual_seed(3)).to(DEVICE) < 0.2
    ban = torch.tensor([0, 4, 9], device=DEVICE)
    _check(backend, logits, _keys(5), seen=seen, ban=ban, repetition_penalty=1.3, temperature=0.8)
    _check(backend, logits, _keys(5), seen=seen, ban=ban, repetition_penalty=0.7, temperature=0.0)


def test_draws_follow_the_truncated_distribution():
    """The exponential race with the keyed hash is an exact sampler: frequencies over many keys match
    softmax restricted to the kept set (chi-square-style bound)."""
    vocab, rows = 12, 20000
    logits = _logits(1, vocab).cpu().expand(rows, vocab).contiguous()
    keys = torch.arange(rows, dtype=torch.int64)
    out = ttrl_fast.sample_tokens(logits, row_keys=keys, top_k=6, temperature=0.8)
    z = logits[0].double() / 0.8
    kept = z >= torch.topk(z, 6).values[-1]
    p = torch.where(kept, torch.softmax(z, 0), 0.0)
    p = p / p.sum()
    freq = torch.bincount(out.tokens, minlength=vocab).double() / rows
    assert (freq[~kept] == 0).all()
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / rows)


def test_keys_make_draws_independent_of_the_batch():
    logits = _logits(8, 50).cpu()
    keys = _keys(8).cpu()
    whole = ttrl_fast.sample_tokens(logits, row_keys=keys, step=5)
    perm = torch.randperm(8)
    permuted = ttrl_fast.sample_tokens(logits[perm], row_keys=keys[perm], step=5)
    assert torch.equal(whole.tokens[perm], permuted.tokens)
    other_step = ttrl_fast.sample_tokens(logits, row_keys=keys, step=6)
    assert not torch.equal(whole.tokens, other_step.tokens)


def test_hash_is_the_documented_one():
    # mix32 of the docstring evaluated by hand for one value
    x = 0x12345678
    y = x ^ (x >> 16)
    y = (y * 0x7FEB352D) & 0xFFFFFFFF
    y ^= y >> 15
    y = (y * 0x846CA68B) & 0xFFFFFFFF
    y ^= y >> 16
    assert spec.mix32_int(x) == y
    assert int(spec.mix32(torch.tensor([x]))[0]) == y
    u = spec.uniform_noise(torch.tensor([7, 2 ** 32 - 1]), 11, 64)
    assert (u > 0).all() and (u < 1).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(min_p=-0.1), "min_p"),
    (dict(top_k=-2), "top_k"), (dict(temperature=-1.0), "temperature"), (dict(step=-1), "step"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ttrl_fast.sample_tokens(_logits(2, 5), row_keys=_keys(2), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="row_keys"):
        ttrl_fast.sample_tokens(_logits(2, 5), row_keys=_keys(3))
    with pytest.raises(ValueError, match="seen"):
        ttrl_fast.sample_tokens(_logits(2, 5), row_keys=_keys(2), seen=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ban_ids"):
        ttrl_fast.sample_tokens(_logits(2, 5), row_keys=_keys(2), ban_ids=torch.tensor([5]))
    with pytest.raises(ValueError, match="logits"):
        ttrl_fast.sample_tokens(_logits(2, 5)[0], row_keys=_keys(2))
