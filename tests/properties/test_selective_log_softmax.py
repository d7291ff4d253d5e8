"""Properties of selective_log_softmax on every backend against the float64 spec
(ttrl_fast.reference.selective_log_softmax): values and gradients of log-probs and entropy over random
shapes (odd sizes, one row, V = 1), layouts (sliced and padded views), dtypes, temperatures, offsets,
-inf entries and masks (with garbage under the mask); plus the invariants logp <= 0, 0 <= entropy <=
log V, no NaN from finite input, finite gradients, exact zeros under the mask."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ttrl_fast
from ttrl_fast import reference

from .conftest import (FP32_TOL, UNIT_ROUNDOFF, Counter, assert_budget_spent, backend_params, check_scaled,
                       device_of, float_dtypes, forced_isa, generator, interpreted, isa_strategy, prop_settings)

OP = "selective_log_softmax"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter lanes discarded by tl.where


@st.composite
def cases(draw, backend):
    small = interpreted(backend)
    if small:
        lead = draw(st.sampled_from([(1,), (2,), (5,), (1, 3), (2, 3), (3, 2)]))
        vocab = draw(st.one_of(st.sampled_from([1, 2, 3, 63, 64, 65]), st.integers(1, 80)))
    else:
        lead = draw(st.one_of(st.tuples(st.integers(1, 9)), st.tuples(st.integers(1, 3), st.integers(1, 6)),
                              st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3))))
        vocab = draw(st.one_of(st.sampled_from([1, 2, 3, 7, 16, 63, 64, 65, 97, 257, 1000, 4099]),
                               st.integers(1, 600)))
    return dict(
        lead=lead, vocab=vocab,
        dtype=draw(st.sampled_from(float_dtypes(backend))),
        layout=draw(st.sampled_from(["contiguous", "sliced", "padded"])),
        temperature=draw(st.one_of(st.sampled_from([0.7, 1.0, 1.3]), st.floats(0.05, 8.0))),
        offset=draw(st.sampled_from([0.0, 0.0, 50.0, 1e4, -1e4])),
        scale=draw(st.sampled_from([0.0, 0.01, 1.0, 3.0, 30.0])),
        neg_inf=draw(st.sampled_from([0.0, 0.0, 0.1, 0.6])),
        ties=draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "bool", "int", "all_false", "sparse"])),
        poison=draw(st.booleans()),
        entropy=draw(st.booleans()),
        upstream=draw(st.sampled_from(["both", "logp", "entropy", "ones"])),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        isa=draw(isa_strategy(backend)),
    )


def _make(case, device):
    g = generator(case["seed"])
    lead, vocab, dtype = case["lead"], case["vocab"], case["dtype"]
    base = torch.randn(*lead, vocab, generator=g, dtype=torch.float64) * case["scale"]
    if case["ties"]:
        base = torch.round(base)
    base = base + case["offset"]
    if case["neg_inf"] > 0 and vocab > 1:
        drop = torch.rand(base.shape, generator=g) < case["neg_inf"]
        keep = torch.randint(0, vocab, lead, generator=g)  # one finite entry per row, anywhere
        drop.scatter_(-1, keep.unsqueeze(-1), False)
        base = base.masked_fill(drop, -math.inf)
    # 16-bit dtypes: fp16 overflows beyond 65504, so shift fp16 rows into range first.
    if dtype == torch.float16:
        base = base.clamp(-6e4, 6e4)
    x = base.to(dtype)
    finite = torch.isfinite(x)
    index = torch.randint(0, vocab, lead, generator=g)
    # Never point at a -inf entry (that log-prob is -inf, not a property of interest here).
    first_finite = finite.to(torch.int8).argmax(-1)
    index = torch.where(finite.gather(-1, index.unsqueeze(-1)).squeeze(-1), index, first_finite)

    kind = case["mask"]
    mask = None
    if kind in ("bool", "int", "sparse"):
        mask = torch.rand(lead, generator=g) < (0.2 if kind == "sparse" else 0.7)
        if kind == "int":
            mask = mask.long()
    elif kind == "all_false":
        mask = torch.zeros(lead, dtype=torch.bool)

    # Layout: the same values in a view whose rows (or vocabulary) are wider than the data.
    if case["layout"] == "sliced":
        full = torch.cat([x, x[..., -1:, :]], dim=-2) if len(lead) > 1 else torch.cat([x, x[:1]], dim=0)
        x_view = full[..., :-1, :] if len(lead) > 1 else full[:-1]
    elif case["layout"] == "padded":
        full = torch.cat([x, torch.zeros(*lead, 3, dtype=dtype)], dim=-1)
        x_view = full[..., :vocab]
    else:
        x_view = x
    upstream = case["upstream"]
    g_logp = torch.randn(lead, generator=g, dtype=torch.float64)
    g_ent = torch.randn(lead, generator=g, dtype=torch.float64)
    if upstream == "logp":
        g_ent = torch.zeros(lead, dtype=torch.float64)
    elif upstream == "entropy":
        g_logp = torch.zeros(lead, dtype=torch.float64)
    elif upstream == "ones":
        g_logp, g_ent = torch.ones(lead, dtype=torch.float64), torch.ones(lead, dtype=torch.float64)
    return x_view.to(device), index.to(device), None if mask is None else mask.to(device), g_logp, g_ent


def _check(backend, case):
    device = device_of(backend)
    x, index, mask, g_logp, g_ent = _make(case, device)
    temperature, want_entropy = case["temperature"], case["entropy"]

    # The kernel's input: garbage (NaN logits, index -100) wherever the mask is False.
    x_in = x
    index_in = index
    if mask is not None and case["poison"]:
        bad = ~mask.bool()
        x_in = x.clone().masked_fill(bad.unsqueeze(-1), float("nan"))
        index_in = index.masked_fill(bad, -100)
    leaf = x_in.detach().clone().requires_grad_(True)
    with forced_isa(backend, case["isa"]):
        out = ttrl_fast.selective_log_softmax(leaf, index_in, temperature=temperature, mask=mask,
                                              return_entropy=want_entropy, backend=backend)
        logp, entropy = out if want_entropy else (out, None)
        objective = (logp.double().cpu() * g_logp).sum()
        if want_entropy:
            objective = objective + (entropy.double().cpu() * g_ent).sum()
        objective.backward()
    grad = leaf.grad

    xr = x.detach().cpu().double().requires_grad_(True)
    ref_logp, ref_entropy = reference.selective_log_softmax(xr, index.cpu(), temperature=temperature,
                                                            mask=None if mask is None else mask.cpu(),
                                                            return_entropy=True)
    ref_obj = (ref_logp * g_logp).sum() + ((ref_entropy * g_ent).sum() if want_entropy else 0.0)
    ref_obj.backward()

    assert logp.dtype == torch.float32 and logp.shape == index.shape
    assert grad.dtype == x.dtype and grad.shape == x.shape
    check_scaled("logp", logp, ref_logp, FP32_TOL)
    # The gradient is rounded to the logits' dtype: one rounding on top of the fp32 error.
    check_scaled("grad", grad, xr.grad, FP32_TOL + UNIT_ROUNDOFF[x.dtype])
    assert torch.isfinite(grad).all(), "non-finite gradient from finite input"
    assert (logp <= 0).all(), "positive log-prob"
    if want_entropy:
        check_scaled("entropy", entropy, ref_entropy, FP32_TOL)
        assert (entropy >= 0).all(), "negative entropy"
        finite_count = torch.isfinite(x.detach().cpu().float()).sum(-1).clamp(min=1)
        assert (entropy.cpu() <= finite_count.log() + 1e-4).all(), "entropy above log(#finite logits)"
    if mask is not None:
        off = ~mask.bool()
        assert (logp[off] == 0).all() and (grad[off] == 0).all()
        if want_entropy:
            assert (entropy[off] == 0).all()


@pytest.mark.parametrize("backend", backend_params(OP))
def test_values_and_gradients_match_the_float64_spec(backend):
    counter = Counter()

    @prop_settings(backend, OP)
    @given(case=cases(backend))
    def prop(case):
        _check(backend, case)
        counter.n += 1

    prop()
    assert_budget_spent(counter, backend, OP)
