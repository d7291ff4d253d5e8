"""Triton sample_tokens kernel against the float64 spec (ttrl_fast/reference/sampling.py).

Without CUDA the kernel runs on CPU under TRITON_INTERPRET=1 (set before the kernel module is
imported). The interpreter is slow, so shapes stay small; its chunk cap is 64, so V = 100 and 1000
take the multi-chunk paths of every pass. The interpreter has no bfloat16: fp32 and fp16 only.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402

from ttrl_fast.reference import sampling as spec  # noqa: E402

from . import load_kernel_module  # noqa: E402

pytest.importorskip("triton")

smp = load_kernel_module("sampling")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-5, atol=1e-5)

# The interpreter's numpy ops warn on exp overflow / log(0) in lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True, params=[64] + ([None] if DEVICE == "cuda" else []), ids=lambda p: f"cap{p}")
def block_cap(request, monkeypatch):
    """Chunk cap 64 everywhere; on a GPU the default launch configuration runs as well."""
    if request.param is not None:
        monkeypatch.setattr(smp, "_GPU_MAX_BLOCK_V", request.param)
        monkeypatch.setattr(smp, "_GPU_MAX_BLOCK_S", min(request.param, smp._GPU_MAX_BLOCK_S))
        monkeypatch.setattr(smp, "_INTERPRET_MAX_BLOCK_V", request.param)


def _logits(rows, vocab, dtype=torch.float32, ties=False, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale
    if ties:
        x = torch.round(x * 2) / 2  # few distinct values: ties decide top-k / top-p / argmax
    return x.to(dtype).to(DEVICE)


def _keys(rows, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64).to(DEVICE)


def _seen(rows, vocab, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed + 2)
    return (torch.rand(rows, vocab, generator=g) < p).to(DEVICE)


def _params(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0):
    greedy = temperature == 0
    return [int(greedy), top_k], [1.0 if greedy else 1.0 / temperature, top_p, min_p, penalty]


def _run(logits, keys, step=3, seen=None, ban=None, **kw):
    """Kernel vs spec: identical tokens, log-probs within TOL, finite and <= 0. Returns the kernel's."""
    iparams, fparams = _params(**kw)
    got = smp.sample_tokens_fwd(logits, keys, step, seen, ban, iparams, fparams)
    ref = spec.sample_tokens_fwd(logits.cpu(), keys.cpu(), step, None if seen is None else seen.cpu(),
                                 None if ban is None else ban.cpu(), iparams, fparams)
    tokens, *logps = got
    assert tokens.dtype == torch.int64 and tokens.shape == (logits.shape[0],)
    assert torch.equal(tokens.cpu(), ref[0]), (tokens.cpu(), ref[0])
    for name, a, b in zip(("logp_raw", "logp_processed", "log_kept"), logps, ref[1:]):
        assert a.dtype == torch.float32 and a.shape == (logits.shape[0],)
        assert torch.isfinite(a).all(), (name, a)  # finite inputs never give NaN
        torch.testing.assert_close(a.cpu().double(), b.double(), **TOL, msg=name)
        assert (a <= 0).all(), name
    return got


def test_uniform_noise_is_bit_exact():
    keys = torch.tensor([0, 1, 12345, 2 ** 31, 2 ** 32 - 1, 0x9E3779B9], dtype=torch.int64, device=DEVICE)
    for step in (0, 1, 17, 2 ** 31 + 5, 2 ** 32 - 1):
        got = smp.uniform_noise(keys, step, 300).cpu()
        assert torch.equal(got.view(torch.int32), spec.uniform_noise(keys.cpu(), step, 300).view(torch.int32))


def test_uniform_noise_stays_below_one():
    keys = torch.arange(300, dtype=torch.int64, device=DEVICE)
    u = smp.uniform_noise(keys, 5, 700).cpu()
    assert float(u.max()) <= 1 - 2 ** -24 and float(u.min()) >= 2 ** -24
    assert torch.equal(u, spec.uniform_noise(keys.cpu(), 5, 700))


@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (5, 100), (3, 1000)])
@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7, 1.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_plain_matches_reference(rows, vocab, temperature, dtype):
    _run(_logits(rows, vocab, dtype), _keys(rows), temperature=temperature)


TRUNCATIONS = [(k, p, m) for k in (0, 1, 5) for p in (1.0, 0.9, 0.3) for m in (0.0, 0.05)]


