"""python -m ttrl_fast.validate_gpu: the --cpu --quick path checks every op on every CPU backend and
writes one report; a broken backend shows up as failures without stopping the run; without CUDA the
default invocation refuses with a clear message."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttrl_fast import backends, bench_cli, validate_gpu
from ttrl_fast.reference.policy_loss import LOSS_TYPES

REPO = Path(__file__).resolve().parents[1]
OPS = ["selective_log_softmax", *[f"policy_loss[{t}]" for t in LOSS_TYPES], "grpo_loss", "group_advantages",
       "fused_linear_logprobs", "fused_linear_grpo_loss", "sample_tokens", "sampler_logprobs"]
# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, which makes triton "available" on CPU; the
# validator runs the interpreter only when asked by name (--backends), like the benchmarks.
CPU_BACKENDS = [b for b in backends.available_backends("cpu") if b != "triton"]


def _fake_bench(**kwargs):
    row = dict(op="selective_log_softmax", provider="ttrl_fast:cpp", mode="forward", dtype="fp32", shape="64x1000",
               device="cpu", p50_ms="0.5", p20_ms="0.4", p80_ms="0.6", speedup_vs_baseline="3.0")
    return {"out_dir": str(kwargs["out_dir"]), "rows": [row], "performance_md": None, "plots": [],
            "benchmarks": [{"name": "logprob", "status": "ok", "rows": 1, "seconds": 0.1, "message": ""}]}


def test_cpu_quick_covers_every_op_and_backend(tmp_path, monkeypatch, capsys):
    calls = {}

    def fake_run(names=None, **kwargs):  # the benchmarks have their own test (tests/test_bench_cli.py)
        calls.update(kwargs, names=names)
        return _fake_bench(**kwargs)

    monkeypatch.setattr(bench_cli, "run", fake_run)
    rc = validate_gpu.main(["--cpu", "--quick", "--quiet", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0, text[-4000:]
    assert calls["quick"] is True and calls["device"] == "cpu" and calls["out_dir"] == tmp_path / "bench"

    report = json.loads((tmp_path / "validate_report.json").read_text())
    checks = report["checks"]
    assert {c["op"] for c in checks} == set(OPS)
    assert {c["backend"] for c in checks} == set(CPU_BACKENDS)
    assert report["plan"]["cpu"]["ran"] == CPU_BACKENDS
    for op in OPS:
        for backend in CPU_BACKENDS:
            for dtype in ("fp32", "bf16"):
                got = {c["check"]: c for c in checks if (c["op"], c["backend"], c["dtype"]) == (op, backend, dtype)}
                assert "values" in got and "determinism" in got, (op, backend, dtype, sorted(got))
                assert all(c["status"] == "PASS" for c in got.values()), (op, backend, dtype, got)
                if op in ("selective_log_softmax", "grpo_loss") or op.startswith(("policy_loss", "fused_linear")):
                    assert "grads" in got, (op, backend, dtype)
                assert got["values"]["max_error"] <= got["values"]["tolerance"]
    assert {c["check"] for c in checks if c["op"] == "sample_tokens"} == {"values", "exact", "determinism"}
    assert report["summary"]["ok"] and report["summary"]["FAIL"] == 0
    assert report["bench"]["rows"][0]["provider"] == "ttrl_fast:cpp"

    # One text table printed; the same report as Markdown.
    assert text.count("== ttrl_fast validation report ==") == 1
    for op in OPS:
        assert op in text
    md = (tmp_path / "validate_report.md").read_text()
    assert "| cpu | sampler_logprobs |" in md and "## Benchmarks" in md and "ttrl_fast:cpp" in md


def test_broken_backend_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    if "cpp" not in CPU_BACKENDS:
        pytest.skip("the C++ extension is not built")
    real_load = backends._load

    def broken_load(op, name):
        impl = real_load(op, name)
        if name != "cpp":
            return impl
        if op == "selective_log_softmax":  # wrong values (and so a wrong loss downstream)
            def fwd(*args):
                logp, entropy, stats = impl.fwd(*args)
                return logp + 0.5, entropy, stats
            return backends.Impl(name, fwd, impl.bwd)
        if op == "group_advantages":  # crashes
            def boom(*args):
                raise RuntimeError("deliberately broken kernel")
            return backends.Impl(name, boom, None)
        return impl

    monkeypatch.setattr(backends, "_load", broken_load)
    rc = validate_gpu.main(["--cpu", "--quick", "--no-bench", "--quiet", "--dtypes", "fp32", "--out", str(tmp_path),
                            "--ops", "selective_log_softmax,grpo_loss,group_advantages,policy_loss"])
    text = capsys.readouterr().out
    assert rc == 1, text[-4000:]
    checks = json.loads((tmp_path / "validate_report.json").read_text())["checks"]

    def status(op, backend, check):
        return next(c for c in checks if (c["op"], c["backend"], c["check"]) == (op, backend, check))

    bad = status("selective_log_softmax", "cpp", "values")
    assert bad["status"] == "FAIL" and bad["max_error"] > bad["tolerance"]
    assert "logp: scaled error" in bad["message"] and "> tolerance" in bad["message"]
    assert status("grpo_loss", "cpp", "values")["status"] == "FAIL"
    crash = status("group_advantages", "cpp", "run")
    assert crash["status"] == "FAIL" and "RuntimeError: deliberately broken kernel" in crash["message"]
    # Everything else still ran and passed: the reference backend, and cpp's own policy loss.
    for c in checks:
        if c["backend"] == "reference" or c["op"].startswith("policy_loss"):
            assert c["status"] == "PASS", c
    assert {c["op"] for c in checks if c["backend"] == "reference"} == {
        "selective_log_softmax", "grpo_loss", "group_advantages", *[f"policy_loss[{t}]" for t in LOSS_TYPES]}
    assert "Failures and skips" in text and "deliberately broken kernel" in text and "-> FAILED" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_default_invocation_refuses(tmp_path, capsys):
    rc = validate_gpu.main(["--quick", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "CUDA is not available" in captured.err and "--cpu" in captured.err
    assert not (tmp_path / "validate_report.json").exists()  # nothing ran
    # The module entry point, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "ttrl_fast.validate_gpu", "--no-bench"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "CUDA is not available" in proc.stderr and "--cpu" in proc.stderr, proc.stderr[-2000:]


def test_bad_arguments_name_the_choices(capsys):
    assert validate_gpu.main(["--cpu", "--ops", "softmax"]) == 2
    assert "unknown --ops" in capsys.readouterr().err
    assert validate_gpu.main(["--cpu", "--backends", "metal"]) == 2
    assert "unknown --backends" in capsys.readouterr().err
