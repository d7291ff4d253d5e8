"""One dispatch mechanism for every op: a priority list per device, explicit overrides, and errors
that say why each backend refused.

Selection order for ``backend=None``: the ``use_backend()`` context, then the TTRL_FAST_BACKEND
environment variable, then the device's priority list:
    CUDA tensors: cuda -> triton -> reference
    CPU tensors:  cpp -> reference
An explicitly requested backend that cannot run raises BackendUnavailableError with its reasons;
automatic selection silently skips unavailable backends. Triton runs on CPU only under
TRITON_INTERPRET=1 and only when requested explicitly (tests, debugging).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ttrl_fast import _ext

BACKENDS = ("reference", "cpp", "triton", "cuda")
PRIORITY = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")}
# Backends that compute in fp32 from these input dtypes.
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("ttrl_fast_backend", default=None)


class BackendUnavailableError(NotImplementedError):
    """A requested backend cannot run this op on these inputs (the message lists why)."""


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op: the raw fwd/bwd of ttrl_fast/kernels/__init__.py."""

    backend: str
    fwd: Callable
    bwd: Callable | None


# op -> backend -> (module path, forward attribute, backward attribute or None); imported lazily so
# that a missing triton or extension never breaks `import ttrl_fast`.
_REGISTRY: dict[str, dict[str, tuple[str, str, str | None]]] = {
    "selective_log_softmax": {
        "reference": ("ttrl_fast.reference.logprob", "selective_log_softmax_fwd", "selective_log_softmax_bwd"),
        "cpp": ("ttrl_fast.kernels.cpp", "selective_log_softmax_fwd", "selective_log_softmax_bwd"),
        "triton": ("ttrl_fast.kernels.triton.selective_log_softmax", "selective_log_softmax_fwd",
                   "selective_log_softmax_bwd"),
        "cuda": ("ttrl_fast.kernels.cuda", "selective_log_softmax_fwd", "selective_log_softmax_bwd"),
    },
    # The loss is a scalar: its gradient w.r.t. logp is produced by the forward (no backward kernel).
    "policy_loss": {
        "reference": ("ttrl_fast.reference.policy_loss", "policy_loss_fwd", None),
        "cpp": ("ttrl_fast.kernels.cpp", "policy_loss_fwd", None),
        "triton": ("ttrl_fast.kernels.triton.policy_loss", "policy_loss_fwd", None),
        "cuda": ("ttrl_fast.kernels.cuda", "policy_loss_fwd", None),
    },
    "group_advantages": {
        "reference": ("ttrl_fast.reference.advantages", "group_advantages_fwd", None),
        "cpp": ("ttrl_fast.kernels.cpp", "group_advantages_fwd", None),
        "triton": ("ttrl_fast.kernels.triton.advantages", "group_advantages_fwd", None),
        "cuda": ("ttrl_fast.kernels.cuda", "group_advantages_fwd", None),
    },
    # One decode step of the rollout sampler: no gradient.
    "sample_tokens": {
        "reference": ("ttrl_fast.reference.sampling", "sample_tokens_fwd", None),
        "cpp": ("ttrl_fast.kernels.cpp", "sample_tokens_fwd", None),
        "triton": ("ttrl_fast.kernels.triton.sampling", "sample_tokens_fwd", None),
        "cuda": ("ttrl_fast.kernels.cuda", "sample_tokens_fwd", None),
    },
}


def ops() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _triton_error() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run at all in this process, or None if it is installed."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "cpp" and _ext.extension("cpu") is None:
        return _ext.LOAD_ERRORS["cpu"]
    if name == "cuda":
        if _ext.extension("cuda") is None:
            return _ext.LOAD_ERRORS["cuda"]
        if not torch.cuda.is_available():
            return "no CUDA device is available (torch.cuda.is_available() is False)"
    if name == "triton":
        return _triton_error()
    return None


def refusal_reasons(op: str, name: str, device: torch.device, dtype: torch.dtype, explicit: bool) -> list[str]:
    """Every reason backend `name` refuses `op` on tensors of this device and dtype ([] = it runs)."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {ops()}")
    reasons = []
    if name not in _REGISTRY[op]:
        reasons.append(f"{op} has no {name} implementation")
    why = unavailable_reason(name)
    if why:
        reasons.append(why)
    kind = device.type
    if name == "cpp" and kind != "cpu":
        reasons.append(f"runs on CPU tensors only, got device={device}")
    if name == "cuda" and kind != "cuda":
        reasons.append(f"runs on CUDA tensors only, got device={device}")
    if name == "triton" and kind != "cuda":
        if kind != "cpu" or not _interpreting():
            reasons.append(f"runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1; got device={device}")
        elif not explicit:
            reasons.append("the Triton interpreter on CPU is for tests: request backend='triton' explicitly")
        elif dtype == torch.bfloat16:
            reasons.append("the Triton interpreter has no bfloat16")
    if name != "reference" and dtype not in _KERNEL_DTYPES:
        reasons.append(f"dtype {dtype} is not one of {_KERNEL_DTYPES}")
    return reasons


def requested_backend(backend: str | None = None) -> str | None:
    """The explicit choice in force: argument, then use_backend() context, then TTRL_FAST_BACKEND."""
    choice = backend or _override.get() or os.environ.get("TTRL_FAST_BACKEND") or None
    if choice is not None and choice not in BACKENDS and choice != "auto":
        raise ValueError(f"backend must be one of {BACKENDS} or None/'auto', got {choice!r}")
    return None if choice == "auto" else choice


def select(op: str, device: torch.device, dtype: torch.dtype, backend: str | None = None) -> Impl:
    """The implementation of `op` to run on tensors of this device/dtype (see module docstring)."""
    choice = requested_backend(backend)
    if choice is not None:
        reasons = refusal_reasons(op, choice, device, dtype, explicit=True)
        if reasons:
            raise BackendUnavailableError(
                f"backend {choice!r} cannot run {op}(device={device}, dtype={dtype}): " + "; ".join(reasons))
        return _load(op, choice)
    rejected = []
    for name in PRIORITY.get(device.type, ("reference",)):
        reasons = refusal_reasons(op, name, device, dtype, explicit=False)
        if not reasons:
            return _load(op, name)
        rejected.append(f"  {name}: " + "; ".join(reasons))
    raise BackendUnavailableError(f"no backend for {op}(device={device}, dtype={dtype}):\n" + "\n".join(rejected))


_LOADED: dict[tuple[str, str], Impl] = {}


def _load(op: str, name: str) -> Impl:
    key = (op, name)
    if key not in _LOADED:
        module_path, fwd, bwd = _REGISTRY[op][name]
        module = importlib.import_module(module_path)
        _LOADED[key] = Impl(name, getattr(module, fwd), None if bwd is None else getattr(module, bwd))
    return _LOADED[key]


def available(name: str, device: str | torch.device = "cpu", op: str = "selective_log_softmax") -> bool:
    """True if `backend=name` would run `op` on fp32 tensors of this device."""
    return not refusal_reasons(op, name, torch.device(device), torch.float32, explicit=True)


def available_backends(device: str | torch.device = "cpu", op: str = "selective_log_softmax") -> list[str]:
    """Backends that run `op` on fp32 tensors of this device when requested explicitly."""
    return [name for name in BACKENDS if available(name, device, op)]


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Within the block, ops with backend=None use `name` (None or 'auto' restores automatic choice)."""
    if name is not None and name not in BACKENDS and name != "auto":
        raise ValueError(f"backend must be one of {BACKENDS} or None/'auto', got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)
