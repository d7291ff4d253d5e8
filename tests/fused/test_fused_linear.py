"""Fused LM head: log-probs / entropy / GRPO loss from hidden states against the eager composite
(lm_head matmul -> selective log-softmax -> policy_loss) in float64, on every backend; frozen head;
ignore_index; and against Liger's LigerFusedLinearGRPOLoss."""
import itertools

import pytest
import torch

import ttrl_fast
from ttrl_fast import reference
from ttrl_fast.reference.policy_loss import policy_loss as spec_policy_loss
from ttrl_fast.testing import scaled_error

from ..conftest import DEVICE

B, T, H, V = 3, 9, 16, 101


def _data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype) * 0.3
    b = torch.randn(V, generator=g, dtype=dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[1] = False  # an empty sequence
    adv = torch.randn(B, generator=g, dtype=dtype)
    with torch.no_grad():
        base = reference.selective_log_softmax(x @ w.T + b, ids)
    old = base + 0.2 * torch.randn(B, T, generator=g, dtype=dtype)
    ref = base + 0.2 * torch.randn(B, T, generator=g, dtype=dtype)
    return x, w, b, ids, mask, adv, old, ref


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logprobs_and_entropy_match_the_eager_composite(backend, temperature):
    x, w, b, ids, mask, *_ = _data()
    targets = ids.masked_fill(~mask, -100)
    xs, ws, bs = (t.float().to(DEVICE).requires_grad_(True) for t in (x, w, b))
    logp, ent = ttrl_fast.fused_linear_logprobs(xs, ws, targets.to(DEVICE), bias=bs, temperature=temperature,
                                                return_entropy=True, chunk_size=5, backend=backend)
    g1, g2 = torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)
    (logp.double().cpu() * g1 + ent.double().cpu() * g2).sum().backward()
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    rl, re = reference.selective_log_softmax(xr @ wr.T + br, ids, temperature=temperature, mask=mask,
                                             return_entropy=True)
    (rl * g1 + re * g2).sum().backward()
    for got, want in ((logp, rl), (ent, re), (xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert scaled_error(got, want) <= 1e-5
    assert (logp[~mask.to(DEVICE)] == 0).all() and (xs.grad[~mask.to(DEVICE)] == 0).all()  # ignore_index rows


def test_frozen_head_computes_no_weight_gradient_and_the_same_dx(backend):
    x, w, b, ids, mask, *_ = _data(1)
    x1 = x.float().to(DEVICE).requires_grad_(True)
    w_trainable = w.float().to(DEVICE).requires_grad_(True)
    ttrl_fast.fused_linear_logprobs(x1, w_trainable, ids.to(DEVICE), backend=backend).sum().backward()
    x2 = x.float().to(DEVICE).requires_grad_(True)
    w_frozen = w.float().to(DEVICE)
    ttrl_fast.fused_linear_logprobs(x2, w_frozen, ids.to(DEVICE), backend=backend).sum().backward()
    assert w_frozen.grad is None
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=0)


@pytest.mark.parametrize("loss_type, level", list(itertools.product(
    ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"], ["token", "sequence"])))
def test_grpo_loss_from_hidden_states_matches_the_eager_composite(backend, loss_type, level):
    x, w, b, ids, mask, adv, old, ref = _data(2)
    knobs = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04, use_bias_correction_kl=True,
                 entropy_coef=0.01, epsilon_high=5.0 if loss_type == "cispo" else 0.28,
                 delta=1.5 if loss_type == "dapo" else None)
    xs, ws, bs = (t.float().to(DEVICE).requires_grad_(True) for t in (x, w, b))
    ratio = (torch.rand(B, T, generator=torch.Generator().manual_seed(3)) + 0.5).to(DEVICE)
    loss, metrics = ttrl_fast.fused_linear_grpo_loss(
        xs, ws, ids.to(DEVICE), mask.to(DEVICE), adv.float().to(DEVICE), bias=bs, old_logp=old.float().to(DEVICE),
        ref_logp=ref.float().to(DEVICE), rollout_is_ratio=ratio, chunk_size=7, log_entropy=True, backend=backend,
        **knobs)
    loss.backward()
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    lp, ent = reference.selective_log_softmax(xr @ wr.T + br, ids, mask=mask, return_entropy=True)
    ref_loss, parts = spec_policy_loss(lp, old, adv, mask.double(), ref_logp=ref, entropy=ent,
                                       rollout_is_ratio=ratio.double().cpu(), **knobs)
    ref_loss.backward()
    for got, want in ((loss, ref_loss), (xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert scaled_error(got, want) <= 1e-5
    for name in ("kl", "entropy", "ratio/mean"):
        total, count = parts[name]
        assert abs(float(metrics[name]) - float(total / count)) <= 1e-5


def test_16bit_inputs_no_worse_than_torch_in_that_dtype():
    x, w, b, ids, mask, *_ = _data(4)
    exact = reference.selective_log_softmax(x @ w.T, ids)
    ours = ttrl_fast.fused_linear_logprobs(x.bfloat16(), w.bfloat16(), ids)
    theirs = torch.log_softmax((x.bfloat16() @ w.bfloat16().T), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    exact_rounded_inputs = reference.selective_log_softmax(x.bfloat16().double() @ w.bfloat16().double().T, ids)
    assert scaled_error(ours, exact_rounded_inputs) <= 2 * scaled_error(theirs, exact_rounded_inputs) + 1e-6
    assert scaled_error(ours, exact) <= 2 * scaled_error(theirs, exact) + 1e-6


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("loss", ["logprobs", "grpo"])
def test_bf16_gradients_no_worse_than_torchs_bf16_autograd(chunk_size, loss):
    """bf16 hidden and weight (the native bf16 GEMM path on AVX512-BF16 CPUs, several chunks): loss, dX
    and dW within 2x the error of torch's own bf16 eager composite, both against float64 on the same
    bf16-rounded inputs."""
    x, w, b, ids, mask, adv, old, ref = _data(5)
    xb, wb = x.bfloat16(), w.bfloat16()
    coef = torch.randn(B, T, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def run(hidden, weight, fused):
        hidden = hidden.clone().requires_grad_(True)
        weight = weight.clone().requires_grad_(True)
        if fused and loss == "logprobs":
            value = (ttrl_fast.fused_linear_logprobs(hidden, weight, ids, chunk_size=chunk_size).double() * coef).sum()
        elif fused:
            value, _ = ttrl_fast.fused_linear_grpo_loss(hidden, weight, ids, mask, adv.float(), old_logp=old.float(),
                                                        ref_logp=ref.float(), beta=0.04, chunk_size=chunk_size)
        else:
            logits = hidden @ weight.T
            if hidden.dtype == torch.float64:
                lp = reference.selective_log_softmax(logits, ids)
            else:
                lp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            if loss == "logprobs":
                value = (lp.double() * coef).sum()
            else:
                value, _ = spec_policy_loss(lp.double(), old, adv, mask.double(), ref_logp=ref, beta=0.04,
                                            loss_type="dapo")
        value.backward()
        return value.detach(), hidden.grad, weight.grad

    exact = run(xb.double(), wb.double(), fused=False)
    ours = run(xb, wb, fused=True)
    torch_bf16 = run(xb, wb, fused=False)
    assert ours[1].dtype == ours[2].dtype == torch.bfloat16
    for got, theirs, want in zip(ours, torch_bf16, exact):
        assert scaled_error(got, want) <= 2 * scaled_error(theirs, want) + 1e-6


def test_bf16_logits_tile_is_never_rounded_to_bf16():
    from ttrl_fast.fused_linear import _Head, _native_bf16_gemm

    x, w, b, *_ = _data(6)
    xb, wb = x.reshape(-1, H).bfloat16(), w.bfloat16()
    head = _Head(wb, b, 1.0, torch.bfloat16)
    exact = xb.double() @ wb.double().T + b
    tile = head.tile(xb)[0]
    assert tile.dtype == torch.float32
    assert scaled_error(tile, exact) <= 1e-6  # bf16 rounding would be ~4e-3
    if _native_bf16_gemm(torch.bfloat16, wb) is None:
        pytest.skip("this CPU has no AVX512-BF16: the fp32-upcast path ran")
    assert head.weight.dtype == torch.bfloat16  # no fp32 copy of the head on the native path


def test_bad_input_names_the_argument():
    x, w, b, ids, *_ = _data()
    with pytest.raises(ValueError, match="hidden"):
        ttrl_fast.fused_linear_logprobs(x.float()[..., :5], w.float(), ids)
    with pytest.raises(IndexError, match="targets"):
        ttrl_fast.fused_linear_logprobs(x.float(), w.float(), ids + V)
    with pytest.raises(ValueError, match="targets"):
        ttrl_fast.fused_linear_logprobs(x.float(), w.float(), ids[:, :3])
    with pytest.raises(ValueError, match="chunk_size"):
        ttrl_fast.fused_linear_logprobs(x.float(), w.float(), ids, chunk_size=0)


liger_chunked = pytest.importorskip("liger_kernel.chunked_loss", reason="Liger 0.8.5 is a test dependency")


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "cispo", "sapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_module_matches_ligers_fused_linear_grpo_loss(loss_type, beta):
    x, w, b, ids, mask, adv, old, ref = (t.float() if t.is_floating_point() else t for t in _data(5))
    kw = dict(loss_type=loss_type, beta=beta, epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    theirs_mod = liger_chunked.LigerFusedLinearGRPOLoss(compiled=False, **kw)
    ours_mod = ttrl_fast.FusedLinearGRPOLoss(**kw)
    grads = []
    for mod in (theirs_mod, ours_mod):
        xa, wa, ba = (t.clone().requires_grad_(True) for t in (x, w, b))
        loss, metrics = mod(xa, wa, ids, mask.long(), adv, bias=ba, ref_per_token_logps=ref, old_per_token_logps=old)
        loss.backward()
        grads.append((loss.detach(), [m.detach() for m in metrics], xa.grad, wa.grad, ba.grad))
    (l1, m1, *g1), (l2, m2, *g2) = grads
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert len(m1) == len(m2)
    for p, q in zip(m2, m1):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    for p, q in zip(g2, g1):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
