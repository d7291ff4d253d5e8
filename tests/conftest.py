"""Shared fixtures. TRITON_INTERPRET must be set before anything imports triton kernels (the
decorator reads it), so it is set here, first, when there is no GPU."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from ttrl_fast import _ext, backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CPU_ISAS = ("avx512", "avx2", "baseline")


def _backend_params() -> list:
    """Every backend that runs here, the C++ one once per CPU ISA variant this machine supports.
    Unavailable ones still appear, skipped with the reason (so a missing build is visible)."""
    params = []
    for name in backends.BACKENDS:
        reasons = backends.refusal_reasons("selective_log_softmax", name, DEVICE, torch.float32, explicit=True)
        if name == "cpp" and not reasons:
            lib = _ext.extension("cpu")
            for isa in CPU_ISAS:
                runnable = lib.force_isa(isa)
                lib.force_isa("")
                marks = () if runnable else pytest.mark.skip(reason=f"this CPU cannot run the {isa} variant")
                params.append(pytest.param(f"cpp-{isa}", id=f"cpp-{isa}", marks=marks))
            continue
        marks = pytest.mark.skip(reason="; ".join(reasons)) if reasons else ()
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """A backend name to pass as backend=...; cpp-<isa> params force that ISA variant meanwhile."""
    name = request.param
    if name.startswith("cpp-"):
        lib = _ext.extension("cpu")
        assert lib.force_isa(name[4:])
        yield "cpp"
        lib.force_isa("")
    else:
        yield name


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
