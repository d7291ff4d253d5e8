"""`python -m ttrl_fast.info`: which backend can run which op here, and why not; versions; build.

Exit status is 0 whatever is missing: this is a report, not a check.
"""
from __future__ import annotations

import json
import platform
import sys

import torch

from ttrl_fast import __version__, _ext, backends


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception as exc:  # not installed, or broken
        return f"not importable ({type(exc).__name__})"
    return getattr(mod, "__version__", "?")


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def report() -> str:
    """The report as text."""
    lines = [
        f"ttrl_fast {__version__}",
        f"python {platform.python_version()}  torch {torch.__version__} (cuda {torch.version.cuda})  "
        f"triton {_version('triton')}",
        f"cuda devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}",
        "",
        "backends (installed?):",
    ]
    for name in backends.BACKENDS:
        why = backends.unavailable_reason(name)
        lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    lines += ["", "op x backend (fp32, requested explicitly):"]
    for op in backends.ops():
        for device in _devices():
            for name in backends.BACKENDS:
                reasons = backends.refusal_reasons(op, name, device, torch.float32, explicit=True)
                status = "runs" if not reasons else "no: " + "; ".join(reasons)
                lines.append(f"  {op:<24} {device.type:<5} {name:<10} {status}")
            auto = backends.select(op, device, torch.float32).backend
            lines.append(f"  {op:<24} {device.type:<5} {'auto':<10} -> {auto}")
    lines += ["", "compiled extensions:"]
    for kind in ("cpu", "cuda"):
        lib = _ext.extension(kind)
        if lib is None:
            lines.append(f"  _C_{kind}: {_ext.LOAD_ERRORS[kind]}")
        else:
            lines.append(f"  _C_{kind}: loaded, {json.dumps(lib.build_info(), default=str)[:400]}")
    info = _ext.build_info()
    lines += ["", "build metadata (ttrl_fast/_build_info.json):", "  " + (json.dumps(info, indent=2).replace(
        "\n", "\n  ") if info else "none: the extensions were never built in this install")]
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
