"""Shared machinery of the property tests: which backends run here (and on which device), the
per-backend example budgets, the deterministic hypothesis settings, the C++ ISA variants, and the
error measures.

Budgets: every op gets >= 200 examples summed over reference + cpp + triton (the Triton backend runs
under TRITON_INTERPRET=1 on CPU here, which is slow, so it gets fewer and tiny shapes). A GPU adds the
cuda backend (and Triton on CUDA) with their own budgets. TTRL_FAST_PROPERTY_SCALE=<float> scales
every budget (e.g. 10 for a long soak run); the default keeps ``pytest -n 2 tests/properties`` under
4 minutes on 2 busy cores.

Each example builds its tensors from a seed drawn by hypothesis (plus the drawn shapes, dtypes and
hyperparameters), so a falsifying example printed by hypothesis is a complete reproducer.
"""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ttrl_fast import _ext, backends
from ttrl_fast.reference.policy_loss import LOSS_TYPES
from ttrl_fast.testing import scaled_error

HAS_CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
GPU = torch.device("cuda") if HAS_CUDA else None

# Examples per backend and op. The sum over reference + cpp + triton (interpreted) is >= 250 for every op.
_BUDGET = {
    "reference": 60,
    "cpp": 150,
    "triton": 40,
    "cuda": 150,
}
# Ops whose Triton path is cheap enough to give it a bigger share (interpreter cost per example).
_OP_BUDGET = {
    ("group_advantages", "triton"): 60,
}
_SCALE = float(os.environ.get("TTRL_FAST_PROPERTY_SCALE", "1"))

# Unit roundoff of each input dtype (a result rounded to that dtype is within this relative error).
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11,
                 torch.float64: 2.0 ** -53}
# fp32 kernels against a float64 evaluation of the reference, relative to the output's scale.
FP32_TOL = 1e-5


def device_of(backend: str) -> torch.device:
    """Where a backend's tensors live: cpp and reference on CPU; triton and cuda on the GPU when there
    is one (triton otherwise on CPU under the interpreter)."""
    if backend in ("triton", "cuda") and HAS_CUDA:
        return GPU
    return CPU


def interpreted(backend: str) -> bool:
    """True for Triton on CPU under TRITON_INTERPRET=1: tiny shapes, no bfloat16."""
    return backend == "triton" and not HAS_CUDA


def float_dtypes(backend: str, *, half: bool = True) -> list[torch.dtype]:
    """The input dtypes a property may draw for this backend (bfloat16 not under the interpreter)."""
    dtypes = [torch.float32]
    if half:
        dtypes.append(torch.float16)
        if not interpreted(backend):
            dtypes.append(torch.bfloat16)
    return dtypes


def budget(backend: str, op: str) -> int:
    """max_examples of one op on one backend (Triton on a GPU is fast: it gets the cuda budget)."""
    if backend == "triton" and not interpreted(backend):
        base = _BUDGET["cuda"]
    else:
        base = _OP_BUDGET.get((op, backend), _BUDGET[backend])
    return max(1, int(round(base * _SCALE)))


def backend_params(op: str) -> list:
    """One pytest param per backend; the ones that cannot run here are skipped with the reason."""
    params = []
    for name in backends.BACKENDS:
        reasons = backends.refusal_reasons(op, name, device_of(name), torch.float32, explicit=True)
        marks = pytest.mark.skip(reason="; ".join(reasons)) if reasons else ()
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def prop_settings(backend: str, op: str) -> settings:
    """Deterministic, database-free, no deadline (the interpreter and first calls are slow)."""
    return settings(max_examples=budget(backend, op), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    print_blob=False)


def cpp_isas() -> list[str]:
    """The C++ extension's ISA variants this CPU can run (each example of cpp draws one)."""
    lib = _ext.extension("cpu")
    if lib is None:
        return [""]
    runnable = []
    for isa in ("avx512", "avx2", "baseline"):
        if lib.force_isa(isa):
            runnable.append(isa)
        lib.force_isa("")
    return runnable or [""]


def isa_strategy(backend: str):
    return st.sampled_from(cpp_isas()) if backend == "cpp" else st.just("")


@contextlib.contextmanager
def forced_isa(backend: str, isa: str):
    """Within the block the C++ backend runs the given ISA variant ("" = automatic)."""
    if backend != "cpp" or not isa:
        yield
        return
    lib = _ext.extension("cpu")
    assert lib.force_isa(isa), isa
    try:
        yield
    finally:
        lib.force_isa("")


class Counter:
    """Counts the examples that ran to the end, to check the budget was really spent."""

    def __init__(self):
        self.n = 0


def assert_budget_spent(counter: Counter, backend: str, op: str) -> None:
    want = budget(backend, op)
    assert counter.n >= want, f"only {counter.n} of {want} examples of {op} ran on {backend}"


