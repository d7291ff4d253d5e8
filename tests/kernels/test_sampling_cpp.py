"""The C++ CPU kernel of sample_tokens (raw contract) against the float64 spec, per CPU ISA variant.

tests/ops/test_sample_tokens.py covers every backend through the public API; this file drives the raw
binding directly over a wider grid (shapes, dtypes, strided rows, truncation with ties, penalty, bans,
extreme logits, the range of the noise) and checks the binding's validation."""
import math

import pytest
import torch

from ttrl_fast import _ext
from ttrl_fast.reference import sampling as spec

from ..conftest import CPU_ISAS

LIB = _ext.extension("cpu")
pytestmark = pytest.mark.skipif(LIB is None or not hasattr(LIB, "sample_tokens_fwd"),
                                reason="ttrl_fast._C_cpu (with sample_tokens_fwd) is not built")


# The ISA variants this CPU runs; every check runs each of them against one reference evaluation.
ISAS = [isa for isa in CPU_ISAS if LIB is not None and LIB.force_isa(isa)]
if LIB is not None:
    LIB.force_isa("")


def _run_each_isa(fn):
    outs = []
    try:
        for isa in ISAS:
            assert LIB.force_isa(isa)
            outs.append((isa, fn()))
    finally:
        LIB.force_isa("")
    return outs


def _logits(rows, vocab, dtype=torch.float32, ties=False, seed=0, scale=2.0, pad=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab + pad, generator=g, dtype=torch.float64) * scale
    if ties:
        x = torch.round(x * 2) / 2  # few distinct values: ties decide top-k / top-p boundaries
    x = x.to(dtype)
    return x[:, :vocab] if pad else x


def _keys(rows, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64)


def _params(greedy=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0):
    return [int(greedy), top_k], [1.0 / temperature, top_p, min_p, penalty]


def _check(logits, keys, step=3, seen=None, ban=None, **kw):
    """Every ISA variant against the float64 spec; returns the automatic variant's outputs."""
    ip, fp = _params(**kw)
    ref = spec.sample_tokens_fwd(logits, keys, step, seen, ban, tuple(ip), tuple(fp))
    for isa, got in _run_each_isa(lambda: LIB.sample_tokens_fwd(logits, keys, step, seen, ban, ip, fp)):
        assert got[0].dtype == torch.int64 and all(t.dtype == torch.float32 for t in got[1:])
        assert torch.equal(got[0], ref[0]), (isa, got[0], ref[0])
        for name, a, b in zip(("logp_raw", "logp_processed", "log_kept"), got[1:], ref[1:]):
            assert torch.isfinite(a).all(), (isa, name)
            assert (a <= 0).all(), f"{isa}: {name} must be <= 0"
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5, msg=f"{isa}: {name}")
    return LIB.sample_tokens_fwd(logits, keys, step, seen, ban, ip, fp)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("vocab", [1, 7, 100, 5000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_plain(rows, vocab, dtype, temperature):
    logits = _logits(rows, vocab, dtype, pad=5 if rows == 3 else 0)  # rows == 3: strided rows
    if temperature == 0.0:
        _check(logits, _keys(rows), greedy=True)
    else:
        _check(logits, _keys(rows), temperature=temperature)


@pytest.mark.parametrize("vocab", [7, 100, 5000])
@pytest.mark.parametrize("top_k", [0, 1, 5, "V"])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.3])
@pytest.mark.parametrize("min_p", [0.0, 0.05])
@pytest.mark.parametrize("ties", [False, True])
def test_truncation(vocab, top_k, top_p, min_p, ties):
    top_k = vocab if top_k == "V" else top_k
    logits = _logits(17, vocab, ties=ties, seed=vocab + top_k)
    out = _check(logits, _keys(17), top_k=top_k, top_p=top_p, min_p=min_p, temperature=0.7)
    if top_k in (0, vocab) and top_p == 1.0 and min_p == 0.0:
        assert (out[3] == 0).all()  # nothing cut: exactly 0
    torch.testing.assert_close(out[1] - out[2], out[3], rtol=1e-5, atol=1e-5)  # same temperature: raw = proc + kept


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ties", [False, True])
def test_truncation_low_precision_and_strided(dtype, ties):
    logits = _logits(9, 1000, dtype, ties=ties, pad=5)
    for top_k, top_p, min_p in [(20, 1.0, 0.0), (0, 0.9, 0.0), (0, 0.5, 0.0), (40, 0.8, 0.1), (0, 1.0, 0.2)]:
        _check(logits, _keys(9), top_k=top_k, top_p=top_p, min_p=min_p, temperature=1.3)


