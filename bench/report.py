"""Render the benchmark CSVs into plots and a Markdown performance section.

    python bench/report.py                                  # bench/results/*_{cpu,cuda}.csv -> plots + performance.md
    python bench/report.py --csv bench/results/cpu.csv      # any harness CSV (appended logs too)
    python bench/report.py --readme README.md               # also splice the section into README.md
    python bench/report.py --check-readme README.md         # exit 1 if README's section is stale

Input: CSVs with the harness columns (bench/_harness.py). When a (device, op, provider, mode, dtype,
shape) appears more than once (an appended log), its latest row by timestamp is used.

Output, in --out (default: the folder of the CSVs):
  <op>_<device>.png   speed-up over the op's baseline per shape / mode / dtype, one bar per provider
                      (needs matplotlib; skipped with a note without it)
  performance.md      a summary table (baseline vs the best ttrl_fast provider per group), then per
                      op and device the plot and every row. It is a pure function of the CSV rows
                      (no generation time), so regenerating from the same CSVs gives the same bytes.

README wiring: put the two marker lines
    <!-- ttrl-fast:performance:start -->
    <!-- ttrl-fast:performance:end -->
where the section goes; --readme replaces what is between them with performance.md (image links
rewritten relative to the README), --check-readme verifies it is current. Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"
DEFAULT_GLOBS = ("*_cpu.csv", "*_cuda.csv")  # what `ttrl-fast bench` writes (one file per benchmark and device)
START = "<!-- ttrl-fast:performance:start -->"
END = "<!-- ttrl-fast:performance:end -->"
NUMERIC = ("p50_ms", "p20_ms", "p80_ms", "speedup_vs_baseline", "gbps", "peak_extra_mb")
KEY = ("device", "device_name", "op", "provider", "mode", "dtype", "shape")
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# The baseline of each op's speed-up column (others: the provider whose speed-up is exactly 1).
BASELINES = {"selective_log_softmax": "eager", "grpo_loss": "eager", "fused_linear_grpo": "eager", "sampler": "A",
             "linear_f32": "torch", "gemm_bf16": "torch_bf16"}
OP_TITLES = {
    "selective_log_softmax": "selective log-softmax (bench_logprob.py)",
    "grpo_loss": "GRPO loss from logits, forward + backward (bench_grpo_loss.py)",
    "fused_linear_grpo": "GRPO loss from hidden states through the LM head (bench_fused_linear.py)",
    "sampler": "rollout sampler: G completions per prompt with log-probs (bench_sampler.py)",
    "linear_f32": "fp32 skinny GEMM of decode steps (bench_linear_f32.py)",
    "gemm_bf16": "bf16 x bf16 -> fp32 LM-head GEMM (bench_gemm_bf16.py)",
}


# ------------------------------------------------------------------------------------------ rows


def _float(x: object) -> float:
    try:
        return float(x)  # "nan" parses
    except (TypeError, ValueError):
        return float("nan")


def read_rows(paths: Iterable[Path]) -> list[dict]:
    """Every row of the CSVs, numeric columns as floats, dtype names normalised (float32 -> fp32)."""
    rows = []
    for path in paths:
        with Path(path).open(newline="") as f:
            for r in csv.DictReader(f):
                if not r.get("op") or not r.get("provider"):
                    continue
                r = dict(r)
                for k in NUMERIC:
                    r[k] = _float(r.get(k))
                r["dtype"] = DTYPE_ALIASES.get(r.get("dtype", ""), r.get("dtype", ""))
                r["_source"] = Path(path).name
                rows.append(r)
    return rows


def latest(rows: Sequence[dict]) -> list[dict]:
    """One row per (device, device_name, op, provider, mode, dtype, shape): the one with the latest
    timestamp (ties: the later row). Order: first appearance of each key."""
    best: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r.get(c, "") for c in KEY)
        if k not in best or r.get("timestamp", "") >= best[k].get("timestamp", ""):
            best[k] = r
    return list(best.values())


def _ordered(values: Iterable) -> list:
    seen: dict = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def baseline_of(op: str, group: Sequence[dict]) -> str | None:
    names = [r["provider"] for r in group]
    if BASELINES.get(op) in names:
        return BASELINES[op]
    return next((r["provider"] for r in group if r["speedup_vs_baseline"] == 1.0), None)


def is_ours(provider: str) -> bool:
    return provider.startswith("ttrl_fast") or provider == "ours"


# ------------------------------------------------------------------------------------------ plots


def _group_key(r: dict) -> tuple[str, str, str]:
    return (r["shape"], r["mode"], r["dtype"])


def plot(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """<op>_<device>.png per (device, op): speed-up over the baseline, grouped by shape/mode/dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for device in _ordered(r["device"] for r in rows):
        for op in _ordered(r["op"] for r in rows if r["device"] == device):
            sel = [r for r in rows if r["device"] == device and r["op"] == op]
            groups = _ordered(_group_key(r) for r in sel)
            providers = _ordered(r["provider"] for r in sel)
            width = 0.8 / max(1, len(providers))
            fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2.5), 4.2))
            top = 1.0
            for j, prov in enumerate(providers):
                xs, ys = [], []
                for i, g in enumerate(groups):
                    r = next((x for x in sel if x["provider"] == prov and _group_key(x) == g), None)
                    if r is not None and math.isfinite(r["speedup_vs_baseline"]) and r["speedup_vs_baseline"] > 0:
                        xs.append(i - 0.4 + width * (j + 0.5))
                        ys.append(r["speedup_vs_baseline"])
                bars = ax.bar(xs, ys, width, label=prov, edgecolor="black", linewidth=0.4,
                              hatch="//" if is_ours(prov) else None)
                for b, y in zip(bars, ys):
                    label = f"{y:.2f}x" if y < 10 else f"{y:.0f}x"
                    ax.annotate(label, (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                                fontsize=7, xytext=(0, 1), textcoords="offset points")
                top = max([top, *ys])
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
            lows = [r["speedup_vs_baseline"] for r in sel if r["speedup_vs_baseline"] > 0]
            ax.set_ylim(min([0.5, *lows]) / 1.5, top * 2.0)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"{s}\n{m} {d}" for s, m, d in groups], fontsize=8)
            base = baseline_of(op, sel) or "baseline"
            ax.set_ylabel(f"speed-up vs {base} (x, log; > 1 is faster)")
            name = sel[0].get("device_name", "")
            ax.set_title(f"{op} on {device} ({name})", fontsize=10)
            ax.legend(fontsize=8, loc="upper left", ncol=min(4, len(providers)))
            fig.tight_layout()
            path = out_dir / f"{op}_{device}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ markdown


