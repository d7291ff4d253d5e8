"""`ttrl-fast bench`: run every benchmark of the source checkout's bench/ folder, collect their rows as
CSV, and render the plots and the Markdown performance section (bench/report.py).

    ttrl-fast bench --quick                         # every benchmark in its quick mode (minutes on 2 cores)
    ttrl-fast bench --full                          # the README's shapes (the default; an hour on 2 cores)
    ttrl-fast bench --quick --only logprob,sampler  # a subset (see --list)
    ttrl-fast bench --quick --args "logprob=--dtype fp32 --providers eager,ttrl_fast:cpp"

Each benchmark runs as its own process (``python bench/<script> ...``; its output is streamed and kept
in OUT/logs/<name>.log). The harness benchmarks write their CSV rows directly; the two GEMM benchmarks
(which only print a table) are parsed into the same columns. Rows land in OUT/<name>_<device>.csv,
replaced on every run of that benchmark, so OUT holds the latest result of each benchmark and device;
then bench/report.py renders OUT/<op>_<device>.png (speed-up vs the baseline per shape) and
OUT/performance.md from every OUT/*_<device>.csv. A benchmark that fails is reported and the others
still run; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    quick: tuple[str, ...]  # arguments of the quick mode
    full: tuple[str, ...]  # arguments of the full mode
    csv: bool  # writes harness CSV rows with --csv PATH
    takes_device: bool  # accepts --device cpu|cuda
    description: str


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("logprob", "bench_logprob.py", ("--shapes", "quick"), (), True, True,
              "selective log-softmax [N, V]: eager, torch.compile, every ttrl_fast backend"),
    Benchmark("grpo_loss", "bench_grpo_loss.py", ("--shapes", "quick"), (), True, True,
              "GRPO loss from logits, forward + backward"),
    Benchmark("fused_linear", "bench_fused_linear.py", ("--shapes", "quick"), (), True, False,
              "GRPO loss from hidden states through the LM head (CPU): eager, Liger, ttrl_fast"),
    Benchmark("sampler", "bench_sampler.py", ("--quick",), (), True, False,
              "RolloutSampler.generate against HF generate (CPU)"),
    Benchmark("linear_f32", "bench_linear_f32.py",
              ("--shapes", "256x688,688x256", "--m", "1,16", "--threads", "1", "--rounds", "11"), (), False, False,
              "fp32 skinny GEMM of decode steps against F.linear (CPU; parsed from its table)"),
    Benchmark("gemm_bf16", "bench_gemm_bf16.py", ("--m", "64", "--n", "4096", "--k", "256", "--rounds", "5"), (),
              False, False, "bf16 x bf16 -> fp32 LM-head GEMM against torch (CPU; parsed from its table)"),
)
BY_NAME = {b.name: b for b in BENCHMARKS}
# A benchmark that exits with one of these in its output could not run here (not a failure).
NOT_BUILT = re.compile(r"extension with \S+ is not built")


# ------------------------------------------------------------------------------------------ paths


def find_bench_dir(explicit: Path | None = None) -> Path:
    """bench/ of the source checkout: --bench-dir, else next to the ttrl_fast package, else ./bench."""
    candidates = [explicit] if explicit is not None else [Path(__file__).resolve().parents[1] / "bench",
                                                          Path.cwd() / "bench"]
    for c in candidates:
        if c is not None and (c / "_harness.py").is_file():
            return c.resolve()
    raise FileNotFoundError(
        "the benchmark scripts live in the source checkout's bench/ folder (not in an installed wheel); "
        f"looked in {', '.join(str(c) for c in candidates if c is not None)}: run from a checkout or pass --bench-dir")


def _load(path: Path, name: str):
    """Import a bench/ module by path (bench/ is not a package)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def harness(bench_dir: Path):
    return _load(bench_dir / "_harness.py", "ttrl_fast_bench_harness")


def report_module(bench_dir: Path):
    return _load(bench_dir / "report.py", "ttrl_fast_bench_report")


# ------------------------------------------------------------------------------------------ parsing

_LINEAR_F32 = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                         r"([\d.]+)\s+([\d.]+)x\s*$")
_GEMM_BF16 = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([A-Za-z_][\w]*)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_linear_f32(text: str) -> list[dict]:
    """bench_linear_f32.py's table -> rows (provider torch = the baseline, ttrl_fast)."""
    rows = []
    for line in text.splitlines():
        m = _LINEAR_F32.match(line)
        if not m:
            continue
        thr, k, n, mm = (int(x) for x in m.groups()[:4])
        t_torch, gb_torch, t_ours, gb_ours = float(m[5]), float(m[6]), float(m[8]), float(m[9])
        common = dict(op="linear_f32", mode=f"threads{thr}", dtype="fp32", shape=f"{mm}x{k}x{n}")
        rows.append(dict(common, provider="torch", p50_ms=t_torch, speedup_vs_baseline=1.0, gbps=gb_torch))
        rows.append(dict(common, provider="ttrl_fast", p50_ms=t_ours, speedup_vs_baseline=t_torch / t_ours,
                         gbps=gb_ours))
    return rows


