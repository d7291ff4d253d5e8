"""Binds a raw function of a compiled extension by name, loading the extension on first call."""
from __future__ import annotations

from typing import Callable

from ttrl_fast import _ext


def compiled_function(kind: str, name: str) -> Callable:
    """`name` from the extension `kind` ("cpu" -> _C_cpu, "cuda" -> _C_cuda), as a plain function."""

    def call(*args):
        lib = _ext.extension(kind)
        if lib is None:
            raise RuntimeError(_ext.LOAD_ERRORS[kind])
        return getattr(lib, name)(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{name} of ttrl_fast._C_{kind}: raw contract in ttrl_fast/kernels/__init__.py."
    return call
