"""Benchmark: the fp32 skinny GEMM of decode steps on CPU, against torch.nn.functional.linear.

    out[M, N] = x[M, K] @ w[N, K]^T      (x: M rows of hidden states, w: an nn.Linear weight)

Providers, timed interleaved (each round calls every provider once, the order rotating) and
reported as the median per provider, for each thread count, (K, N) and M:

* ``ttrl_fast``  the C++ extension's ``linear_f32`` (AVX-512 kernel where the CPU has it, else the
                 portable fallback; ``--portable`` forces the latter)
* ``torch``      ``F.linear(x, w)`` (MKL's sgemm on x86)

Columns: ms (median), GB/s = bytes of w / ms (the weight streaming the kernel is built around;
w is L2-resident for the small layers, L3 for 256x8192, DRAM for 1024x32000), GFLOP/s = 2 M N K /
ms, and ``speedup`` = torch ms / ttrl_fast ms (> 1: ttrl_fast is faster).

    python bench/bench_linear_f32.py                          # the shapes below, 1 and 2 threads
    python bench/bench_linear_f32.py --shapes 4096x151936 --m 1,8 --threads 1 --rounds 5
    python bench/bench_linear_f32.py --clock thread            # CPU time of the calling thread

``--clock thread`` (time.thread_time, only with 1 thread) counts the CPU time the call got, which
keeps the numbers stable on a machine shared with other jobs; the default is wall time.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttrl_fast import _ext  # noqa: E402

DEFAULT_SHAPES = "256x8192,256x688,688x256,1024x32000"  # K x N: LM heads and layer widths


def _rounds_for(nbytes: int, rounds: int) -> int:
    """Fewer rounds for the DRAM-sized weights (each call takes tens of ms)."""
    return rounds if nbytes < (64 << 20) else max(5, rounds // 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated KxN weight shapes")
    parser.add_argument("--m", default="1,8,16,32,64", help="comma-separated M values (rows of x)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    parser.add_argument("--rounds", type=int, default=41, help="timed rounds (a fifth for weights >= 64 MiB)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: perf_counter; thread: thread_time (CPU time, 1 thread only)")
    parser.add_argument("--portable", action="store_true", help="time the portable fallback instead")
    args = parser.parse_args()

    ext = _ext.extension("cpu")
    if ext is None or not hasattr(ext, "linear_f32"):
        sys.exit(f"the C++ extension with linear_f32 is not built: {_ext.LOAD_ERRORS.get('cpu')}")
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    ms_values = [int(v) for v in args.m.split(",")]
    thread_counts = [int(v) for v in args.threads.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, native AVX-512 kernel: {ext.linear_f32_has_native() and not args.portable}, "
          f"clock {args.clock}, loadavg1 {load:.2f}")
    print(f"{'thr':>3} {'K':>5} {'N':>6} {'M':>3}  {'torch ms':>9} {'GB/s':>6} {'GFLOP/s':>7}  "
          f"{'ttrl ms':>9} {'GB/s':>6} {'GFLOP/s':>7}  {'speedup':>7}")

    threads_before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            clock = time.thread_time if args.clock == "thread" and threads == 1 else time.perf_counter
            if args.clock == "thread" and threads != 1:
                print(f"NOTE: {threads} threads are timed with the wall clock")
            for k, n in shapes:
                w = torch.randn(n, k, generator=g)  # [N, K]
                w_bytes = 4 * n * k
                for m in ms_values:
                    x = torch.randn(m, k, generator=g)  # [M, K]
                    providers = {
                        "torch": lambda: F.linear(x, w),
                        "ttrl_fast": lambda: ext.linear_f32(x, w, None, args.portable),
                    }
                    for fn in providers.values():  # warm up (and bring w into cache where it fits)
                        fn()
                        fn()
                    times: dict[str, list[float]] = {name: [] for name in providers}
                    names = list(providers)
                    gc.disable()
                    try:
                        for r in range(_rounds_for(w_bytes, args.rounds)):
                            for name in names[r % len(names):] + names[: r % len(names)]:
                                t0 = clock()
                                providers[name]()
                                times[name].append(clock() - t0)
                    finally:
                        gc.enable()
                    t_torch = statistics.median(times["torch"])
                    t_ours = statistics.median(times["ttrl_fast"])
                    flop = 2.0 * m * n * k
                    print(f"{threads:>3} {k:>5} {n:>6} {m:>3}  {t_torch * 1e3:>9.3f} {w_bytes / t_torch / 1e9:>6.1f} "
                          f"{flop / t_torch / 1e9:>7.1f}  {t_ours * 1e3:>9.3f} {w_bytes / t_ours / 1e9:>6.1f} "
                          f"{flop / t_ours / 1e9:>7.1f}  {t_torch / t_ours:>6.2f}x", flush=True)
    finally:
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    main()