@pytest.mark.parametrize("top_k,top_p,min_p", TRUNCATIONS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_truncation_matches_reference(top_k, top_p, min_p, ties):
    logits = _logits(5, 100, ties=ties, seed=top_k)
    _, raw, processed, kept = _run(logits, _keys(5, seed=3), temperature=0.9, top_k=top_k, top_p=top_p,
                                   min_p=min_p)
    # without penalty or bans z = x * inv_t, so logp_raw - logp_processed = log_kept
    torch.testing.assert_close(raw - processed, kept, **TOL)


@pytest.mark.parametrize("top_k,top_p,min_p,dtype", [(5, 1.0, 0.0, torch.float32), (0, 0.9, 0.0, torch.float16),
                                                     (7, 0.8, 0.02, torch.float32), (0, 1.0, 0.05, torch.float16)])
def test_truncation_large_vocab(top_k, top_p, min_p, dtype):
    _run(_logits(2, 1000, dtype, scale=3.0), _keys(2, seed=5), temperature=1.1, top_k=top_k, top_p=top_p,
         min_p=min_p)


def test_tied_values_are_kept_or_cut_together():
    row = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    logits = row.float().to(DEVICE).repeat(2, 1)
    keys = _keys(2)
    total = row.exp().sum().item()
    # sorted: 3 3 3 | 2 2 | 1 | 0; top_k >= V is off
    for top_k, groups in ((1, [3.0]), (2, [3.0]), (3, [3.0]), (4, [3.0, 2.0]), (5, [3.0, 2.0]),
                          (6, [3.0, 2.0, 1.0]), (7, None), (9, None)):
        kept = _run(logits, keys, top_k=top_k)[3]
        want = 0.0 if groups is None else math.log(sum(math.exp(v) * int((row == v).sum()) for v in groups) / total)
        torch.testing.assert_close(kept.cpu(), torch.full((2,), want), **TOL)
    for top_p in (0.2, 0.9):
        _run(logits, keys, top_p=top_p)
    _run(logits, keys, min_p=0.3)
    tokens = _run(logits, keys, temperature=0.0)[0]
    assert tokens.tolist() == [1] * 2  # greedy: the first maximum


def test_top_p_tiny_keeps_only_the_maximum_group():
    logits = _logits(3, 100, ties=True)
    tokens = _run(logits, _keys(3), top_p=1e-6)[0].cpu()
    x = logits.cpu().double()
    assert (x.gather(1, tokens[:, None]) == x.max(-1, keepdim=True).values).all()


@pytest.mark.parametrize("penalty", [1.3, 0.7])
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 5, 0.9)])
def test_penalty_and_bans(penalty, temperature, top_k, top_p):
    rows, vocab = 5, 100
    logits = _logits(rows, vocab, ties=True)
    ban = torch.tensor([3, 0, 99, 3, 41], device=DEVICE)  # a duplicate id is fine
    _run(logits, _keys(rows), seen=_seen(rows, vocab), ban=ban, temperature=temperature, top_k=top_k,
         top_p=top_p, penalty=penalty)


def test_penalty_one_ignores_seen_and_empty_ban():
    logits, keys = _logits(3, 100), _keys(3)
    a = smp.sample_tokens_fwd(logits, keys, 3, _seen(3, 100), torch.empty(0, dtype=torch.int64, device=DEVICE),
                              [0, 0], [1.0, 1.0, 0.0, 1.0])
    b = smp.sample_tokens_fwd(logits, keys, 3, None, None, [0, 0], [1.0, 1.0, 0.0, 1.0])
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_ban_makes_greedy_skip_the_maximum():
    logits = _logits(3, 100)
    top = logits.argmax(-1)
    out = _run(logits, _keys(3), ban=top.unique(), temperature=0.0)
    assert not torch.isin(out[0], top).any()


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_strided_rows(temperature, top_p):
    base = _logits(4, 160)
    sliced = base[:, 20:120]  # row stride 160, read in place
    assert sliced.stride() == (160, 1)
    _run(sliced, _keys(4), temperature=temperature, top_p=top_p)
    expanded = base[:1, :100].expand(3, 100)  # row stride 0: the same row thrice, different keys
    tokens = _run(expanded, _keys(3, seed=9), temperature=temperature, top_p=top_p)[0]
    if temperature == 0.0:
        assert tokens.tolist() == [int(base[0, :100].argmax())] * 3


def test_extreme_values():
    vocab = 100
    x = _logits(6, vocab).cpu()
    x[0, :10] = 1e4  # a large common offset, tied maxima
    x[1] += 3e4
    x[2, 5:] = -1e4  # most of the row underflows
    x[3, ::3] = -math.inf  # masked vocabulary entries
    x[4, 1:] = -1e30  # one drawable token in practice
    x[5] = 0.5  # all tied
    logits = x.to(DEVICE)
    keys = _keys(6)
    for kw in (dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.3, top_k=5),
               dict(temperature=2.0, top_p=0.5, min_p=0.05)):
        _run(logits, keys, **kw)
    half = torch.tensor([[65504.0, -65504.0, 0.0, 65504.0, 1.0]], dtype=torch.float16, device=DEVICE)
    _run(half, _keys(1), temperature=0.25, top_p=0.9)