@pytest.fixture(autouse=True)
def _no_local_constants(monkeypatch):
    """Makes the examples independent of which modules happen to be imported.

    Hypothesis (>= 6.131) mixes literal constants harvested from the *local* modules in sys.modules
    (here: ttrl_fast.*, bench/, examples/) into about 5% of its draws, and caches the pool. Which of
    those modules are imported when a property starts depends on the tests that ran before it in the
    same process (xdist's scheduling), so derandomize=True alone still gave different examples under
    `pytest -n 2 tests/properties` than for one file alone. Within these tests the pool is empty, so a
    property draws the same examples in any order and any process. (Private hypothesis API: if it
    moves, this does nothing and only that reproducibility guarantee weakens.)"""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover
        yield
        return
    if not (hasattr(providers, "_get_local_constants") and hasattr(providers, "Constants")
            and hasattr(providers, "CONSTANTS_CACHE")):
        yield  # pragma: no cover
        return
    empty = providers.Constants()
    monkeypatch.setattr(providers, "_get_local_constants", lambda: empty)
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers.CONSTANTS_CACHE.cache.clear()  # other hypothesis tests recompute their own pools


@pytest.fixture(autouse=True)
def _one_thread():
    """Property shapes are tiny (no kernel splits them over threads) and pytest -n 2 already fills the
    two cores: one intra-op thread per worker avoids oversubscription. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_scaled(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """max |got - want| / max(1, max |want|) <= tol (ttrl_fast.testing.scaled_error), NaN-free."""
    assert got.shape == want.shape, (name, tuple(got.shape), tuple(want.shape))
    assert not torch.isnan(got.detach().double()).any(), f"{name}: NaN from finite input"
    err = scaled_error(got, want)
    assert err <= tol, f"{name}: scaled error {err:.3e} > {tol:.1e}"


def all_finite(*tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t.detach().double()).all()) for t in tensors)


def fp32_representable(*tensors, limit: float = 1e30) -> bool:
    """True when float64 results are finite and far from fp32 overflow (else fp32 kernels legitimately
    overflow where float64 does not; such examples are not compared)."""
    for t in tensors:
        if t is None:
            continue
        x = t.detach().double()
        if not bool(torch.isfinite(x).all()) or (x.numel() and float(x.abs().max()) > limit):
            return False
    return True


def fits_dtype(dtype: torch.dtype, *tensors) -> bool:
    """True when float64 gradients fit the dtype they are returned in (fp16 overflows at 65504: a
    gradient of 1e12, legitimate for VESPO's phi, is -inf there by necessity)."""
    limit = torch.finfo(dtype).max / 8
    return all(t is None or not t.numel() or float(t.detach().double().abs().max()) < limit for t in tensors)


def metric_close(got: float, want: float, *, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= atol + rtol * abs(want)


# ------------------------------------------------------------------------------------------------
# The GRPO loss family: hyperparameters and the forward-error model of the fp32 kernels
# ------------------------------------------------------------------------------------------------

# The loss sums O(B T) fp32 terms and exp() amplifies the rounding of large log ratios (|x| <= 80):
# relative to the sum of the absolute weighted terms the error stays within a few 1e-6.
LOSS_TOL = 2e-5
U32 = 2.0 ** -24


@st.composite
def loss_knobs(draw):
    """Every policy_loss hyperparameter (loss type, IS level, KL, clipping, entropy bonus, SAPO/VESPO)."""
    loss_type = draw(st.sampled_from(LOSS_TYPES))
    return dict(
        loss_type=loss_type,
        importance_sampling_level=draw(st.sampled_from(["token", "sequence"])),
        beta=draw(st.sampled_from([0.0, 0.0, 0.04, 0.5])),
        kl_estimator=draw(st.sampled_from(["k1", "k2", "k3"])),
        use_bias_correction_kl=draw(st.booleans()),
        epsilon_low=draw(st.sampled_from([0.0, 0.1, 0.2, 0.3])),
        epsilon_high=draw(st.sampled_from([None, 0.28, 0.5] if loss_type != "cispo" else [None, 1.0, 5.0])),
        delta=draw(st.sampled_from([None, None, 1.0, 1.5, 3.0])),
        entropy_coef=draw(st.sampled_from([0.0, 0.01, -0.1])),
        sapo_temperature_pos=draw(st.sampled_from([1.0, 0.5])),
        sapo_temperature_neg=draw(st.sampled_from([1.05, 2.0])),
        vespo_k_pos=draw(st.sampled_from([2.0, 1.0])),
        vespo_lambda_pos=draw(st.sampled_from([3.0, 0.5])),
        vespo_k_neg=draw(st.sampled_from([3.0, 0.0])),
        vespo_lambda_neg=draw(st.sampled_from([2.0, 1e-6])),
    )


class LossErrorModel:
    """What an fp32 evaluation of the GRPO loss can be expected to get right, from the float64 spec.

    * loss: the error is relative to the sum of the absolute weighted per-token terms (cancellation
      between tokens is not the kernel's fault), plus the k3 slack below.
    * k3 = e^-x + x - 1 is evaluated like TRL does, without expm1: in fp32 it has an absolute error of
      a few u32 * (e^-x + |x| + 1) per token, i.e. a large *relative* error when |x| = |logp - ref| is
      small; with use_bias_correction_kl it is multiplied by the (possibly huge) ratio r. That slack
      (times beta and the aggregation weight) is added to the loss, the gradient and the kl metric.
    """

    def __init__(self, loss_scale: float, grad_slack: float, kl_metric_slack: float):
        self.loss_scale, self.grad_slack, self.kl_metric_slack = loss_scale, grad_slack, kl_metric_slack
        self.extra_loss = 0.0  # absolute slacks added by propagate_logp_error (inputs that carry error)

    def check_loss(self, got: torch.Tensor, want: torch.Tensor) -> None:
        got, want = float(got.detach()), float(want.detach())
        err = abs(got - want)
        allowed = LOSS_TOL * self.loss_scale + self.extra_loss
        assert err <= allowed, f"loss {got} vs float64 {want} (error {err:.2e}, allowed {allowed:.2e})"

    def check_grad(self, name: str, got: torch.Tensor, want: torch.Tensor, *, extra_rtol: float = 0.0,
                   slack_factor: float = 1.0) -> None:
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite"
        if not want.numel():
            return
        err = float((got.detach().double().cpu() - want).abs().max())
        allowed = (LOSS_TOL + extra_rtol) * max(1.0, float(want.abs().max())) + slack_factor * self.grad_slack
        assert err <= allowed, f"{name}: error {err:.3e} > allowed {allowed:.3e}"


def loss_error_model(logp, ref, mask, parts, weights, knobs) -> LossErrorModel:
    """LossErrorModel for a float64 spec evaluation (policy_loss's parts, aggregation weights [B, T])."""
    per_token = parts["per_token_loss"].detach().double()
    mask_d = mask.double()
    w = weights.double()
    loss_scale = 1.0 + float((per_token.abs() * w).sum())
    beta = float(knobs.get("beta", 0.0))
    if beta == 0.0 or ref is None or knobs.get("kl_estimator", "k3") != "k3":
        return LossErrorModel(loss_scale, 0.0, 0.0)
    x = logp.detach().double() - ref.double()
    components = torch.exp(-x) + x.abs() + 1.0  # the magnitudes k3 is computed from
    ratio = parts["ratio"].double().expand_as(x)
    amplified = components * (ratio if knobs.get("use_bias_correction_kl") else 1.0)
    a = 8 * U32 * beta * w * amplified  # [B, T] absolute slack per token of the loss
    loss_scale += float(a.sum()) / LOSS_TOL
    # a token's gradient sees its own term and, at sequence level, its whole sequence's terms
    grad_slack = float(a.max()) + float(a.sum(-1).max()) if a.numel() else 0.0
    kl_metric_slack = float((8 * U32 * amplified * mask_d).sum() / mask_d.sum().clamp(min=1.0))
    return LossErrorModel(loss_scale, 2 * grad_slack, kl_metric_slack)


def propagate_logp_error(model: LossErrorModel, spec_loss_fn, logp: torch.Tensor, mask: torch.Tensor,
                         seed: int) -> None:
    """Widens `model` by the first-order effect of the log-probs' own fp32 error on the loss and on
    d loss / d logp, for losses computed from log-probs that a kernel produced (grpo_loss, the fused
    head): |d logp_t| <= 16 u32 (1 + |logp_t|) (the selective log-softmax kernels' measured error is a
    few u32 relative to the logits' scale). Evaluated on the float64 spec at logp + s * d for the
    signs s = +-sign(d loss / d logp) and two random sign patterns; the largest changes, doubled, are
    the slacks (this captures ill-conditioned spots such as k1 / k3 of nearly equal logp and ref
    times a large bias-correction ratio, or VESPO's phi, that a fixed relative tolerance cannot)."""
    base = logp.detach().double()
    delta = 16 * U32 * (1.0 + base.abs()) * (mask.double() != 0)

    def run(values):
        x = values.clone().requires_grad_(True)
        loss = spec_loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        return float(loss.detach()), torch.zeros_like(x) if grad is None else grad

    loss0, grad0 = run(base)
    g = generator(seed)
    signs = [grad0.sign(), -grad0.sign()] + [torch.randint(0, 2, base.shape, generator=g).double() * 2 - 1
                                              for _ in range(2)]
    d_loss, d_grad = 0.0, 0.0
    for s in signs:
        loss1, grad1 = run(base + s * delta)
        d_loss = max(d_loss, abs(loss1 - loss0))
        d_grad = max(d_grad, float((grad1 - grad0).abs().max()) if grad0.numel() else 0.0)
    model.extra_loss += 2 * d_loss
    model.grad_slack += 2 * d_grad
