"""`ttrl_fast::selective_log_softmax_fwd` / `_bwd`: the torch.library ops behind the public function.

They take already-validated, kernel-shaped inputs (the raw contract of ttrl_fast/kernels/__init__.py)
plus the requested backend name ("" = automatic) and dispatch inside the op body, so torch.compile,
opcheck and embedders see one op whatever backend runs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ttrl_fast import backends

_OP = "selective_log_softmax"


@torch.library.custom_op("ttrl_fast::selective_log_softmax_fwd", mutates_args=())
def selective_log_softmax_fwd(
    logits: Tensor,  # [A, B, V], stride(-1) == 1
    index: Tensor,  # [A*B] int64
    mask: Optional[Tensor],  # [A*B] bool
    inv_temperature: float,
    with_entropy: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    impl = backends.select(_OP, logits.device, logits.dtype, backend or None)
    return impl.fwd(logits, index, mask, inv_temperature, with_entropy)


@selective_log_softmax_fwd.register_fake
def _(logits, index, mask, inv_temperature, with_entropy, backend):
    n = logits.shape[0] * logits.shape[1]
    logp = logits.new_empty((n,), dtype=torch.float32)
    entropy = logits.new_empty((n if with_entropy else 0,), dtype=torch.float32)
    stats = logits.new_empty((n, 2), dtype=torch.float32)
    return logp, entropy, stats


@torch.library.custom_op("ttrl_fast::selective_log_softmax_bwd", mutates_args=())
def selective_log_softmax_bwd(
    grad_logp: Optional[Tensor],  # [A*B] fp32
    grad_entropy: Optional[Tensor],  # [A*B] fp32
    logits: Tensor,  # [A, B, V]
    index: Tensor,
    mask: Optional[Tensor],
    stats: Tensor,  # [A*B, 2]
    entropy: Tensor,  # [A*B] (read only with grad_entropy)
    inv_temperature: float,
    backend: str,
) -> Tensor:
    impl = backends.select(_OP, logits.device, logits.dtype, backend or None)
    return impl.bwd(grad_logp, grad_entropy, logits, index, mask, stats, entropy, inv_temperature)


@selective_log_softmax_bwd.register_fake
def _(grad_logp, grad_entropy, logits, index, mask, stats, entropy, inv_temperature, backend):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _setup_context(ctx, inputs, output):
    logits, index, mask, inv_temperature, with_entropy, backend = inputs
    _, entropy, stats = output
    ctx.save_for_backward(logits, index, mask, stats, entropy)
    ctx.inv_temperature = inv_temperature
    ctx.with_entropy = with_entropy
    ctx.backend = backend


def _as_grad(g: Tensor | None) -> Tensor | None:
    # Upstream gradients may be expanded (stride 0) or non-fp32; kernels want contiguous fp32.
    return None if g is None else g.to(torch.float32).contiguous()


def _backward(ctx, grad_logp, grad_entropy, _grad_stats):
    logits, index, mask, stats, entropy = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    grad_entropy = grad_entropy if ctx.with_entropy else None
    grad = selective_log_softmax_bwd(
        _as_grad(grad_logp), _as_grad(grad_entropy), logits, index, mask, stats, entropy,
        ctx.inv_temperature, ctx.backend)
    return grad, None, None, None, None, None


selective_log_softmax_fwd.register_autograd(_backward, setup_context=_setup_context)