@pytest.mark.parametrize("seed", range(10))
def test_random_configurations(seed):
    """Everything at once, drawn at random: penalty, bans, truncation, ties, fp16, temperatures."""
    g = torch.Generator().manual_seed(100 + seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    rows, vocab = pick([1, 3, 4]), pick([2, 7, 33, 64])
    logits = _logits(rows, vocab, pick([torch.float32, torch.float16]), ties=pick([False, True]),
                     scale=pick([0.5, 2.0, 5.0]), seed=seed)
    ban = torch.randperm(vocab, generator=g)[:pick([0, 1, 2])].to(DEVICE) if vocab > 2 else None
    _run(logits, _keys(rows, seed=seed), step=seed, seen=_seen(rows, vocab, seed=seed) if pick([0, 1]) else None,
         ban=ban, temperature=pick([0.0, 0.5, 1.0, 1.5]), top_k=pick([0, 1, 3, 50]), top_p=pick([1.0, 0.95, 0.5]),
         min_p=pick([0.0, 0.1]), penalty=pick([1.0, 1.2, 0.8]))


def test_poisoned_rows_are_nan():
    logits = _logits(3, 100)
    logits[0, 7] = math.nan
    logits[1, 50] = math.inf
    tokens, *logps = smp.sample_tokens_fwd(logits, _keys(3), 0, None, None, [0, 0], [1.0, 0.9, 0.0, 1.0])
    for t in logps:
        assert t[:2].isnan().all() and torch.isfinite(t[2])
    assert ((tokens >= 0) & (tokens < 100)).all()


def test_steps_and_keys_change_the_draw():
    logits = torch.zeros(1, 64, device=DEVICE).expand(8, 64)  # uniform: the draw is the noise argmax
    keys = torch.arange(8, dtype=torch.int64, device=DEVICE)
    a = _run(logits, keys, step=0)[0]
    b = _run(logits, keys, step=1)[0]
    assert len(set(a.tolist())) > 1 and not torch.equal(a, b)


def test_empty_batch():
    out = smp.sample_tokens_fwd(torch.empty(0, 10, device=DEVICE), torch.empty(0, dtype=torch.int64, device=DEVICE),
                                0, None, None, [0, 0], [1.0, 1.0, 0.0, 1.0])
    assert [t.shape for t in out] == [(0,)] * 4 and out[0].dtype == torch.int64


def test_validation_errors():
    logits, keys = _logits(2, 10), _keys(2)
    ok_i, ok_f = [0, 0], [1.0, 1.0, 0.0, 1.0]

    def call(lg=logits, k=keys, step=0, seen=None, ban=None, ip=ok_i, fp=ok_f):
        return smp.sample_tokens_fwd(lg, k, step, seen, ban, ip, fp)

    with pytest.raises(ValueError, match=r"logits must be \[R, V\]"):
        call(lg=logits[0])
    with pytest.raises(ValueError, match="V >= 1"):
        call(lg=logits[:, :0])
    with pytest.raises(ValueError, match="stride"):
        call(lg=logits.t().contiguous().t())
    with pytest.raises(TypeError, match="dtype"):
        call(lg=logits.double())
    with pytest.raises(ValueError, match=r"row_keys must be \[R\] = \(2,\) int64"):
        call(k=keys[:1])
    with pytest.raises(ValueError, match="row_keys"):
        call(k=keys.int())
    with pytest.raises(ValueError, match="step"):
        call(step=-1)
    with pytest.raises(ValueError, match=r"seen must be \[R, V\] = \(2, 10\) bool"):
        call(seen=torch.zeros(2, 9, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="seen"):
        call(seen=torch.zeros(2, 10, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(ValueError, match=r"ban_ids must be \[S\] int64"):
        call(ban=torch.zeros(2, 1, dtype=torch.int64, device=DEVICE))
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match=r"ban_ids must be in \[0, V=10\)"):
            call(ban=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="2 iparams"):
        call(ip=[0])
    with pytest.raises(ValueError, match="4 fparams"):
        call(fp=[1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="greedy"):
        call(ip=[2, 0])
    with pytest.raises(ValueError, match="inv_temperature"):
        call(fp=[0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="inv_temperature"):
        call(fp=[math.inf, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="top_p"):
        call(fp=[1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="min_p"):
        call(fp=[1.0, 1.0, 1.5, 1.0])
    with pytest.raises(ValueError, match="repetition_penalty"):
        call(fp=[1.0, 1.0, 0.0, 0.0])
    call(ip=[1, 0], fp=[0.0, 1.0, 0.0, 1.0])  # greedy ignores the temperature
