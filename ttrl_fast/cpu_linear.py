"""fp32 linear layer for CPU decode steps: ``x @ weight.T (+ bias)`` on the C++ extension's skinny GEMM.

A decode step multiplies a few rows (M = 1 .. 64 sequences) by a wide weight, so its cost is the
streaming of the weight. torch's fp32 CPU matmul goes through MKL, whose small-M paths are slow on AMD
CPUs; ``linear_f32`` runs our AVX-512 kernel instead (csrc/cpu/linear_skinny_f32_avx512.cpp): each
weight row is read once per pass of up to 64 rows of ``x``, with fp32 accumulation in a fixed order
(csrc/include/ttrl_fast/linear_f32_math.h). Its results are bitwise reproducible: equal across calls
and for any ``torch.get_num_threads()``. It is tuned for M <= 64 and correct for any M.

    from ttrl_fast.cpu_linear import linear_f32
    logits = linear_f32(hidden, lm_head.weight, lm_head.bias)   # [B, H] @ [V, H]^T -> [B, V]
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ttrl_fast import _ext
from ttrl_fast import _validation as v

__all__ = ["SkinnyLinear", "decode_linears", "has_native", "linear_f32"]

_NATIVE: object | None = None  # the extension module once has_native() was decided True, else False


def _native_lib():
    global _NATIVE
    if _NATIVE is None:
        lib = _ext.extension("cpu")
        ok = lib is not None and hasattr(lib, "linear_f32") and bool(lib.linear_f32_has_native())
        _NATIVE = lib if ok else False
    return _NATIVE or None


def has_native() -> bool:
    """True when the C++ extension is loaded, has ``linear_f32`` and this CPU runs its AVX-512 kernel
    (avx512f + avx512vl + avx512dq). Where it is False, :func:`linear_f32` is ``F.linear``."""
    return _native_lib() is not None


def linear_f32(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` like ``torch.nn.functional.linear``, on the AVX-512 skinny GEMM.

    Args:
        x: [..., K] input; leading dimensions are flattened to M rows (any M; fastest for M <= 64).
        weight: [N, K] nn.Linear weight.
        bias: optional [N].

    Returns:
        [..., N] float32 on the kernel path (a new tensor; it records no autograd graph).

    The kernel runs only when x, weight and bias are float32 CPU tensors, weight has contiguous rows
    (``weight.stride(-1) == 1``), :func:`has_native` is True and autograd need not record the call
    (grad mode off, e.g. under ``torch.no_grad()`` / ``torch.inference_mode()``, or nothing requires
    grad). Otherwise this is exactly ``torch.nn.functional.linear(x, weight, bias)``: other dtypes and
    devices, CPUs without AVX-512 (the extension's portable C++ loop is slower than MKL), an extension
    that is not built, a transposed weight view (copying it per call would cost more than the GEMM),
    and calls that need gradients.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: the shapes do not match (x [..., K], weight [N, K], bias [N]).
    """
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))):
        v.check_tensor("x", x)
        v.check_tensor("weight", weight)
        v.check_tensor("bias", bias)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (the nn.Linear layout), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have shape [..., K] with K = weight.shape[1] = {k}, got x {tuple(x.shape)} "
                         f"and weight {tuple(weight.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"bias must have shape [N] = [{n}] (N = weight.shape[0]), got {tuple(bias.shape)}")

    # Cheap checks first: this sits in every decode step (is_cpu / is_contiguous() are the fast calls).
    lib = _NATIVE if _NATIVE is not None else _native_lib()
    if (not lib or x.dtype != torch.float32 or weight.dtype != torch.float32 or not x.is_cpu or not weight.is_cpu
            or (bias is not None and (bias.dtype != torch.float32 or not bias.is_cpu))
            or (not weight.is_contiguous() and k > 1 and weight.stride(-1) != 1)
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad)))):
        return F.linear(x, weight, bias)
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    if x.dim() == 2 and (x.is_contiguous() or k <= 1 or x.stride(-1) == 1):
        return lib.linear_f32(x, weight, bias)  # [M, N]
    rows = x.reshape(-1, k) if k else x.reshape(math.prod(x.shape[:-1]), 0)  # [M, K] (a view where possible)
    if k > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = lib.linear_f32(rows, weight, bias)  # [M, N]
    return out.view(*x.shape[:-1], n)


class SkinnyLinear(torch.nn.Linear):
    """nn.Linear whose forward takes :func:`linear_f32` for decode-sized inputs (<= 64 rows); larger
    inputs (a prefill) stay on torch's GEMM. Same parameters and state-dict keys as nn.Linear."""

    def forward(self, input: Tensor) -> Tensor:
        if input.numel() > 64 * self.in_features:
            return F.linear(input, self.weight, self.bias)
        return linear_f32(input, self.weight, self.bias)


@contextlib.contextmanager
def decode_linears(model: torch.nn.Module):
    """Within the block, the model's plain fp32 CPU nn.Linear layers are SkinnyLinear (restored after,
    also on errors). Layers of other types (FSDP-wrapped, quantised, LoRA adapters' own small
    matrices wrap plain base layers, which are swapped) are left alone. A no-op without the kernel."""
    swapped = []
    if has_native():
        swapped = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
                   and m.weight.device.type == "cpu"]
    for module in swapped:
        module.__class__ = SkinnyLinear
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = torch.nn.Linear
