"""Shared benchmark harness for ttrl_fast.

Every benchmark in ``bench/`` builds a dict of zero-argument provider callables per
(mode, dtype, shape) group and hands it to :func:`run_group`, which

1. warms every provider up (compilation happens here and is never timed; a provider
   that raises is skipped with a printed ``SKIP`` line instead of crashing the run),
2. times all providers *interleaved in one process*: each round calls every provider
   once, rotating the order each round, so drift (thermal, frequency, background load)
   hits all providers alike,
3. measures the peak extra memory of one separate, untimed call per provider,
4. returns one :class:`Row` per provider and prints an aligned table.

Rows can be appended to a CSV with :func:`append_csv` (header written when the file is
new). Peak memory on CPU uses the Linux RSS high-water mark, see :func:`peak_extra_mb`.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime as _dt
import gc
import math
import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES: tuple[str, ...] = ("forward", "full")

Provider = Callable[[], object]


# --------------------------------------------------------------------------- rows / CSV


@dataclass
class Row:
    """One CSV row: the result of one provider for one (op, mode, dtype, shape)."""

    op: str
    provider: str
    mode: str
    dtype: str
    shape: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    speedup_vs_baseline: float
    gbps: float
    peak_extra_mb: float
    device: str
    device_name: str
    torch: str
    triton: str
    git_sha: str
    timestamp: str


CSV_COLUMNS: list[str] = [f.name for f in fields(Row)]


def append_csv(rows: Sequence[Row], path: Path) -> None:
    """Append ``rows`` to the CSV at ``path``, creating it (with header) if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            print(f"WARNING: {path} has a different header; appending anyway")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt_csv(v) for k, v in asdict(row).items()})


def _fmt_csv(v: object) -> object:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def default_csv_path(device: str) -> Path:
    """``bench/results/<device>.csv``."""
    return RESULTS_DIR / f"{device}.csv"


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvInfo:
    """Per-run metadata copied into every row."""

    device: str
    device_name: str
    torch: str
    triton: str
    git_sha: str


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha() -> str:
    """Short HEAD sha ("unknown" without a commit), with "+dirty" if the tree has changes."""
    sha = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain"):
        sha += "+dirty"
    return sha


def device_name(device: str) -> str:
    """GPU name from torch, or the CPU model from /proc/cpuinfo."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown-cpu"


def triton_version() -> str:
    try:
        import triton  # noqa: PLC0415

        return str(triton.__version__)
    except Exception:  # noqa: BLE001 - any import problem means "not usable"
        return "none"


def env_info(device: str) -> EnvInfo:
    return EnvInfo(device, device_name(device), torch.__version__, triton_version(), git_sha())


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Per-call wall-time statistics of one provider, in milliseconds."""

    p50_ms: float
    p20_ms: float
    p80_ms: float
    calls: int


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def skip(name: str, reason: str) -> None:
    """Print the one-line skip notice every benchmark uses (the smoke test greps for it)."""
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else "no reason given"
    print(f"SKIP provider={name} reason={first[:300]}")


def warmup(providers: Mapping[str, Provider], n: int, device: str) -> dict[str, Provider]:
    """Call each provider ``n`` times (at least once); return those that did not raise."""
    ok: dict[str, Provider] = {}
    for name, fn in providers.items():
        try:
            for _ in range(max(1, n)):
                fn()
            _sync(device)
            ok[name] = fn
        except Exception as e:  # noqa: BLE001 - a broken provider must not kill the run
            skip(name, f"{type(e).__name__}: {e}")
    return ok


def time_interleaved(
    providers: Mapping[str, Provider],
    *,
    device: str,
    rounds: int = 20,
    min_time_s: float = 0.0,
    max_rounds: int = 2000,
) -> dict[str, Timing]:
    """Time already-warmed providers interleaved: every round calls each one once.

    The order rotates by one each round. Runs at least ``rounds`` rounds and keeps going
    (up to ``max_rounds``) until ``min_time_s`` of total wall time has elapsed. The
    garbage collector is disabled while timing. A provider that raises is dropped.
    """
    names = list(providers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        r = 0
        while names and r < max_rounds and (r < rounds or time.perf_counter() - start < min_time_s):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = providers[name]
                try:
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    samples[name].append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001
                    skip(name, f"failed while timing: {type(e).__name__}: {e}")
                    names.remove(name)
                    samples.pop(name)
            r += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        n: Timing(
            p50_ms=1e3 * statistics.median(xs),
            p20_ms=1e3 * _quantile(xs, 0.2),
            p80_ms=1e3 * _quantile(xs, 0.8),
            calls=len(xs),
        )
        for n, xs in samples.items()
        if xs
    }