def test_large_vocab_boundary_bins():
    """Many tokens per histogram bin around the top-p / top-k boundary (flat distribution)."""
    logits = _logits(4, 60000, scale=0.5)
    for top_k, top_p in [(30000, 1.0), (0, 0.9), (0, 0.5), (45000, 0.95), (7, 0.9)]:
        _check(logits, _keys(4), top_k=top_k, top_p=top_p, temperature=1.0)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_penalty_and_bans(penalty, dtype):
    logits = _logits(17, 300, dtype, seed=4, pad=3)
    seen = torch.rand(17, 300, generator=torch.Generator().manual_seed(5)) < 0.3
    ban = torch.tensor([0, 4, 9, 299])
    _check(logits, _keys(17), seen=seen, penalty=penalty, temperature=0.8)
    _check(logits, _keys(17), ban=ban, temperature=0.8, top_p=0.9)
    _check(logits, _keys(17), seen=seen, ban=ban, penalty=penalty, temperature=0.8, top_k=10, min_p=0.05)
    _check(logits, _keys(17), seen=seen, ban=ban, penalty=penalty, greedy=True)
    _check(logits, _keys(17), seen=None, ban=torch.zeros(0, dtype=torch.int64), penalty=penalty, temperature=0.8)


def test_banned_maximum():
    logits = _logits(5, 64)
    top = logits.argmax(-1)
    ban = torch.unique(top)
    _check(logits, _keys(5), ban=ban, greedy=True)
    _check(logits, _keys(5), ban=ban, temperature=0.5, top_k=3)


def test_extreme_logits():
    base = _logits(6, 131)
    base[0, :10] = 1e4
    base[1, 5:] = -1e4
    base[2, 3] = -math.inf
    base[3, ::2] = -math.inf
    base[4] = 0.0  # all tied
    base[5, 7] = 50.0  # one certain token
    seen = torch.rand(6, 131, generator=torch.Generator().manual_seed(3)) < 0.2
    for kw in [dict(temperature=0.8), dict(greedy=True), dict(temperature=1.0, top_k=5), dict(temperature=0.7, top_p=0.3),
               dict(temperature=0.7, min_p=0.5), dict(temperature=1.2, top_k=1)]:
        _check(base, _keys(6), **kw)
        _check(base, _keys(6), seen=seen, penalty=1.3, **kw)


def test_all_tied_rows_pick_by_noise():
    logits = torch.zeros(64, 10)
    out = _check(logits, torch.arange(64), temperature=1.0)
    assert len(set(out[0].tolist())) > 3
    out = _check(logits, torch.arange(64), temperature=1.0, top_k=4)  # all ties kept together
    torch.testing.assert_close(out[3], torch.zeros(64))


def test_uniform_never_reaches_one():
    """u = ((h >> 9) + 0.5) 2^-23 is exact in fp32 and at most 1 - 2^-24: no token gets E = 0 (which
    would win every race it is in, however improbable)."""
    u = spec.uniform_noise(torch.arange(4000, dtype=torch.int64), 0, 4096)
    assert float(u.max()) <= 1 - 2 ** -24 and float(u.min()) >= 2 ** -24
    assert torch.equal(((u.double() / 2 ** -24 - 1) % 2), torch.zeros_like(u, dtype=torch.float64))  # odd / 2^24


def test_rows_are_independent():
    logits = _logits(33, 2000)
    keys = _keys(33)
    ip, fp = _params(temperature=0.9, top_p=0.9)
    whole = LIB.sample_tokens_fwd(logits, keys, 7, None, None, ip, fp)
    for r in (0, 5, 32):
        one = LIB.sample_tokens_fwd(logits[r:r + 1], keys[r:r + 1], 7, None, None, ip, fp)
        for a, b in zip(whole, one):
            assert torch.equal(a[r:r + 1], b)
    again = LIB.sample_tokens_fwd(logits, keys, 7, None, None, ip, fp)
    assert all(torch.equal(a, b) for a, b in zip(whole, again))