def parse_gemm_bf16(text: str, baseline: str = "torch_bf16") -> list[dict]:
    """bench_gemm_bf16.py's table -> rows; speed-up against torch's bf16 GEMM of the same shape."""
    rows = []
    for line in text.splitlines():
        m = _GEMM_BF16.match(line)
        if not m:
            continue
        mm, n, k = (int(x) for x in m.groups()[:3])
        ms = float(m[5])
        moved = (mm * k + n * k) * 2 + mm * n * 4
        rows.append(dict(op="gemm_bf16", provider=m[4], mode="forward", dtype="bf16", shape=f"{mm}x{k}x{n}", p50_ms=ms,
                         gbps=moved / (ms / 1e3) / 1e9))
    for r in rows:
        base = next((b for b in rows if b["shape"] == r["shape"] and b["provider"] == baseline), None)
        r["speedup_vs_baseline"] = base["p50_ms"] / r["p50_ms"] if base else float("nan")
    return rows


PARSERS: dict[str, Callable[[str], list[dict]]] = {"linear_f32": parse_linear_f32, "gemm_bf16": parse_gemm_bf16}


# ------------------------------------------------------------------------------------------ running


def _run_process(cmd: list[str], cwd: Path, log_path: Path, echo: bool, prefix: str,
                 timeout: float | None) -> tuple[int, str]:
    """Run cmd, streaming its merged output to the log (and stdout with echo); (returncode, output).
    A run past `timeout` seconds is killed (returncode -9)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                if echo:
                    sys.stdout.write(f"{prefix}{line}")
                    sys.stdout.flush()
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
    return rc, "".join(lines)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(rows: list[dict], path: Path, columns: Sequence[str]) -> None:
    """Replace `path` with these rows (header first); written beside it, then moved into place."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_cell(r.get(k, "nan")) for k in columns})
    tmp.replace(path)


