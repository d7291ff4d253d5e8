"""Benchmark: the GRPO loss from hidden states through the LM head (fused linear), forward + backward.

Providers (timed interleaved in one process by bench/_harness.py, medians):

* ``eager``    TRL-style composite: logits = hidden @ W.T, selective log-softmax in torch, TRL 1.16's
               loss math (ttrl_fast.reference.policy_loss, verified against TRL's own code)
* ``liger``    Liger-Kernel 0.8.5 ``LigerFusedLinearGRPOLoss`` (its default ``compiled=True``) on CPU
* ``ttrl_fast`` ``ttrl_fast.FusedLinearGRPOLoss`` (token-chunked, grad-in-forward for token level)

Peak memory is measured in a separate process per provider (the RSS high-water mark of one
forward + backward after the inputs exist), minus the gradients every method must return
(dX, dW): "extra" is what each method needs beyond its inputs and outputs. ttrl_fast's extra
memory is also measured at 2N to show it is flat in N.

    python bench/bench_fused_linear.py                     # N=2048, H=1024, V=32000; fp32 and bf16
    python bench/bench_fused_linear.py --shapes quick --no-csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _harness as H  # noqa: E402

OP = "fused_linear_grpo"
SHAPES = {"quick": (64, 32, 512), "full": (2048, 1024, 32000)}  # (N tokens, H, V)
SEQ_LEN = {"quick": 16, "full": 256}
DEFAULTS = {"quick": {"rounds": 10, "warmup": 1}, "full": {"rounds": 5, "warmup": 1}}


def make_inputs(n: int, h: int, v: int, seq_len: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = n // seq_len
    hidden = (torch.randn(b, seq_len, h, generator=g) / h**0.5).to(dtype)
    weight = (torch.randn(v, h, generator=g)).to(dtype)
    ids = torch.randint(0, v, (b, seq_len), generator=g)
    mask = (torch.rand(b, seq_len, generator=g) > 0.1).long()
    adv = torch.randn(b, generator=g)
    old = -torch.rand(b, seq_len, generator=g) - 8.0
    ref = -torch.rand(b, seq_len, generator=g) - 8.0
    return hidden, weight, ids, mask, adv, old, ref


def make_provider(name: str, level: str):
    """A loss function (hidden, weight, ids, mask, adv, old, ref) -> loss for one provider."""
    kw = dict(loss_type="dapo", importance_sampling_level=level, beta=0.04)
    if name == "eager":
        from ttrl_fast.reference.policy_loss import policy_loss as trl_math

        def eager(hidden, weight, ids, mask, adv, old, ref):
            logits = hidden @ weight.t()  # [B, T, V]
            if logits.dtype == torch.float32:
                logp = torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            else:
                logp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).float()
            return trl_math(logp, old, adv, mask, ref_logp=ref, **kw)[0]

        return eager
    if name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        mod = LigerFusedLinearGRPOLoss(epsilon_high=0.2, **kw)
        return lambda hidden, weight, ids, mask, adv, old, ref: mod(
            hidden, weight, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)[0]
    import ttrl_fast

    mod = ttrl_fast.FusedLinearGRPOLoss(epsilon_high=0.2, **kw)
    return lambda hidden, weight, ids, mask, adv, old, ref: mod(
        hidden, weight, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)[0]


def run_once(fn, inputs):
    hidden, weight = inputs[0], inputs[1]
    hidden.grad = weight.grad = None
    loss = fn(*inputs)
    loss.backward()
    return loss


def child_memory(provider: str, dtype: str, n: int, h: int, v: int, seq_len: int, level: str) -> None:
    """Run in a fresh process: print the peak extra MB of one forward + backward as JSON."""
    inputs = make_inputs(n, h, v, seq_len, H.DTYPES[dtype])
    inputs[0].requires_grad_(True)
    inputs[1].requires_grad_(True)
    fn = make_provider(provider, level)
    run_once(fn, inputs)  # warm: compilation, one-time allocations, caches
    grads_mb = (inputs[0].numel() * inputs[0].element_size() + inputs[1].numel() * inputs[1].element_size()) / 1e6
    extra = H.peak_extra_mb(lambda: run_once(fn, inputs), "cpu",
                            lambda: setattr(inputs[0], "grad", None) or setattr(inputs[1], "grad", None))
    print(json.dumps({"provider": provider, "peak_extra_mb": extra, "grads_mb": grads_mb,
                      "extra_beyond_grads_mb": extra - grads_mb}))


def memory_in_subprocess(provider: str, dtype: str, n: int, h: int, v: int, seq_len: int, level: str) -> dict:
    cmd = [sys.executable, __file__, "--child-memory", provider, "--dtype", dtype, "--level", level,
           "--child-shape", f"{n},{h},{v},{seq_len}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"provider": provider, "error": (proc.stderr or proc.stdout)[-400:]}
    return json.loads(lines[-1])


def main(argv: Optional[list[str]] = None) -> int:
    p = H.add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    p.add_argument("--level", default="token,sequence", help="importance sampling levels to run")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-shape", default=None, help=argparse.SUPPRESS)
    raw = p.parse_args(argv)
    if raw.child_memory:
        n, h, v, seq = (int(x) for x in raw.child_shape.split(","))
        dtype = raw.dtype if isinstance(raw.dtype, str) else raw.dtype[0]
        child_memory(raw.child_memory, dtype.split(",")[0], n, h, v, seq, raw.level)
        return 0
    args = H.finish_args(p, raw)
    n, h, v = SHAPES[args.shapes]
    seq = SEQ_LEN[args.shapes]
    d = DEFAULTS[args.shapes]
    cfg = H.BenchConfig(device="cpu", rounds=args.rounds or d["rounds"], warmup=args.warmup or d["warmup"],
                        min_time_s=args.min_time or 0.0, measure_memory=False)
    env = H.env_info("cpu")
    H.print_header(env)
    names = [x for x in ("eager", "liger", "ttrl_fast") if H.want(args, x)]
    print("providers:", ", ".join(names))
    n_rows = 0
    for dname in args.dtype:
        for level in raw.level.split(","):
            inputs = make_inputs(n, h, v, seq, H.DTYPES[dname])
            inputs[0].requires_grad_(True)
            inputs[1].requires_grad_(True)
            providers = {}
            for name in names:
                try:
                    fn = make_provider(name, level)
                    providers[name] = (lambda _f=fn: run_once(_f, inputs))
                except Exception as e:  # noqa: BLE001
                    H.skip(name, f"{type(e).__name__}: {e}")
            rows = H.run_group(op=OP, mode=f"full-{level}", dtype=dname, shape=(n, h, v), providers=providers,
                               baseline="eager", bytes_moved=2 * 3 * n * h * v, cfg=cfg, env=env)
            mem = {name: memory_in_subprocess(name, dname, n, h, v, seq, level) for name in providers}
            if "ttrl_fast" in providers:
                mem["ttrl_fast@2N"] = memory_in_subprocess("ttrl_fast", dname, 2 * n, h, v, seq, level)
            for r in rows:
                r.peak_extra_mb = mem.get(r.provider, {}).get("extra_beyond_grads_mb", float("nan"))
            print()
            print("(gbps column: matmul FLOP-rate in GFLOP/s = 6 N H V / p50)")
            print(H.format_table(rows, baseline="eager", compare_to=("liger",)))
            print("peak extra memory beyond inputs and the returned gradients (separate processes):")
            for name, m in mem.items():
                if "error" in m:
                    print(f"  {name:<14} ERROR {m['error']}")
                else:
                    print(f"  {name:<14} {m['extra_beyond_grads_mb']:9.1f} MB   (raw peak {m['peak_extra_mb']:.1f} MB,"
                          f" gradients {m['grads_mb']:.1f} MB)")
            if args.csv is not None and rows:
                H.append_csv(rows, args.csv)
                n_rows += len(rows)
    if args.csv is not None:
        print(f"\nappended {n_rows} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
