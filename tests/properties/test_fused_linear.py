"""Properties of the fused LM head on every backend against the float64 composite
(hidden @ weight.T + bias in float64, then the float64 specs): fused_linear_logprobs (log-probs and
entropy; dX, dW, db under random upstream gradients; temperature, bias, ignore_index, chunk sizes,
[N, H] and [B, T, H] inputs, frozen heads, fp32 / fp16 / bf16) and fused_linear_grpo_loss (the
one-pass token-level path and the two-pass sequence-level / vespo path). Invariants: logp <= 0,
entropy >= 0, no NaN, finite gradients, ignored positions give 0 and no gradient.

16-bit inputs are compared with float64 evaluated on the same rounded inputs: log-probs and entropy
are fp32 results (the logits tile is never rounded to 16 bits); the gradients come back in the input
dtype (bf16 on the native AVX512-BF16 path also accumulates dW chunk by chunk in bf16), so their
tolerance is a few units of that dtype's roundoff."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import ttrl_fast
from ttrl_fast import reference
from ttrl_fast.reference.policy_loss import aggregation_weights
from ttrl_fast.reference.policy_loss import policy_loss as spec_policy_loss

from .conftest import (FP32_TOL, LOSS_TOL, UNIT_ROUNDOFF, Counter, assert_budget_spent, backend_params,
                       check_scaled, device_of, fits_dtype, forced_isa, fp32_representable, generator, interpreted,
                       isa_strategy, loss_error_model, loss_knobs, prop_settings)

OP = "fused_linear_logprobs"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _dtypes(backend):
    if interpreted(backend):
        return [torch.float32]
    return [torch.float32, torch.float32, torch.bfloat16, torch.float16]


def _grad_tol(dtype, chunks):
    """fp32: the kernels' 1e-5. 16-bit: a few roundoffs of that dtype relative to the gradient's scale
    (measured: <= 2.5 u for bf16 dW accumulated over up to 40 chunks on the native path, <= 1 u for
    fp16), plus a slow growth with the number of chunks accumulated in that dtype."""
    if dtype == torch.float32:
        return FP32_TOL
    return FP32_TOL + UNIT_ROUNDOFF[dtype] * (4 + chunks / 8)


@st.composite
def cases(draw, backend):
    if interpreted(backend):
        n, hidden, vocab = draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 70))
    else:
        n = draw(st.integers(1, 40))
        hidden = draw(st.one_of(st.sampled_from([1, 16, 64]), st.integers(1, 48)))
        vocab = draw(st.one_of(st.sampled_from([1, 2, 97, 513]), st.integers(1, 300)))
    shape3 = None
    if draw(st.booleans()):
        b = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
        shape3 = (b, n // b)
    return dict(
        n=n, hidden=hidden, vocab=vocab, shape3=shape3,
        dtype=draw(st.sampled_from(_dtypes(backend))),
        bias=draw(st.booleans()),
        temperature=draw(st.sampled_from([0.5, 0.9, 1.0, 1.7])),
        weight_scale=draw(st.sampled_from([0.05, 0.3, 1.0])),
        ignore_index=draw(st.sampled_from([-100, -1, 3])),
        ignore_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])),
        chunk_size=draw(st.one_of(st.none(), st.integers(1, n + 2))),
        entropy=draw(st.booleans()),
        frozen=draw(st.integers(0, 3)) == 0,
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        isa=draw(isa_strategy(backend)),
    )


def _make(case):
    g = generator(case["seed"])
    n, h, v, dtype = case["n"], case["hidden"], case["vocab"], case["dtype"]
    x = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, h, generator=g, dtype=torch.float64) * case["weight_scale"]).to(dtype)
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype) if case["bias"] else None
    targets = torch.randint(0, v, (n,), generator=g)
    ignored = torch.rand(n, generator=g) < case["ignore_fraction"]
    targets = targets.masked_fill(ignored, case["ignore_index"])
    valid = targets != case["ignore_index"]  # an ignore_index inside [0, V) also drops that token
    return x, w, b, targets, valid


def _check(backend, case):
    device = device_of(backend)
    x, w, b, targets, valid = _make(case)
    n = case["n"]
    shape = case["shape3"] or (n,)
    g = generator(case["seed"] + 1)
    g_logp = torch.randn(shape, generator=g, dtype=torch.float64)
    g_ent = torch.randn(shape, generator=g, dtype=torch.float64)
    temperature = case["temperature"]

    xs = x.reshape(*shape, -1).to(device, copy=True).requires_grad_(True)
    ws = w.to(device, copy=True).requires_grad_(not case["frozen"])
    bs = None if b is None else b.to(device, copy=True).requires_grad_(True)
    with forced_isa(backend, case["isa"]):
        out = ttrl_fast.fused_linear_logprobs(xs, ws, targets.reshape(shape).to(device), bias=bs,
                                              temperature=temperature, return_entropy=case["entropy"],
                                              ignore_index=case["ignore_index"], chunk_size=case["chunk_size"],
                                              backend=backend)
        logp, entropy = out if case["entropy"] else (out, None)
        objective = (logp.double().cpu() * g_logp).sum()
        if entropy is not None:
            objective = objective + (entropy.double().cpu() * g_ent).sum()
        objective.backward()

    xr = x.double().requires_grad_(True)
    wr = w.double().requires_grad_(True)
    br = None if b is None else b.double().requires_grad_(True)
    logits = xr @ wr.T + (br if br is not None else 0.0)
    rl, re = reference.selective_log_softmax(logits, targets.clamp(min=0), temperature=temperature, mask=valid,
                                             return_entropy=True)
    ref_obj = (rl * g_logp.reshape(-1)).sum() + ((re * g_ent.reshape(-1)).sum() if entropy is not None else 0.0)
    ref_obj.backward()

    assert logp.shape == shape and logp.dtype == torch.float32
    check_scaled("logp", logp.reshape(-1), rl, FP32_TOL)
    assert (logp <= 0).all(), "positive log-prob"
    assert (logp.reshape(-1).cpu()[~valid] == 0).all(), "ignored positions must give 0"
    if entropy is not None:
        check_scaled("entropy", entropy.reshape(-1), re, FP32_TOL)
        assert (entropy >= 0).all() and (entropy.reshape(-1).cpu()[~valid] == 0).all()
    chunks = -(-n // (case["chunk_size"] or n))
    tol = _grad_tol(x.dtype, chunks)
    assert xs.grad.dtype == x.dtype and torch.isfinite(xs.grad).all()
    check_scaled("dX", xs.grad.reshape(n, -1), xr.grad, tol)
    assert (xs.grad.reshape(n, -1).cpu()[~valid] == 0).all(), "gradient at ignored positions"
    if case["frozen"]:
        assert ws.grad is None, "a frozen head must get no weight gradient"
    else:
        assert ws.grad.dtype == w.dtype and torch.isfinite(ws.grad).all()
        check_scaled("dW", ws.grad, wr.grad, tol)
    if bs is not None:
        assert torch.isfinite(bs.grad).all()
        check_scaled("db", bs.grad, br.grad, tol)


@pytest.mark.parametrize("backend", backend_params("selective_log_softmax"))
def test_fused_linear_logprobs_match_the_float64_composite(backend):
    counter = Counter()

    @prop_settings(backend, OP)
    @given(case=cases(backend))
    def prop(case):
        _check(backend, case)
        counter.n += 1

    prop()
    assert_budget_spent(counter, backend, OP)


# ------------------------------------------------------------------------------------------------
# fused_linear_grpo_loss
# ------------------------------------------------------------------------------------------------

@st.composite
def grpo_cases(draw, backend):
    if interpreted(backend):
        batch, length, hidden, vocab = (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 16)),
                                        draw(st.integers(1, 48)))
    else:
        batch, length = draw(st.integers(1, 5)), draw(st.integers(1, 10))
        hidden, vocab = draw(st.integers(1, 40)), draw(st.integers(1, 200))
    return dict(
        batch=batch, length=length, hidden=hidden, vocab=vocab, knobs=draw(loss_knobs()),
        dtype=draw(st.sampled_from(_dtypes(backend))),
        bias=draw(st.booleans()),
        temperature=draw(st.sampled_from([0.7, 1.0, 1.3])),
        on_policy=draw(st.integers(0, 4)) == 0,
        log_ratio_scale=draw(st.sampled_from([0.05, 0.5, 3.0])),
        per_token_adv=draw(st.booleans()),
        ratio=draw(st.sampled_from([None, "token", "seq"])),
        mask_kind=draw(st.sampled_from(["random", "full", "empty_rows", "all_empty"])),
        chunk_size=draw(st.one_of(st.none(), st.integers(1, batch * length + 1))),
        log_entropy=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        isa=draw(isa_strategy(backend)),
    )


def _check_grpo(backend, case):
    device = device_of(backend)
    g = generator(case["seed"])
    bsz, t, h, v, dtype = case["batch"], case["length"], case["hidden"], case["vocab"], case["dtype"]
    x = torch.randn(bsz, t, h, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype) if case["bias"] else None
    ids = torch.randint(0, v, (bsz, t), generator=g)
    mask = torch.rand(bsz, t, generator=g) < 0.7
    if case["mask_kind"] == "full":
        mask[:] = True
    elif case["mask_kind"] == "empty_rows":
        mask[torch.rand(bsz, generator=g) < 0.5] = False
    elif case["mask_kind"] == "all_empty":
        mask[:] = False
    knobs = dict(case["knobs"])
    temperature = case["temperature"]
    with torch.no_grad():
        logits0 = x.double() @ w.double().T + (b.double() if b is not None else 0.0)
        base = reference.selective_log_softmax(logits0, ids, temperature=temperature)
    old = None if case["on_policy"] else (base + case["log_ratio_scale"] * torch.randn(
        bsz, t, generator=g, dtype=torch.float64)).float()
    if old is not None:  # masked positions have logp 0: keep 0 - old <= 80 (see test_policy_loss)
        old = torch.where(mask, old, old.clamp(min=-80.0))
    ref = (base + 0.3 * torch.randn(bsz, t, generator=g, dtype=torch.float64)).float()
    ref_arg = ref if knobs["beta"] != 0.0 else None
    adv = torch.randn((bsz, t) if case["per_token_adv"] else (bsz,), generator=g).float()
    ratio = None
    if case["ratio"] is not None:
        ratio = (0.3 + torch.rand((bsz, t) if case["ratio"] == "token" else (bsz, 1), generator=g) * 2).float()

    xr = x.double().requires_grad_(True)
    wr = w.double().requires_grad_(True)
    br = None if b is None else b.double().requires_grad_(True)
    lp, ent = reference.selective_log_softmax(xr @ wr.T + (br if br is not None else 0.0), ids,
                                              temperature=temperature, mask=mask, return_entropy=True)
    spec_loss, parts = spec_policy_loss(lp, None if old is None else old.double(), adv.double(), mask.double(),
                                        ref_logp=None if ref_arg is None else ref_arg.double(),
                                        rollout_is_ratio=None if ratio is None else ratio.double(), entropy=ent,
                                        **knobs)
    spec_loss.backward()
    w_agg = aggregation_weights(mask.double(), knobs["loss_type"])
    model = loss_error_model(lp.detach(), None if ref_arg is None else ref_arg.double(), mask, parts, w_agg, knobs)
    assume(fp32_representable(spec_loss, xr.grad, wr.grad) and model.loss_scale < 1e30
           and fits_dtype(dtype, xr.grad, wr.grad, None if br is None else br.grad))

    xs = x.to(device, copy=True).requires_grad_(True)
    ws = w.to(device, copy=True).requires_grad_(True)
    bs = None if b is None else b.to(device, copy=True).requires_grad_(True)

    def dev(tensor):
        return None if tensor is None else tensor.to(device)

    with forced_isa(backend, case["isa"]):
        loss, metrics = ttrl_fast.fused_linear_grpo_loss(
            xs, ws, ids.to(device), mask.to(device), adv.to(device), bias=bs, old_logp=dev(old), ref_logp=dev(ref_arg),
            rollout_is_ratio=dev(ratio), temperature=temperature, chunk_size=case["chunk_size"],
            log_entropy=case["log_entropy"], backend=backend, **knobs)
        loss.backward()
    assert torch.isfinite(loss)
    model.check_loss(loss, spec_loss)
    chunks = -(-bsz * t // (case["chunk_size"] or bsz * t))
    tol = LOSS_TOL + (0.0 if dtype == torch.float32 else _grad_tol(dtype, chunks))
    for name, got, want in (("dX", xs.grad, xr.grad), ("dW", ws.grad, wr.grad),
                            ("db", None if bs is None else bs.grad, None if br is None else br.grad)):
        if want is None:
            continue
        assert got is not None and got.dtype == dtype and torch.isfinite(got).all(), name
        # the log-prob gradient's k3 slack reaches dX / dW / db through (onehot - p) / T and the GEMMs
        reach = bsz * t * max(1.0, float(x.double().abs().max()), float(w.double().abs().max())) / temperature
        model.check_grad(name, got, want, extra_rtol=tol - LOSS_TOL, slack_factor=reach)
    assert (xs.grad.cpu()[~mask] == 0).all(), "gradient at masked positions"
    if t > 1 and "kl" in parts:  # T = 1: see test_policy_loss.test_metrics_at_completion_length_one_follow_the_spec
        total, count = parts["kl"]
        want = float(total) / max(float(count), 1.0)
        assert abs(float(metrics["kl"]) - want) <= 2e-5 * max(1.0, abs(want)) + model.kl_metric_slack, (
            float(metrics["kl"]), want)


@pytest.mark.parametrize("backend", backend_params("policy_loss"))
def test_fused_linear_grpo_loss_matches_the_float64_composite(backend):
    counter = Counter()

    @prop_settings(backend, "fused_linear_grpo_loss")
    @given(case=grpo_cases(backend))
    def prop(case):
        _check_grpo(backend, case)
        counter.n += 1

    prop()
    assert_budget_spent(counter, backend, "fused_linear_grpo_loss")
