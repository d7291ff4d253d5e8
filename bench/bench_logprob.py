"""Benchmark: selective log-softmax, ``log_softmax(logits / T)[i, index[i]]`` (fp32 output).

Providers (all timed interleaved in one process by ``bench/_harness.py``):

* ``eager``            TRL-style eager PyTorch (the baseline of the speedup column)
* ``compile``          ``torch.compile(eager, dynamic=False)``; compiled during warmup
* ``ttrl_fast:<name>`` ``ttrl_fast.selective_log_softmax(..., backend=<name>)`` for each
                       backend ``ttrl_fast.backends.available_backends(device)`` lists
                       (``triton`` is left out on CPU: it only runs under the interpreter)

Modes: ``forward`` (no_grad) and ``full`` (forward + backward with a fixed output grad).

    python bench/bench_logprob.py                      # full shapes, all providers
    python bench/bench_logprob.py --shapes quick --no-csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _harness as H  # noqa: E402

OP = "selective_log_softmax"
BASELINE = "eager"
TEMPERATURE = 1.0
SHAPES: dict[str, list[tuple[int, int]]] = {"quick": [(64, 1000)], "full": [(4096, 32000)]}
# Per shape set: timing rounds, warmup calls, minimum timing seconds per group.
DEFAULTS: dict[str, dict[str, float]] = {
    "quick": {"rounds": 30, "warmup": 3, "min_time": 0.2},
    "full": {"rounds": 7, "warmup": 2, "min_time": 0.0},
}
CPU_FLOOR_GBPS = 30.0  # approximate sustained read bandwidth of the reference CPU box

LogprobFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eager_selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """TRL-style eager implementation: fp32 uses gather - logsumexp; half types use
    log_softmax in the native dtype, gather, then upcast. Returns float32 [N]."""
    if temperature != 1.0:
        logits = logits / temperature
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        return (picked - torch.logsumexp(logits, dim=-1)).float()
    logp = torch.log_softmax(logits, dim=-1)
    return torch.gather(logp, -1, index.unsqueeze(-1)).squeeze(-1).float()


def ttrl_fast_fns(device: str) -> dict[str, LogprobFn]:
    """One callable per usable ttrl_fast backend; empty (with a SKIP line) if unavailable."""
    try:
        import ttrl_fast
        from ttrl_fast.backends import available_backends

        names = list(available_backends(device))
    except Exception as e:  # noqa: BLE001 - the package may be missing or half-built
        H.skip("ttrl_fast:*", f"ttrl_fast unavailable: {type(e).__name__}: {e}")
        return {}
    fns: dict[str, LogprobFn] = {}
    for name in names:
        if device == "cpu" and name == "triton":
            continue  # CPU triton means the (very slow) interpreter; not a meaningful timing

        def fn(logits: torch.Tensor, index: torch.Tensor, _b: str = name) -> torch.Tensor:
            if TEMPERATURE != 1.0:
                return ttrl_fast.selective_log_softmax(logits, index, backend=_b, temperature=TEMPERATURE)
            return ttrl_fast.selective_log_softmax(logits, index, backend=_b)

        fns[f"ttrl_fast:{name}"] = fn
    return fns


def make_call(fn: LogprobFn, logits: torch.Tensor, index: torch.Tensor, mode: str, grad: torch.Tensor) -> H.Provider:
    """Zero-arg callable for one timed call; ``full`` resets ``logits.grad`` first."""
    if mode == "forward":

        def call() -> torch.Tensor:
            with torch.no_grad():
                return fn(logits, index)

        return call

    def call_full() -> torch.Tensor:
        logits.grad = None
        out = fn(logits, index)
        out.backward(grad)
        return out

    return call_full


def bytes_moved(n: int, v: int, elem: int, mode: str) -> int:
    """Forward: logits read once + int64 index + fp32 output. Full adds a second read of
    the logits in backward and the gradient write."""
    fwd = n * v * elem + n * 8 + n * 4
    return fwd if mode == "forward" else fwd + 2 * n * v * elem


def check_outputs(fns: dict[str, LogprobFn], logits: torch.Tensor, index: torch.Tensor) -> list[str]:
    """Compare ttrl_fast providers against an fp32 eager reference; return names that raised."""
    with torch.no_grad():
        ref = eager_selective_log_softmax(logits.float(), index, TEMPERATURE)
    broken = []
    for name, fn in fns.items():
        if not name.startswith("ttrl_fast:"):
            continue
        try:
            with torch.no_grad():
                out = fn(logits, index)
            err = (out.float() - ref).abs().max().item()
            if not err <= 1e-3:
                print(f"WARNING provider={name} max |err| vs fp32 reference = {err:.3g}")
        except Exception as e:  # noqa: BLE001
            H.skip(name, f"{type(e).__name__}: {e}")
            broken.append(name)
    return broken


def main(argv: Optional[list[str]] = None) -> int:
    p = H.add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    p.add_argument("--floor-gbps", type=float, default=None, help="bandwidth for the floor column (CPU default 30)")
    args = H.finish_args(p, p.parse_args(argv))
    dev = args.device
    d = DEFAULTS[args.shapes]
    cfg = H.BenchConfig(
        device=dev,
        rounds=args.rounds if args.rounds is not None else int(d["rounds"]),
        warmup=args.warmup if args.warmup is not None else int(d["warmup"]),
        min_time_s=args.min_time if args.min_time is not None else d["min_time"],
        measure_memory=not args.no_memory,
    )
    floor_gbps = args.floor_gbps if args.floor_gbps is not None else (CPU_FLOOR_GBPS if dev == "cpu" else None)
    env = H.env_info(dev)
    H.print_header(env)

    base_fns: dict[str, LogprobFn] = {"eager": lambda x, i: eager_selective_log_softmax(x, i, TEMPERATURE)}
    use_compile = H.want(args, "compile")
    ext_fns = {k: f for k, f in ttrl_fast_fns(dev).items() if H.want(args, k)}
    print("providers:", ", ".join([k for k in base_fns if H.want(args, k)] + ["compile"] * use_compile + list(ext_fns)))

    gen = torch.Generator().manual_seed(0)
    n_rows = 0
    for n, v in SHAPES[args.shapes]:
        index = torch.randint(0, v, (n,), generator=gen).to(dev)
        grad = torch.randn(n, generator=gen).to(dev)
        for dname in args.dtype:
            dtype = H.DTYPES[dname]
            logits = (2.0 * torch.randn(n, v, generator=gen)).to(device=dev, dtype=dtype)
            fns = {k: f for k, f in base_fns.items() if H.want(args, k)}
            fns.update(ext_fns)
            for name in check_outputs(fns, logits, index):
                fns.pop(name)
            for mode in args.modes:
                logits.requires_grad_(mode == "full")
                logits.grad = None
                group = {k: f for k, f in fns.items() if k in base_fns}
                if use_compile:
                    torch._dynamo.reset()  # fresh cache per group: compile cost stays in warmup
                    compiled = torch.compile(eager_selective_log_softmax, dynamic=False)
                    group["compile"] = lambda x, i, _c=compiled: _c(x, i, TEMPERATURE)
                group.update({k: f for k, f in fns.items() if k not in base_fns})
                providers = {k: make_call(f, logits, index, mode, grad) for k, f in group.items()}
                rows = H.run_group(
                    op=OP,
                    mode=mode,
                    dtype=dname,
                    shape=(n, v),
                    providers=providers,
                    baseline=BASELINE,
                    bytes_moved=bytes_moved(n, v, logits.element_size(), mode),
                    cfg=cfg,
                    env=env,
                    mem_setup=(lambda _x=logits: setattr(_x, "grad", None)) if mode == "full" else None,
                )
                floor_ms = None
                if mode == "forward" and floor_gbps:
                    floor_ms = n * v * logits.element_size() / (floor_gbps * 1e9) * 1e3
                print()
                print(H.format_table(rows, baseline=BASELINE, compare_to=("compile",), floor_ms=floor_ms))
                if floor_ms is not None:
                    print(f"floor: one read of the logits at {floor_gbps:g} GB/s = {floor_ms:.3f} ms")
                if args.csv is not None and rows:
                    H.append_csv(rows, args.csv)
                    n_rows += len(rows)
            logits.requires_grad_(False)
            logits.grad = None
    if args.csv is not None:
        print(f"\nappended {n_rows} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