def _num(v: float, spec: str) -> str:
    return "-" if not math.isfinite(v) else format(v, spec)


def _ms(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _x(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2f}x"


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def render_markdown(rows: Sequence[dict], images: dict[tuple[str, str], str], *, level: int = 3,
                    sources: Sequence[str] = ()) -> str:
    """The performance section. `images` maps (device, op) to the link to use for its plot."""
    h = "#" * level
    lines = [f"<!-- generated by bench/report.py from {', '.join(sources) or 'the benchmark CSVs'}; "
             "regenerate with `ttrl-fast bench --full` (or `python bench/report.py`), do not edit by hand -->", ""]
    if not rows:
        return "\n".join(lines + ["No benchmark rows yet: run `ttrl-fast bench --quick` or `--full`.", ""])
    for device in _ordered(r["device"] for r in rows):
        dev_rows = [r for r in rows if r["device"] == device]
        names = ", ".join(_ordered(r.get("device_name", "") for r in dev_rows))
        torch_v = ", ".join(_ordered(r.get("torch", "") for r in dev_rows))
        triton_v = ", ".join(_ordered(r.get("triton", "") for r in dev_rows))
        shas = ", ".join(_ordered(r.get("git_sha", "") for r in dev_rows))
        stamps = sorted(r.get("timestamp", "") for r in dev_rows if r.get("timestamp"))
        when = f"{stamps[0][:10]} .. {stamps[-1][:10]}" if stamps and stamps[0][:10] != stamps[-1][:10] else (
            stamps[0][:10] if stamps else "?")
        lines += [f"{h} Performance on {device}: {names}", "",
                  f"torch {torch_v}, triton {triton_v}, commit {shas}, measured {when}. Speed-up = baseline p50 / "
                  "provider p50 (> 1 is faster); timings are medians of interleaved runs in one process "
                  "(bench/README.md).", ""]
        summary = []
        for op in _ordered(r["op"] for r in dev_rows):
            sel = [r for r in dev_rows if r["op"] == op]
            for g in _ordered(_group_key(r) for r in sel):
                grp = [r for r in sel if _group_key(r) == g]
                base = baseline_of(op, grp)
                ours = [r for r in grp if is_ours(r["provider"]) and math.isfinite(r["p50_ms"])]
                if base is None or not ours:
                    continue
                b = next(r for r in grp if r["provider"] == base)
                best = min(ours, key=lambda r: r["p50_ms"])
                summary.append([op, g[0], g[1], g[2], base, _ms(b["p50_ms"]), best["provider"], _ms(best["p50_ms"]),
                                f"**{_x(best['speedup_vs_baseline'])}**"])
        if summary:
            lines += _table(["op", "shape", "mode", "dtype", "baseline", "baseline ms", "fastest ttrl_fast",
                             "ms", "speed-up"], summary)
            lines.append("")
        for op in _ordered(r["op"] for r in dev_rows):
            sel = [r for r in dev_rows if r["op"] == op]
            lines += [f"{h}# {OP_TITLES.get(op, op)} — {device}", ""]
            if (device, op) in images:
                lines += [f"![{op} speed-up on {device}]({images[(device, op)]})", ""]
            body = []
            for r in sel:
                spread = "-" if not (math.isfinite(r["p20_ms"]) and math.isfinite(r["p80_ms"])) else \
                    f"{_ms(r['p20_ms'])}-{_ms(r['p80_ms'])}"
                speed = _x(r["speedup_vs_baseline"])
                body.append([r["shape"], r["mode"], r["dtype"], f"**{r['provider']}**" if is_ours(r["provider"])
                             else r["provider"], _ms(r["p50_ms"]), spread, f"**{speed}**" if is_ours(r["provider"])
                             else speed, _num(r["gbps"], ".2f"), _num(r["peak_extra_mb"], ".1f")])
            lines += _table(["shape", "mode", "dtype", "provider", "p50 ms", "p20-p80 ms", "vs baseline", "GB/s",
                             "peak extra MB"], body)
            lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ README


def splice(readme_text: str, section: str, path: str = "README") -> str:
    """readme_text with everything between the START and END marker lines replaced by section."""
    start, end = readme_text.find(START), readme_text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{path} has no '{START}' ... '{END}' marker lines: add them where the performance "
                         "section goes")
    head = readme_text[:start + len(START)]
    return head + "\n" + section.rstrip("\n") + "\n" + readme_text[end:]


