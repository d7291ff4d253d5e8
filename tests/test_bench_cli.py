"""ttrl-fast bench: runs benchmarks (a subset here, to stay fast), writes their rows as CSV, the plots and
bench/results-style performance.md; failures are reported without stopping the others; bench/report.py
renders and splices the README section reproducibly; the normal test run never collects bench/."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ttrl_fast import bench_cli, cli

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["op", "provider", "mode", "dtype", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_baseline", "gbps",
           "peak_extra_mb", "device", "device_name", "torch", "triton", "git_sha", "timestamp"]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _report():
    return bench_cli.report_module(bench_cli.find_bench_dir())


def test_bench_quick_writes_csv_plots_and_performance_md(tmp_path):
    """Two real benchmarks in their quick modes: the sampler (harness CSV) and the fp32 GEMM (parsed table)."""
    rc = cli.main(["bench", "--quick", "--only", "sampler,linear_f32", "--quiet", "--out", str(tmp_path)])
    assert rc == 0, sorted(p.name for p in tmp_path.rglob("*"))
    sampler = _rows(tmp_path / "sampler_cpu.csv")
    assert {"A", "A+B", "ours"} <= {r["provider"] for r in sampler}
    assert all(r["op"] == "sampler" and float(r["p50_ms"]) > 0 for r in sampler)
    gemm = _rows(tmp_path / "linear_f32_cpu.csv")
    assert {r["provider"] for r in gemm} == {"torch", "ttrl_fast"}
    assert all(float(r["p50_ms"]) > 0 and float(r["speedup_vs_baseline"]) > 0 for r in gemm)
    assert (tmp_path / "logs" / "sampler.log").read_text().startswith("$ ")

    md = (tmp_path / "performance.md").read_text()
    assert "### Performance on cpu" in md and "| sampler | P16_N8_G4 | generate | fp32 | A |" in md
    assert "linear_f32" in md and "**ttrl_fast**" in md
    pytest.importorskip("matplotlib")
    for name in ("sampler_cpu.png", "linear_f32_cpu.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


SAMPLER_TEXT = "# sampler: cpu\n"
LINEAR_TEXT = """torch 2.14, native AVX-512 kernel: True, clock wall, loadavg1 1.00
thr     K      N   M   torch ms   GB/s GFLOP/s    ttrl ms   GB/s GFLOP/s  speedup
  1   256    688   1      0.030   23.5    11.7      0.015   47.0    23.5    2.00x
  2  1024  32000  64     10.000   13.1    419.4     5.000   26.2   838.9    2.00x
"""
GEMM_TEXT = """torch 2.14, 2 threads, native avx512-bf16 kernel: True
    M       N     K  provider               ms   GFLOP/s
   64    4096   256  ttrl_fast            0.50     268.4
   64    4096   256  torch_bf16           1.00     134.2