# --------------------------------------------------------------------------- memory

_CLEAR_REFS = "/proc/self/clear_refs"
_rss_warned = False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _release_caches() -> None:
    """Empty ttrl_fast's CPU block cache so a reused gradient block cannot hide a provider's peak."""
    try:
        import ttrl_fast

        ttrl_fast.empty_cache()
    except Exception:  # noqa: BLE001 - ttrl_fast absent or half-built: nothing cached
        pass


def _malloc_trim() -> None:
    """Give freed glibc heap memory back to the OS so it cannot hide a later peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_hwm_supported() -> bool:
    """True if /proc/self/clear_refs accepts "5" (reset of VmHWM)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def peak_extra_mb(fn: Provider, device: str, setup: Optional[Callable[[], None]] = None) -> float:
    """Peak memory (MB, 1e6 bytes) one call of ``fn`` needs beyond what is already live.

    ``setup`` (optional) runs first and should drop state a previous call left behind
    (e.g. ``x.grad = None``) so that the call's own outputs count.
    CUDA: ``max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
    allocated bytes before. CPU: the process RSS high-water mark; "5" written to
    /proc/self/clear_refs resets VmHWM to the current RSS, then
    ``VmHWM(after) - VmRSS(before)``. NaN when that file is not writable. Caches (glibc's free
    lists, ttrl_fast's gradient block cache) are emptied first, so this is a first call's peak.
    """
    global _rss_warned
    if setup is not None:
        setup()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 1e6
    _release_caches()
    _malloc_trim()
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        before_kb = _status_kb("VmRSS")
    except (OSError, KeyError) as e:
        if not _rss_warned:
            print(f"NOTE: peak memory unavailable ({_CLEAR_REFS} not writable: {e}); reporting NaN")
            _rss_warned = True
        return float("nan")
    fn()
    return max(0, _status_kb("VmHWM") - before_kb) * 1024 / 1e6


# --------------------------------------------------------------------------- groups / tables


@dataclass
class BenchConfig:
    """Timing options shared by all groups of one run."""

    device: str
    rounds: int = 20
    warmup: int = 2
    min_time_s: float = 0.0
    measure_memory: bool = True


def run_group(
    *,
    op: str,
    mode: str,
    dtype: str,
    shape: Sequence[int],
    providers: Mapping[str, Provider],
    baseline: str,
    bytes_moved: int,
    cfg: BenchConfig,
    env: EnvInfo,
    mem_setup: Optional[Callable[[], None]] = None,
) -> list[Row]:
    """Warm up, time interleaved, measure memory; return one Row per surviving provider.

    ``bytes_moved`` is the benchmark's explicit byte count for one call; ``gbps`` is
    ``bytes_moved / p50_seconds / 1e9``. ``speedup_vs_baseline`` is
    ``baseline p50 / provider p50`` (NaN if the baseline was skipped).
    """
    ok = warmup(providers, cfg.warmup, cfg.device)
    timings = time_interleaved(ok, device=cfg.device, rounds=cfg.rounds, min_time_s=cfg.min_time_s)
    mem: dict[str, float] = {}
    for name in timings:
        mem[name] = peak_extra_mb(ok[name], cfg.device, mem_setup) if cfg.measure_memory else float("nan")
    if mem_setup is not None:
        mem_setup()
    base = timings.get(baseline)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    shape_s = "x".join(str(s) for s in shape)
    rows = []
    for name, t in timings.items():
        rows.append(
            Row(
                op=op,
                provider=name,
                mode=mode,
                dtype=dtype,
                shape=shape_s,
                p50_ms=t.p50_ms,
                p20_ms=t.p20_ms,
                p80_ms=t.p80_ms,
                speedup_vs_baseline=(base.p50_ms / t.p50_ms) if base else float("nan"),
                gbps=bytes_moved / (t.p50_ms / 1e3) / 1e9,
                peak_extra_mb=mem[name],
                device=env.device,
                device_name=env.device_name,
                torch=env.torch,
                triton=env.triton,
                git_sha=env.git_sha,
                timestamp=stamp,
            )
        )
    return rows