def _links(images: dict[tuple[str, str], Path], base: Path) -> dict[tuple[str, str], str]:
    return {k: Path(os.path.relpath(p.resolve(), base.resolve())).as_posix() for k, p in images.items()}


def csv_paths(results: Path, explicit: Sequence[Path] | None = None) -> list[Path]:
    if explicit:
        return [Path(p) for p in explicit]
    return sorted({p for g in DEFAULT_GLOBS for p in Path(results).glob(g)})


def build(results: Path | str = DEFAULT_RESULTS, *, csvs: Sequence[Path] | None = None, out: Path | None = None,
          plots: bool = True, level: int = 3) -> tuple[Path, list[Path]]:
    """Render plots and performance.md for the CSVs in `results`; returns (performance.md, plot paths)."""
    results = Path(results)
    out = Path(out) if out is not None else results
    out.mkdir(parents=True, exist_ok=True)
    paths = csv_paths(results, csvs)
    rows = latest(read_rows(paths))
    images: list[Path] = []
    note = ""
    if plots and rows:
        try:
            images = plot(rows, out)
        except ImportError as exc:
            note = f"<!-- plots skipped: {exc}; pip install matplotlib -->\n"
    by_key = {(p.stem.rsplit("_", 1)[1], p.stem.rsplit("_", 1)[0]): p for p in images}
    md = note + render_markdown(rows, _links(by_key, out), level=level, sources=[p.name for p in paths])
    target = out / "performance.md"
    target.write_text(md)
    return target, images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="folder of the CSVs (default bench/results)")
    p.add_argument("--csv", type=Path, nargs="+", default=None,
                   help="explicit CSV files instead of --results/*_<device>.csv")
    p.add_argument("--out", type=Path, default=None, help="where plots and performance.md go (default: --results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--level", type=int, default=3, help="Markdown heading level of the section (default 3)")
    p.add_argument("--readme", type=Path, default=None, help="splice the section between the README's markers")
    p.add_argument("--check-readme", type=Path, default=None, help="exit 1 if the README's section is not current")
    args = p.parse_args(argv)
    md_path, images = build(args.results, csvs=args.csv, out=args.out, plots=not args.no_plots, level=args.level)
    print(f"wrote {md_path}" + (f" and {len(images)} plots" if images else ""))
    for readme in (args.readme, args.check_readme):
        if readme is None:
            continue
        out = md_path.parent
        rows = latest(read_rows(csv_paths(args.results, args.csv)))
        by_key = {(q.stem.rsplit("_", 1)[1], q.stem.rsplit("_", 1)[0]): q for q in images}
        section = render_markdown(rows, _links(by_key, readme.parent), level=args.level,
                                  sources=[q.name for q in csv_paths(args.results, args.csv)])
        text = readme.read_text()
        try:
            new = splice(text, section, str(readme))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if readme == args.check_readme:
            if new != text:
                print(f"{readme}: the performance section is stale; run python bench/report.py --readme {readme}",
                      file=sys.stderr)
                return 1
            print(f"{readme}: the performance section is current")
        else:
            readme.write_text(new)
            print(f"updated the performance section of {readme} (images relative to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