def test_step_and_key_are_hashed_mod_2_32():
    logits = _logits(4, 500)
    ip, fp = _params(temperature=1.0)
    keys = _keys(4)
    a = LIB.sample_tokens_fwd(logits, keys, 5, None, None, ip, fp)
    b = LIB.sample_tokens_fwd(logits, keys, 5 + 2 ** 32, None, None, ip, fp)
    assert torch.equal(a[0], b[0])
    _check(logits, keys, step=2 ** 33 + 11, temperature=1.0)


def test_empty_batch():
    out = LIB.sample_tokens_fwd(torch.zeros(0, 10), torch.zeros(0, dtype=torch.int64), 0, None, None, [0, 0],
                                [1.0, 1.0, 0.0, 1.0])
    assert [t.shape for t in out] == [torch.Size([0])] * 4


def _call(logits=None, keys=None, step=0, seen=None, ban=None, ip=None, fp=None):
    logits = torch.randn(2, 5) if logits is None else logits
    keys = torch.zeros(2, dtype=torch.int64) if keys is None else keys
    return LIB.sample_tokens_fwd(logits, keys, step, seen, ban, [0, 0] if ip is None else ip,
                                 [1.0, 1.0, 0.0, 1.0] if fp is None else fp)


@pytest.mark.parametrize("kwargs,match", [
    (dict(logits=torch.randn(2, 5, 3)), "logits must be 2-D"),
    (dict(logits=torch.randn(2, 5, dtype=torch.float64)), "logits must be float32"),
    (dict(logits=torch.randn(2, 0)), "non-empty vocabulary"),
    (dict(logits=torch.randn(5, 2).t()), r"stride\(-1\) == 1"),
    (dict(keys=torch.zeros(3, dtype=torch.int64)), r"row_keys .*\[R\] = \[2\]"),
    (dict(keys=torch.zeros(2, dtype=torch.int32)), "row_keys must be a contiguous CPU int64"),
    (dict(step=-1), "step must be >= 0"),
    (dict(seen=torch.zeros(2, 4, dtype=torch.bool)), r"seen must be .*\[R, V\] = \[2, 5\]"),
    (dict(seen=torch.zeros(2, 5)), "seen must be a contiguous CPU bool"),
    (dict(seen=torch.zeros(5, 2, dtype=torch.bool).t()), "not contiguous"),
    (dict(ban=torch.tensor([5])), r"ban_ids must lie in \[0, V\)"),
    (dict(ban=torch.tensor([-1])), r"ban_ids must lie in \[0, V\)"),
    (dict(ban=torch.tensor([[1]])), "ban_ids must be a contiguous 1-D CPU int64"),
    (dict(ip=[0]), "iparams must hold 2 ints"),
    (dict(fp=[1.0, 1.0, 0.0]), "fparams must hold 4 floats"),
    (dict(ip=[2, 0]), "greedy"),
    (dict(ip=[0, -1]), "top_k"),
    (dict(fp=[0.0, 1.0, 0.0, 1.0]), "inv_temperature"),
    (dict(fp=[math.inf, 1.0, 0.0, 1.0]), "inv_temperature"),
    (dict(fp=[1e300, 1.0, 0.0, 1.0]), "inv_temperature"),
    (dict(fp=[1.0, 0.0, 0.0, 1.0]), "top_p"),
    (dict(fp=[1.0, 1.5, 0.0, 1.0]), "top_p"),
    (dict(fp=[1.0, math.nan, 0.0, 1.0]), "top_p"),
    (dict(fp=[1.0, 1.0, -0.1, 1.0]), "min_p"),
    (dict(fp=[1.0, 1.0, 1.1, 1.0]), "min_p"),
    (dict(fp=[1.0, 1.0, 0.0, 0.0]), "repetition_penalty"),
    (dict(fp=[1.0, 1.0, 0.0, math.inf]), "repetition_penalty"),
])
def test_validation(kwargs, match):
    with pytest.raises(RuntimeError, match=match):
        _call(**kwargs)
