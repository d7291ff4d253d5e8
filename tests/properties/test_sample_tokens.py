"""Properties of sample_tokens on every backend against the float64 spec
(ttrl_fast.reference.sampling): for the same row keys and step the drawn token equals the spec's
draw, and its log-probs match; over random shapes (one row, V = 1), dtypes, temperatures (0 = greedy),
top-k / top-p / min-p (alone and combined, with tied logits), repetition penalty with a seen mask,
banned ids, -inf logits, large offsets and strided rows.

Invariants: the token is allowed (not banned, finite logit) and inside the kept set of the spec's
truncation rules; raw, processed and kept-mass log-probs are finite and <= 0; without penalty and bans
processed - raw = -log kept mass (greedy: processed = raw, kept mass 1)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ttrl_fast
from ttrl_fast.reference import sampling as spec

from .conftest import (Counter, assert_budget_spent, backend_params, device_of, float_dtypes, forced_isa, generator,
                       interpreted, isa_strategy, prop_settings)

OP = "sample_tokens"
TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@st.composite
def cases(draw, backend):
    if interpreted(backend):
        rows = draw(st.integers(1, 4))
        vocab = draw(st.one_of(st.sampled_from([1, 2, 63, 64, 65]), st.integers(1, 90)))
    else:
        rows = draw(st.integers(1, 9))
        vocab = draw(st.one_of(st.sampled_from([1, 2, 3, 64, 65, 257, 1000, 5000]), st.integers(1, 700)))
    return dict(
        rows=rows, vocab=vocab,
        dtype=draw(st.sampled_from(float_dtypes(backend))),
        temperature=draw(st.one_of(st.sampled_from([0.0, 0.0, 0.7, 1.0, 1.3]), st.floats(0.05, 5.0))),
        top_k=draw(st.sampled_from([0, 0, -1, 1, 2, 5, vocab, vocab + 3])),
        top_p=draw(st.sampled_from([1.0, 1.0, 0.95, 0.5, 0.1, 1e-3])),
        min_p=draw(st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0])),
        penalty=draw(st.sampled_from([1.0, 1.0, 1.3, 0.7])),
        seen=draw(st.booleans()),
        ban=draw(st.sampled_from([0, 0, 1, 3])),
        scale=draw(st.sampled_from([0.0, 0.5, 2.0, 10.0])),
        ties=draw(st.booleans()),
        offset=draw(st.sampled_from([0.0, 0.0, 1e4, -1e4])),
        neg_inf=draw(st.sampled_from([0.0, 0.0, 0.3])),
        strided=draw(st.booleans()),
        step=draw(st.one_of(st.just(0), st.integers(0, 2 ** 20))),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        isa=draw(isa_strategy(backend)),
    )


def _make(case):
    g = generator(case["seed"])
    rows, vocab, dtype = case["rows"], case["vocab"], case["dtype"]
    x = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * case["scale"]
    if case["ties"]:
        x = torch.round(x * 2) / 2
    x = x + case["offset"]
    # Bans and -inf entries, but always one finite, unbanned token per row (else no distribution).
    ban = torch.randperm(vocab, generator=g)[:min(case["ban"], vocab - 1)]
    keep = torch.randint(0, vocab, (rows,), generator=g)
    if ban.numel():
        allowed = torch.ones(vocab, dtype=torch.bool)
        allowed[ban] = False
        choices = allowed.nonzero().flatten()
        keep = choices[torch.randint(0, choices.numel(), (rows,), generator=g)]
    if case["neg_inf"] > 0:
        drop = torch.rand(rows, vocab, generator=g) < case["neg_inf"]
        drop[torch.arange(rows), keep] = False
        x = x.masked_fill(drop, -math.inf)
    logits = x.to(dtype)
    if case["strided"]:  # rows further apart than V (a slice of a wider buffer)
        logits = torch.cat([logits, torch.zeros(rows, 5, dtype=dtype)], dim=1)[:, :vocab]
    seen = (torch.rand(rows, vocab, generator=g) < 0.3) if case["seen"] else None
    keys = torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64)
    return logits, keys, seen, ban if ban.numel() else None


def _check(backend, case):
    device = device_of(backend)
    logits, keys, seen, ban = _make(case)
    kw = dict(step=case["step"], temperature=case["temperature"], top_k=case["top_k"], top_p=case["top_p"],
              min_p=case["min_p"], repetition_penalty=case["penalty"])

    def dev(t):
        return None if t is None else t.to(device)

    with forced_isa(backend, case["isa"]):
        got = ttrl_fast.sample_tokens(dev(logits), row_keys=dev(keys), seen=dev(seen), ban_ids=dev(ban),
                                      backend=backend, **kw)
    want = ttrl_fast.sample_tokens(logits, row_keys=keys, seen=seen, ban_ids=ban, backend="reference", **kw)

    tokens = got.tokens.cpu()
    assert tokens.dtype == torch.int64 and tokens.shape == (case["rows"],)
    assert torch.equal(tokens, want.tokens), f"draw {tokens.tolist()} != spec {want.tokens.tolist()}"
    greedy = case["temperature"] == 0
    inv_t = 1.0 if greedy else 1.0 / case["temperature"]
    x = logits.double()
    s = spec.repetition_penalty(x, seen, case["penalty"])
    # The penalised scores s = x / p or x * p are rounded to fp32 before the shift by the row max, so
    # the processed log-prob and the kept mass carry an error of a few u32 |s| / T (0.01 at |x| = 1e4,
    # T = 0.05); the raw log-prob (no penalty) stays at 1e-5.
    penalised = seen is not None and case["penalty"] != 1.0
    finite_s = torch.where(torch.isfinite(s), s, 0.0)
    conditioning = 4 * 2.0 ** -24 * finite_s.abs().amax(-1) * inv_t if penalised else torch.zeros(case["rows"])
    for name in ("logprobs", "processed_logprobs", "log_kept_mass"):
        a = getattr(got, name).cpu().double()
        b = getattr(want, name).double()
        assert a.dtype == torch.float64 and torch.isfinite(a).all(), f"{name} not finite"
        assert (a <= 0).all(), f"{name} > 0"
        tol = TOL + TOL * b.abs() + (0.0 if name == "logprobs" else conditioning)
        assert ((a - b).abs() <= tol).all(), f"{name}: {a.tolist()} vs spec {b.tolist()}"

    # The token is allowed and inside the kept set of the spec's truncation rules.
    if ban is not None:
        s = s.index_fill(-1, ban, -math.inf)
        assert not torch.isin(tokens, ban).any(), "drew a banned token"
    vocab = case["vocab"]
    top_k = case["top_k"] if 0 < case["top_k"] < vocab else 0
    z = s * inv_t
    keep = z > -math.inf if greedy else spec.keep_mask(z, top_k, case["top_p"], case["min_p"])
    picked = keep.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert picked.all(), "drew a token outside the kept set"
    assert torch.isfinite(x.gather(-1, tokens.unsqueeze(-1))).all(), "drew a -inf logit"
    if greedy:
        assert torch.equal(tokens, torch.argmax(s, dim=-1)), "greedy is not the first argmax"
    plain = (seen is None or case["penalty"] == 1.0) and ban is None
    if plain:
        raw, processed, kept = (getattr(got, n).cpu().double()
                                for n in ("logprobs", "processed_logprobs", "log_kept_mass"))
        assert ((processed - raw + kept).abs() <= 2 * TOL * (1 + raw.abs())).all(), "processed - raw != -log kept"
        if greedy:
            assert (kept == 0).all(), "greedy keeps the whole distribution"


@pytest.mark.parametrize("backend", backend_params(OP))
def test_draws_and_log_probs_match_the_float64_spec(backend):
    counter = Counter()

    @prop_settings(backend, OP)
    @given(case=cases(backend))
    def prop(case):
        _check(backend, case)
        counter.n += 1

    prop()
    assert_budget_spent(counter, backend, OP)
