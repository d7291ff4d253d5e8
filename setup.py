"""Build script: only the optional compiled extensions live here (metadata is in pyproject.toml).

    TTRL_FAST_BUILD_EXT=auto (default)  build what the environment allows; a failing extension warns
                        =0              pure-Python install (reference + Triton backends)
                        =1              every extension that applies must build (CI)
    FORCE_CUDA=1                        build _C_cuda even if torch/CUDA_HOME detection says no
    TTRL_FAST_SKIP_CUDA=1               never build _C_cuda (fast CPU-only development builds)
    TORCH_CUDA_ARCH_LIST                CUDA archs (default "8.0;9.0"), MAX_JOBS parallel compile jobs
    DEBUG=1                             -O0 -g

With build isolation (plain `pip install -e .`) torch is not importable here, so the install is
pure Python; `pip install --no-build-isolation -e .` builds against the torch already installed.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
MODE = os.environ.get("TTRL_FAST_BUILD_EXT", "auto").strip().lower()
if MODE not in ("auto", "0", "1"):
    sys.exit(f"TTRL_FAST_BUILD_EXT must be auto, 0 or 1, got {MODE!r}")
STRICT = MODE == "1"
DEBUG = os.environ.get("DEBUG", "0") == "1"


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _nvidia_wheel_includes() -> list[str]:
    """Headers of the pip CUDA wheels (torch's CUDA headers include cusparse.h from nvidia/cu13)."""
    try:
        import nvidia  # namespace package installed with CUDA builds of torch
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    return found


def _git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def _default_cuda_home() -> None:
    """Sets CUDA_HOME to the toolkit root when unset. torch guesses the folder above the first nvcc
    on PATH, which is wrong when that nvcc is a wrapper or link (/usr/local/bin/nvcc -> /usr/local,
    which has no CUDA headers): take the first candidate that really holds the toolkit."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and os.path.exists(
                os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            return


def _extensions_and_cmdclass():
    if MODE == "0":
        print("ttrl_fast: TTRL_FAST_BUILD_EXT=0, pure-Python install")
        return [], {}
    _default_cuda_home()  # before cpp_extension reads it at import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if STRICT:
            sys.exit("ttrl_fast: TTRL_FAST_BUILD_EXT=1 needs torch importable at build time: "
                     "pip install torch first, then pip install --no-build-isolation -e .")
        print("ttrl_fast: torch not importable at build time (build isolation?): pure-Python install. "
              "For the C++/CUDA backends: pip install --no-build-isolation -e .")
        return [], {}

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cpu")]
    # -fopenmp: at::parallel_for's OpenMP backend is a header template whose `#pragma omp parallel`
    # compiles into *our* object files; without the flag it silently runs on one thread. The
    # runtime is the libgomp torch already loaded. -fno-trapping-math: we never unmask FP
    # exceptions, and without it g++ refuses to if-convert the clamps in the shared exp2 (NaN/inf
    # semantics are unchanged).
    cxx = opt + ["-std=c++20", "-fopenmp", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
    extensions = [
        cpp_extension.CppExtension(
            "ttrl_fast._C_cpu",
            sources=_sources("csrc/cpu/*.cpp"),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]

    cuda_home = cpp_extension.CUDA_HOME
    use_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.version.cuda is not None and cuda_home is not None)
    use_cuda = use_cuda and os.environ.get("TTRL_FAST_SKIP_CUDA") != "1"
    if use_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = opt + ["-std=c++17", "-Xptxas=-v", "-lineinfo", f'-DTTRL_FAST_CUDA_ARCHS="{arch_list}"']
        extensions.append(
            cpp_extension.CUDAExtension(
                "ttrl_fast._C_cuda",
                sources=_sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
                include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cuda")]
                + _nvidia_wheel_includes(),
                extra_compile_args={"cxx": cxx + [f'-DTTRL_FAST_CUDA_ARCHS="{arch_list}"'], "nvcc": nvcc},
            )
        )
    else:
        print(f"ttrl_fast: skipping _C_cuda (torch.version.cuda={torch.version.cuda}, CUDA_HOME={cuda_home}; "
              "FORCE_CUDA=1 forces it)")

    class BuildExt(cpp_extension.BuildExtension):
        """Builds each extension on its own: in auto mode a failure warns and the install goes on."""

        built: dict[str, str] = {}

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                self.built[ext.name] = "built"
            except Exception as exc:  # noqa: BLE001 - any compiler/linker failure
                if STRICT:
                    raise
                self.built[ext.name] = f"failed: {exc}"
                warnings.warn(f"ttrl_fast: optional extension {ext.name} failed to build and is skipped: {exc}")

        def run(self):
            super().run()
            info = {
                "extensions": self.built,
                "torch": torch.__version__,
                "torch_cuda": torch.version.cuda,
                "cuda_home": cuda_home,
                "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if use_cuda else None,
                "cxx_flags": cxx,
                "nvcc_flags": nvcc if use_cuda else None,
                "build_mode": MODE,
                "debug": DEBUG,
                "git_sha": _git_sha(),
                "python": sys.version.split()[0],
                "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            for ext in self.extensions:  # next to the built .so (in-place for editable installs)
                target = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.json")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w") as f:
                    json.dump(info, f, indent=2)

    return extensions, {"build_ext": BuildExt}


ext_modules, cmdclass = _extensions_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
