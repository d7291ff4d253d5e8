"""Input checks shared by the public functions: clear errors naming the argument, its shape and what
was expected, raised before any kernel runs."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, value, *, allowed: tuple[torch.dtype, ...] | None = None, kind: str = "") -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if allowed is not None and value.dtype not in allowed:
        raise ValueError(f"{name} must be {kind or allowed}, got dtype {value.dtype} (shape {tuple(value.shape)})")
    return value


def check_integer(name: str, value: Tensor) -> Tensor:
    check_tensor(name, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {value.dtype} (shape {tuple(value.shape)})")
    return value


def check_positive_finite(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {out}")
    return out


def check_real(name: str, value) -> float:
    """A real number (int, float, numpy scalar; not a bool, a string or a tensor) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_same_device(**tensors: Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        raise ValueError("tensors must be on one device, got " + ", ".join(f"{k} on {v.device}" for k, v in present.items()))


def check_mask(mask, shape: torch.Size, *, like: str) -> Tensor | None:
    """A bool mask of `shape` (bool or integer 0/1 tensors accepted), or None."""
    if mask is None:
        return None
    check_tensor("mask", mask)
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask must be a bool (or integer 0/1) tensor, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask must have the shape of {like} {tuple(shape)}, got {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_index_range(index: Tensor, mask: Tensor | None, size: int, *, name: str = "index", dim_name: str = "V") -> None:
    """IndexError unless every index at a True mask position lies in [0, size)."""
    if index.numel() == 0:
        return
    checked = index if mask is None else index[mask]
    if checked.numel() == 0:
        return
    lo, hi = int(checked.min()), int(checked.max())
    if lo < 0 or hi >= size:
        raise IndexError(f"{name} values must lie in [0, {dim_name}={size}) where mask is True; got min {lo}, max {hi}")