def format_table(
    rows: Sequence[Row],
    *,
    baseline: str,
    compare_to: Sequence[str] = (),
    floor_ms: Optional[float] = None,
) -> str:
    """Aligned plain-text table for one group of rows.

    ``compare_to`` adds a "x vs NAME" column per named provider; ``floor_ms`` adds a
    "x floor" column (provider p50 / floor, 1.0 = at the floor).
    """
    if not rows:
        return "(no provider ran)"
    r0 = rows[0]
    p50 = {r.provider: r.p50_ms for r in rows}
    head = ["provider", "p50 ms", "p20-p80 ms", f"x vs {baseline}"]
    head += [f"x vs {c}" for c in compare_to]
    head += ["GB/s", "peak extra MB"]
    if floor_ms is not None:
        head.append("x floor")
    body: list[list[str]] = []
    for r in rows:
        line = [r.provider, f"{r.p50_ms:.3f}", f"{r.p20_ms:.3f}-{r.p80_ms:.3f}", _x(r.speedup_vs_baseline)]
        line += [_x(p50[c] / r.p50_ms) if c in p50 else "-" for c in compare_to]
        line += [f"{r.gbps:.2f}", "nan" if math.isnan(r.peak_extra_mb) else f"{r.peak_extra_mb:.1f}"]
        if floor_ms is not None:
            line.append(f"{r.p50_ms / floor_ms:.2f}")
        body.append(line)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = f"== {r0.op} | mode={r0.mode} dtype={r0.dtype} shape={r0.shape} device={r0.device} =="
    lines = [title, fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def _x(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}x"


# --------------------------------------------------------------------------- CLI


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_common_args(p: argparse.ArgumentParser, *, default_dtypes: str = "fp32,bf16") -> argparse.ArgumentParser:
    """Add the flags every benchmark shares; use :func:`finish_args` after parsing."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", type=_csv_list, default=_csv_list(default_dtypes), help="comma list of fp32,bf16,fp16")
    p.add_argument("--shapes", choices=["quick", "full"], default="full")
    p.add_argument("--providers", type=_csv_list, default=None, help="comma list (default: all available)")
    p.add_argument("--modes", type=_csv_list, default=list(MODES), help="comma list of forward,full")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default: per shape set)")
    p.add_argument("--warmup", type=int, default=None, help="warmup calls per provider (default: per shape set)")
    p.add_argument("--min-time", type=float, default=None, help="minimum total timing seconds per group")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--csv", type=Path, default=None, help="append rows here (default bench/results/<device>.csv)")
    p.add_argument("--no-csv", action="store_true", help="do not write any CSV")
    return p


def finish_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Validate the shared flags and resolve ``args.csv`` (None when --no-csv)."""
    bad = [d for d in args.dtype if d not in DTYPES]
    if bad:
        p.error(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    if args.no_csv:
        args.csv = None
    elif args.csv is None:
        args.csv = default_csv_path(args.device)
    return args


def want(args: argparse.Namespace, provider: str) -> bool:
    """True if ``provider`` was selected by --providers (all when the flag is absent)."""
    return args.providers is None or provider in args.providers


def print_header(env: EnvInfo) -> None:
    """Print the run metadata (a high 1-min load average means noisy timings) and caveats."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device={env.device} ({env.device_name}) threads={torch.get_num_threads()} "
        f"torch={env.torch} triton={env.triton} git={env.git_sha} loadavg1={load:.2f}"
    )
    if env.device == "cpu" and not rss_hwm_supported():
        print(f"NOTE: {_CLEAR_REFS} not writable; peak_extra_mb will be NaN")


__all__ = [
    "CSV_COLUMNS",
    "DTYPES",
    "MODES",
    "BenchConfig",
    "EnvInfo",
    "Row",
    "Timing",
    "add_common_args",
    "append_csv",
    "default_csv_path",
    "env_info",
    "finish_args",
    "format_table",
    "peak_extra_mb",
    "print_header",
    "run_group",
    "skip",
    "time_interleaved",
    "want",
    "warmup",
]
