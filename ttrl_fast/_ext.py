"""Loads the optional compiled extensions without ever failing at import.

`_C_cpu` (C++ CPU kernels) and `_C_cuda` (CUDA kernels) are built by setup.py when possible. A
missing or broken .so only records why; ``ttrl_fast.info`` and backend errors report it.
Set TTRL_FAST_VERBOSE=1 to log the load errors as they happen.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from types import ModuleType

_log = logging.getLogger("ttrl_fast")

_MODULES: dict[str, ModuleType | None] = {}
LOAD_ERRORS: dict[str, str] = {}

_NAMES = {"cpu": "ttrl_fast._C_cpu", "cuda": "ttrl_fast._C_cuda"}


def extension(kind: str) -> ModuleType | None:
    """The loaded extension ("cpu" or "cuda"), or None (reason in LOAD_ERRORS[kind])."""
    if kind not in _MODULES:
        try:
            _MODULES[kind] = importlib.import_module(_NAMES[kind])
        except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
            _MODULES[kind] = None
            LOAD_ERRORS[kind] = _explain(kind, exc)
            if os.environ.get("TTRL_FAST_VERBOSE") == "1":
                _log.warning("ttrl_fast: %s", LOAD_ERRORS[kind])
    return _MODULES[kind]


def _explain(kind: str, exc: Exception) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name == _NAMES[kind]:
        return (f"{_NAMES[kind]} is not built (install with torch present: "
                "pip install --no-build-isolation -e .)")
    return f"{_NAMES[kind]} failed to load: {type(exc).__name__}: {exc}"


def build_info() -> dict:
    """Metadata written by setup.py at build time (empty if the extensions were never built)."""
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def empty_cache() -> int:
    """Frees the C++ backend's cached gradient block (see csrc/cpu/large_buffers.h); returns the
    bytes freed. The cache keeps the last released logits-sized gradient for reuse by the next
    backward, like PyTorch's CUDA caching allocator; TTRL_FAST_CPU_CACHE_MB caps it (0 disables)."""
    lib = _MODULES.get("cpu")
    return int(lib.release_cached_memory()) if lib is not None else 0
