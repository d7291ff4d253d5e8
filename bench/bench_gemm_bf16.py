"""Benchmark: the LM-head logits GEMM on CPU, bf16 inputs -> fp32 logits.

    out[M, N] = a[M, K] @ b[N, K]^T      (a: hidden states, b: the nn.Linear weight [V, H])

Providers, timed interleaved (each round calls every provider once, the order rotating) and
reported as the median per provider:

* ``ttrl_fast``       the C++ extension's ``gemm_bf16_nt_f32`` (fp32 output into a preallocated
                      buffer; avx512-bf16 kernel where the CPU has it, else the portable fallback)
* ``torch_bf16``      ``a @ b.T`` (oneDNN; its output is rounded to bf16)
* ``torch_bf16_out``  ``torch.mm(a, b.T, out=...)`` (the same without allocating the output)
* ``torch_fp32``      ``a32 @ b32.T`` with the operands converted to fp32 once, outside the timing

    python bench/bench_gemm_bf16.py                    # M in 128, 256, 512; N = 32000; K = 1024
    python bench/bench_gemm_bf16.py --m 256 --n 151936 --k 4096 --rounds 5
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttrl_fast import _ext  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", default="128,256,512", help="comma-separated M values (tokens)")
    parser.add_argument("--n", type=int, default=32000, help="N (vocabulary)")
    parser.add_argument("--k", type=int, default=1024, help="K (hidden)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--portable", action="store_true", help="time the portable fallback instead")
    args = parser.parse_args()

    ext = _ext.extension("cpu")
    if ext is None or not hasattr(ext, "gemm_bf16_nt_f32"):
        sys.exit(f"the C++ extension with gemm_bf16_nt_f32 is not built: {_ext.LOAD_ERRORS.get('cpu')}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native avx512-bf16 kernel: {ext.gemm_bf16_has_native() and not args.portable}")
    print(f"{'M':>5} {'N':>7} {'K':>5}  {'provider':<15} {'ms':>9} {'GFLOP/s':>9}")

    g = torch.Generator().manual_seed(0)
    n, k = args.n, args.k
    b = torch.randn(n, k, generator=g).bfloat16()
    b32 = b.float()
    for m in (int(x) for x in args.m.split(",")):
        a = torch.randn(m, k, generator=g).bfloat16()
        a32 = a.float()
        out = torch.empty(m, n)
        out_bf16 = torch.empty(m, n, dtype=torch.bfloat16)
        providers = {
            "ttrl_fast": lambda: ext.gemm_bf16_nt_f32(a, b, out, None, args.portable),
            "torch_bf16": lambda: a @ b.T,
            "torch_bf16_out": lambda: torch.mm(a, b.T, out=out_bf16),
            "torch_fp32": lambda: a32 @ b32.T,
        }
        times: dict[str, list[float]] = {name: [] for name in providers}
        for fn in providers.values():  # warm up
            fn()
        names = list(providers)
        gc.disable()
        try:
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    providers[name]()
                    times[name].append(time.perf_counter() - t0)
        finally:
            gc.enable()
        flop = 2.0 * m * n * k
        for name in names:
            t = statistics.median(times[name])
            print(f"{m:>5} {n:>7} {k:>5}  {name:<15} {t * 1e3:>9.2f} {flop / t / 1e9:>9.1f}")


if __name__ == "__main__":
    main()
