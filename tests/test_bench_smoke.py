"""Smoke test for bench/bench_logprob.py: it runs, and its CSV is well-formed.

Never asserts anything about timings (machines are noisy).
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EXPECTED_COLUMNS = [
    "op", "provider", "mode", "dtype", "shape", "p50_ms", "p20_ms", "p80_ms",
    "speedup_vs_baseline", "gbps", "peak_extra_mb", "device", "device_name",
    "torch", "triton", "git_sha", "timestamp",
]  # fmt: skip
NUMERIC = ["p50_ms", "p20_ms", "p80_ms", "speedup_vs_baseline", "gbps", "peak_extra_mb"]
GROUPS = {(m, d) for m in ("forward", "full") for d in ("fp32", "bf16")}


def test_bench_logprob_quick_writes_csv(tmp_path: Path) -> None:
    out_csv = tmp_path / "bench.csv"
    proc = subprocess.run(
        [sys.executable, "bench/bench_logprob.py", "--shapes", "quick", "--csv", str(out_csv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    with out_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EXPECTED_COLUMNS
        rows = list(reader)
    assert rows, log[-4000:]

    # The script announces the providers it will run; each must have one row per
    # (mode, dtype) group unless it printed a SKIP line for itself.
    m = re.search(r"^providers: (.*)$", proc.stdout, re.M)
    assert m, proc.stdout[-4000:]
    announced = [p.strip() for p in m.group(1).split(",") if p.strip()]
    assert "eager" in announced
    skipped = set(re.findall(r"^SKIP provider=(\S+)", proc.stdout, re.M))
    for prov in announced:
        got = {(r["mode"], r["dtype"]) for r in rows if r["provider"] == prov}
        if prov in skipped:
            continue
        assert got == GROUPS, f"{prov}: groups {sorted(got)}\n{log[-4000:]}"

    # Independently of the announcement: every usable ttrl_fast backend must be covered.
    device = rows[0]["device"]
    sys.path.insert(0, str(REPO))  # the script imports ttrl_fast from the repo root too
    try:
        from ttrl_fast.backends import available_backends

        backends = [b for b in available_backends(device) if not (device == "cpu" and b == "triton")]
    except Exception:  # noqa: BLE001 - package not built yet: the script must have said so
        backends = []
        assert "SKIP provider=ttrl_fast:*" in proc.stdout
    for b in backends:
        assert f"ttrl_fast:{b}" in announced, proc.stdout[-4000:]

    for r in rows:
        assert r["op"] == "selective_log_softmax"
        assert r["shape"] == "64x1000"
        assert r["device"] == device
        assert r["timestamp"] and r["torch"] and r["git_sha"] and r["device_name"]
        vals = {k: float(r[k]) for k in NUMERIC}
        assert vals["p50_ms"] > 0 and vals["gbps"] > 0
        assert vals["p20_ms"] <= vals["p50_ms"] <= vals["p80_ms"]
        assert math.isnan(vals["peak_extra_mb"]) or vals["peak_extra_mb"] >= 0
        if r["provider"] == "eager":
            assert vals["speedup_vs_baseline"] == 1.0


def test_bench_grpo_loss_quick_writes_csv(tmp_path: Path) -> None:
    out_csv = tmp_path / "grpo.csv"
    proc = subprocess.run(
        [sys.executable, "bench/bench_grpo_loss.py", "--shapes", "quick", "--csv", str(out_csv)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "WARNING" not in proc.stdout, log[-4000:]  # every ttrl_fast backend agreed with eager
    with out_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EXPECTED_COLUMNS
        rows = list(reader)
    providers = {r["provider"] for r in rows}
    assert {"eager", "ttrl_fast:reference"} <= providers, log[-4000:]
    for r in rows:
        assert r["op"] == "grpo_loss" and r["mode"] == "full" and r["shape"] == "32x1000"
        assert float(r["p50_ms"]) > 0


def test_bench_fused_linear_quick_runs(tmp_path: Path) -> None:
    out_csv = tmp_path / "fl.csv"
    proc = subprocess.run(
        [sys.executable, "bench/bench_fused_linear.py", "--shapes", "quick", "--dtype", "fp32", "--level", "token",
         "--providers", "eager,ttrl_fast", "--csv", str(out_csv)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ERROR" not in proc.stdout, log[-4000:]  # every memory subprocess reported
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["provider"] for r in rows} == {"eager", "ttrl_fast"}, log[-4000:]
    for r in rows:
        assert r["op"] == "fused_linear_grpo" and float(r["p50_ms"]) > 0
        assert float(r["peak_extra_mb"]) == float(r["peak_extra_mb"])  # measured (not NaN)


def test_bench_sampler_quick_writes_csv(tmp_path: Path) -> None:
    """bench/bench_sampler.py --quick: a tiny model, one config; rows for HF generate (A), A plus the
    scoring forward (A+B) and the sampler, and a printed result line."""
    out_csv = tmp_path / "sampler.csv"
    proc = subprocess.run([sys.executable, "bench/bench_sampler.py", "--quick", "--csv", str(out_csv)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    with out_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EXPECTED_COLUMNS
        rows = list(reader)
    assert {r["provider"] for r in rows} == {"A", "A+B", "ours", "ours-copies"}, log[-4000:]
    assert all(math.isfinite(float(r["p50_ms"])) and float(r["p50_ms"]) > 0 for r in rows)
    assert re.search(r"^\s+16\s+8\s+4\s", proc.stdout, re.M), proc.stdout[-2000:]
