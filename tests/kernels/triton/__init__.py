"""Triton kernel tests. Without CUDA they run under TRITON_INTERPRET=1 (set by tests/conftest.py
before any kernel module is imported)."""
import importlib.util
from pathlib import Path
from types import ModuleType

_KERNELS = Path(__file__).resolve().parents[3] / "ttrl_fast" / "kernels" / "triton"


def load_kernel_module(name: str) -> ModuleType:
    """ttrl_fast/kernels/triton/<name>.py loaded by path under a private name: a fresh module whose
    kernels are decorated now, with the interpreter setting in force, whatever the package imported."""
    spec = importlib.util.spec_from_file_location(f"_ttrl_test_triton_{name}", _KERNELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