def _fmt_cell(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def _complete_rows(partial: list[dict], env, stamp: str) -> list[dict]:
    """Parsed rows -> full harness rows (environment columns, NaN where a value was not printed)."""
    out = []
    for r in partial:
        row = dict(p20_ms=float("nan"), p80_ms=float("nan"), gbps=float("nan"), peak_extra_mb=float("nan"),
                   speedup_vs_baseline=float("nan"), device=env.device, device_name=env.device_name, torch=env.torch,
                   triton=env.triton, git_sha=env.git_sha, timestamp=stamp)
        row.update(r)
        out.append(row)
    return out


def run_one(bench: Benchmark, *, bench_dir: Path, out_dir: Path, quick: bool, device: str, extra: Sequence[str],
            echo: bool, timeout: float | None, python: str = sys.executable) -> tuple[dict, list[dict]]:
    """Run one benchmark; (status record, its rows). Never raises for a failing benchmark."""
    H = harness(bench_dir)
    args = list(bench.quick if quick else bench.full)
    partial = out_dir / ".partial" / f"{bench.name}.csv"
    if bench.csv:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        args += ["--csv", str(partial)]
    if bench.takes_device:
        args += ["--device", device]
    args += list(extra)
    cmd = [python, str(bench_dir / bench.script), *args]
    log = out_dir / "logs" / f"{bench.name}.log"
    t0 = time.perf_counter()
    try:
        rc, text = _run_process(cmd, bench_dir.parent, log, echo, f"[{bench.name}] ", timeout)
    except OSError as exc:
        rc, text = 127, f"could not start: {exc}"
    seconds = time.perf_counter() - t0
    record = dict(name=bench.name, status="ok", rows=0, seconds=round(seconds, 2), log=str(log), csv=[], message="",
                  command=" ".join(shlex.quote(c) for c in cmd))
    if rc != 0:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        skipped = NOT_BUILT.search(text)
        record.update(status="skipped" if skipped else "failed",
                      message=(skipped.group(0) if skipped else f"exit status {rc}: {tail[0][:300]}"
                               + (" (killed: --timeout)" if rc == -9 and timeout else "")))
        return record, []
    if bench.csv:
        rows = _read_csv(partial)
        partial.unlink(missing_ok=True)
    else:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        rows = _complete_rows(PARSERS[bench.name](text), H.env_info("cpu"), stamp)
    if not rows:
        record.update(status="failed", message="exited 0 but produced no rows (see the log)")
        return record, []
    by_device: dict[str, list[dict]] = {}
    for r in rows:
        by_device.setdefault(r.get("device") or "cpu", []).append(r)
    for dev, dev_rows in by_device.items():
        path = out_dir / f"{bench.name}_{dev}.csv"
        _write_rows(dev_rows, path, H.CSV_COLUMNS)
        record["csv"].append(str(path))
    record["rows"] = len(rows)
    return record, rows


def run(names: Sequence[str] | None = None, *, quick: bool = True, out_dir: Path | str | None = None,
        device: str | None = None, echo: bool = True, extra_args: dict[str, list[str]] | None = None,
        bench_dir: Path | None = None, timeout: float | None = None, report: bool = True,
        plots: bool = True) -> dict:
    """Run the named benchmarks (all by default) and render the report; returns a summary dict:
    {"out_dir", "benchmarks": [status records], "rows": [every row], "performance_md", "plots"}."""
    bench_dir = find_bench_dir(bench_dir)
    out = Path(out_dir) if out_dir is not None else bench_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    selected = list(BENCHMARKS) if not names else [BY_NAME[n] for n in names]
    extra_args = extra_args or {}
    records, rows = [], []
    for bench in selected:
        if echo:
            print(f"== {bench.name}: {bench.description} ({'quick' if quick else 'full'})", flush=True)
        record, got = run_one(bench, bench_dir=bench_dir, out_dir=out, quick=quick, device=device,
                              extra=extra_args.get(bench.name, []), echo=echo, timeout=timeout)
        records.append(record)
        rows.extend(got)
        if echo:
            note = f": {record['message']}" if record["message"] else ""
            print(f"== {bench.name}: {record['status']}, {record['rows']} rows, {record['seconds']:.1f} s{note}",
                  flush=True)
    try:
        (out / ".partial").rmdir()  # empty unless a benchmark was killed mid-write
    except OSError:
        pass
    summary = dict(out_dir=str(out), benchmarks=records, rows=rows, performance_md=None, plots=[])
    if report:
        try:
            rep = report_module(bench_dir)
            md, images = rep.build(out, plots=plots)
            summary.update(performance_md=str(md), plots=[str(p) for p in images])
        except Exception as exc:  # noqa: BLE001 - the rows are on disk: say why the report is missing
            records.append(dict(name="report", status="failed", rows=0, seconds=0.0, log="", csv=[],
                                message=f"bench/report.py failed: {type(exc).__name__}: {exc}", command=""))
    return summary


# ------------------------------------------------------------------------------------------ CLI


def _parse_extra(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or name not in BY_NAME:
            raise ValueError(f"--args takes NAME=ARGS with NAME one of {sorted(BY_NAME)}, got {item!r}")
        out.setdefault(name, []).extend(shlex.split(rest))
    return out


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `ttrl-fast bench` (also used by `python -m ttrl_fast.bench_cli`)."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", help="each benchmark's quick mode (small shapes)")
    mode.add_argument("--full", dest="quick", action="store_false", help="the full shapes (default)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results of the checkout)")
    p.add_argument("--only", default=None, help="comma list of benchmarks (see --list)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="for the benchmarks that take one (default: cuda if available)")
    p.add_argument("--args", dest="extra", action="append", default=[], metavar="NAME=ARGS",
                   help="extra arguments for one benchmark, e.g. \"logprob=--dtype fp32\" (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark before it is killed")
    p.add_argument("--bench-dir", type=Path, default=None, help="the checkout's bench/ folder (default: found)")
    p.add_argument("--no-plots", action="store_true", help="CSV and performance.md only")
    p.add_argument("--quiet", action="store_true", help="do not stream the benchmarks' output")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(quick=False)
    return p


def main_from_args(args: argparse.Namespace) -> int:
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:<13} bench/{b.script:<22} {b.description}")
        return 0
    names = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    unknown = [n for n in names or [] if n not in BY_NAME]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {sorted(BY_NAME)}", file=sys.stderr)
        return 2
    try:
        extra = _parse_extra(args.extra)
        summary = run(names, quick=args.quick, out_dir=args.out, device=args.device, echo=not args.quiet,
                      extra_args=extra, bench_dir=args.bench_dir, timeout=args.timeout, plots=not args.no_plots)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(f"{'benchmark':<13} {'status':<8} {'rows':>5} {'seconds':>8}  note")
    for r in summary["benchmarks"]:
        print(f"{r['name']:<13} {r['status']:<8} {r['rows']:>5} {r['seconds']:>8.1f}  {r['message']}")
    print(f"CSV: {summary['out_dir']}/<benchmark>_<device>.csv")
    if summary["performance_md"]:
        print(f"performance section: {summary['performance_md']}"
              + (f"; {len(summary['plots'])} plots" if summary["plots"] else ""))
    return 1 if any(r["status"] == "failed" for r in summary["benchmarks"]) else 0


def main(argv: list[str] | None = None) -> int:
    p = add_arguments(argparse.ArgumentParser(prog="ttrl-fast bench", description=__doc__.split("\n\n")[0]))
    return main_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