"""


def test_table_parsers():
    rows = bench_cli.parse_linear_f32(LINEAR_TEXT)
    assert [(r["provider"], r["mode"], r["shape"]) for r in rows] == [
        ("torch", "threads1", "1x256x688"), ("ttrl_fast", "threads1", "1x256x688"),
        ("torch", "threads2", "64x1024x32000"), ("ttrl_fast", "threads2", "64x1024x32000")]
    assert rows[1]["speedup_vs_baseline"] == pytest.approx(2.0) and rows[1]["p50_ms"] == 0.015
    rows = bench_cli.parse_gemm_bf16(GEMM_TEXT)
    assert {r["provider"]: r["speedup_vs_baseline"] for r in rows} == {"ttrl_fast": 2.0, "torch_bf16": 1.0}


def test_a_failing_benchmark_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def fake_process(cmd, cwd, log_path, echo, prefix, timeout):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        script = Path(cmd[1]).name
        if script == "bench_logprob.py":
            return 1, "Traceback (most recent call last):\nValueError: broken on purpose\n"
        if script == "bench_linear_f32.py":
            return 1, "the C++ extension with linear_f32 is not built: no _C_cpu\n"
        return 0, GEMM_TEXT

    monkeypatch.setattr(bench_cli, "_run_process", fake_process)
    rc = bench_cli.main(["--quick", "--only", "logprob,linear_f32,gemm_bf16", "--no-plots", "--device", "cpu",
                         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "ValueError: broken on purpose" in out and "skipped" in out
    assert not (tmp_path / "logprob_cpu.csv").exists()
    assert len(_rows(tmp_path / "gemm_bf16_cpu.csv")) == 2
    assert "gemm_bf16" in (tmp_path / "performance.md").read_text()
    assert bench_cli.main(["--only", "nope"]) == 2
    assert bench_cli.main(["--args", "nope=--x"]) == 2


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "nan") for k in COLUMNS})


def _row(provider, p50, speedup, stamp="2026-01-01T00:00:00+00:00", **kw):
    base = dict(op="selective_log_softmax", provider=provider, mode="forward", dtype="fp32", shape="4096x32000",
                p50_ms=p50, p20_ms=p50, p80_ms=p50, speedup_vs_baseline=speedup, gbps=1.0, peak_extra_mb=0.0,
                device="cpu", device_name="Test CPU", torch="2.x", triton="none", git_sha="abc1234", timestamp=stamp)
    base.update(kw)
    return base


def test_report_is_reproducible_and_splices_the_readme(tmp_path):
    report = _report()
    results = tmp_path / "results"
    results.mkdir()
    _write_csv(results / "logprob_cpu.csv", [
        _row("eager", 100.0, 1.0), _row("ttrl_fast:cpp", 50.0, 2.0),
        _row("ttrl_fast:cpp", 10.0, 10.0, stamp="2026-01-02T00:00:00+00:00"),  # a later run of the same key wins
    ])
    _write_csv(results / "sampler_cpu.csv", [
        _row("A", 30.0, 1.0, op="sampler", mode="generate", dtype="float32", shape="P16_N8_G4"),
        _row("ours", 15.0, 2.0, op="sampler", mode="generate", dtype="float32", shape="P16_N8_G4")])
    _write_csv(results / "cpu.csv", [_row("eager", 1.0, 1.0)])  # not a `ttrl-fast bench` file: ignored

    md_path, images = report.build(results, plots=False)
    md = md_path.read_text()
    summary = ("| selective_log_softmax | 4096x32000 | forward | fp32 | eager | 100.0 | ttrl_fast:cpp | 10.0 "
               "| **10.00x** |")
    assert summary in md
    assert "| sampler | P16_N8_G4 | generate | fp32 | A | 30.0 | ours | 15.0 | **2.00x** |" in md
    assert "cpu.csv" not in md.replace("logprob_cpu.csv", "").replace("sampler_cpu.csv", "")
    assert report.build(results, plots=False)[0].read_text() == md  # same CSVs -> same bytes

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmarks\n\n{report.START}\nold\n{report.END}\n\n## Install\n")
    args = ["--results", str(results), "--no-plots"]
    assert report.main([*args, "--check-readme", str(readme)]) == 1  # stale
    assert report.main([*args, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Benchmarks\n\n" + report.START) and text.endswith(report.END + "\n\n## Install\n")
    assert "old" not in text and "**10.00x**" in text
    assert report.main([*args, "--check-readme", str(readme)]) == 0
    readme.write_text("# no markers\n")
    assert report.main([*args, "--readme", str(readme)]) == 2


def test_report_image_links_are_relative_to_the_readme(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report()
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    _write_csv(results / "logprob_cpu.csv", [_row("eager", 100.0, 1.0), _row("ttrl_fast:cpp", 10.0, 10.0)])
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.END}\n")
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    assert "](bench/results/selective_log_softmax_cpu.png)" in readme.read_text()
    assert "](selective_log_softmax_cpu.png)" in (results / "performance.md").read_text()


def test_the_normal_test_run_does_not_collect_bench():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["testpaths"] == ["tests"]
    assert (REPO / "bench" / "test_bench_pytest.py").exists()


def _bench_entry_points():
    """bench/test_bench_pytest.py imported by path (bench/ is not a package)."""
    pytest.importorskip("pytest_benchmark")
    return bench_cli._load(REPO / "bench" / "test_bench_pytest.py", "ttrl_fast_bench_pytest")


def test_pytest_benchmark_entry_points_run_once():
    """Each entry point's body once, through a stand-in for pytest-benchmark's fixture (`pytest bench/
    --benchmark-only -q` itself takes ~25 s on 2 cores: run it by hand)."""
    module = _bench_entry_points()
    calls = []

    def benchmark(fn):
        calls.append(fn)
        return fn()

    for backend in module.BACKENDS:
        for mode in ("forward", "full"):
            module.test_selective_log_softmax(benchmark, backend, mode)
        module.test_policy_loss(benchmark, backend)
        module.test_fused_linear_logprobs(benchmark, backend)
        module.test_sample_tokens(benchmark, backend)
    module.test_rollout_sampler_generate(benchmark)
    assert len(calls) == 5 * len(module.BACKENDS) + 1
