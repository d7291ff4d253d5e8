"""Benchmark: GRPO loss end to end from logits, forward + backward (the gradient w.r.t. logits).

Providers (interleaved in one process by bench/_harness.py):

* ``eager``            TRL-style composite: log-probs by ``gather - logsumexp`` (fp32) or
                       ``log_softmax`` in the native dtype (bf16), then TRL 1.16's loss math in torch
                       (ttrl_fast.reference.policy_loss is that math, verified against TRL's own code)
* ``compile``          ``torch.compile`` of the same composite
* ``ttrl_fast:<name>`` ``ttrl_fast.grpo_loss(..., backend=<name>)``: one fused vocabulary pass each
                       way plus one O(tokens) loss kernel

Loss: dapo, token-level ratio, beta = 0.04 (k3 KL against ref_logp), off-policy old_logp, 90% of the
tokens unmasked. Entropy is not computed by any provider (``log_entropy=False``).

    python bench/bench_grpo_loss.py                 # [8 x 512, 32000] fp32 and bf16
    python bench/bench_grpo_loss.py --shapes quick --no-csv
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

OP = "grpo_loss"
BASELINE = "eager"
SHAPES: dict[str, list[tuple[int, int, int]]] = {"quick": [(2, 16, 1000)], "full": [(8, 512, 32000)]}
DEFAULTS: dict[str, dict[str, float]] = {
    "quick": {"rounds": 20, "warmup": 2, "min_time": 0.2},
    "full": {"rounds": 7, "warmup": 2, "min_time": 0.0},
}
LOSS_KW = dict(loss_type="dapo", beta=0.04)

LossFn = Callable[..., torch.Tensor]


def eager_grpo_loss(logits, ids, adv, mask, old, ref):
    """TRL-style: selective log-softmax in torch, then TRL 1.16's loss math in torch."""
    from ttrl_fast.reference.policy_loss import policy_loss as trl_math

    if logits.dtype in (torch.float32, torch.float64):
        logp = torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    else:
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).float()
    loss, _ = trl_math(logp, old, adv, mask, ref_logp=ref, **LOSS_KW)
    return loss


def ttrl_fast_fns(device: str) -> dict[str, LossFn]:
    try:
        import ttrl_fast
        from ttrl_fast.backends import available_backends

        names = [n for n in available_backends(device, op="policy_loss") if n in available_backends(device)]
    except Exception as e:  # noqa: BLE001 - the package may be missing or half-built
        H.skip("ttrl_fast:*", f"ttrl_fast unavailable: {type(e).__name__}: {e}")
        return {}
    fns: dict[str, LossFn] = {}
    for name in names:
        if device == "cpu" and name == "triton":
            continue  # CPU triton is the interpreter: not a timing

        def fn(logits, ids, adv, mask, old, ref, _b=name):
            loss, _ = ttrl_fast.grpo_loss(logits, ids, adv, mask, old_logp=old, ref_logp=ref, log_entropy=False,
                                          backend=_b, **LOSS_KW)
            return loss

        fns[f"ttrl_fast:{name}"] = fn
    return fns


def main(argv: Optional[list[str]] = None) -> int:
    p = H.add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
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
    env = H.env_info(dev)
    H.print_header(env)
    ext = {k: f for k, f in ttrl_fast_fns(dev).items() if H.want(args, k)}
    use_compile = H.want(args, "compile")
    print("providers:", ", ".join(["eager"] + ["compile"] * use_compile + list(ext)))

    gen = torch.Generator().manual_seed(0)
    n_rows = 0
    for b, t, v in SHAPES[args.shapes]:
        ids = torch.randint(0, v, (b, t), generator=gen).to(dev)
        adv = torch.randn(b, generator=gen).to(dev)
        mask = (torch.rand(b, t, generator=gen) > 0.1).to(dev)
        for dname in args.dtype:
            dtype = H.DTYPES[dname]
            logits = (2.0 * torch.randn(b, t, v, generator=gen)).to(device=dev, dtype=dtype)
            with torch.no_grad():
                base = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            old = (base + 0.05 * torch.randn(b, t, generator=gen).to(dev)).contiguous()
            ref = (base + 0.05 * torch.randn(b, t, generator=gen).to(dev)).contiguous()
            del base
            logits.requires_grad_(True)
            group: dict[str, LossFn] = {"eager": eager_grpo_loss}
            if use_compile:
                torch._dynamo.reset()
                group["compile"] = torch.compile(eager_grpo_loss, dynamic=False)
            group.update(ext)
            with torch.no_grad():
                ref_loss = float(eager_grpo_loss(logits.float(), ids, adv, mask, old, ref))
            for name, fn in list(group.items()):
                if name.startswith("ttrl_fast:"):
                    try:
                        got = float(fn(logits.detach(), ids, adv, mask, old, ref))
                        if abs(got - ref_loss) > 1e-3 * max(1.0, abs(ref_loss)):
                            print(f"WARNING provider={name} loss {got:.6g} vs eager fp32 {ref_loss:.6g}")
                    except Exception as e:  # noqa: BLE001
                        H.skip(name, f"{type(e).__name__}: {e}")
                        group.pop(name)

            def make_call(fn, _x=logits):
                def call():
                    _x.grad = None
                    loss = fn(_x, ids, adv, mask, old, ref)
                    loss.backward()
                    return loss

                return call

            providers = {k: make_call(f) for k, f in group.items()}
            rows = H.run_group(op=OP, mode="full", dtype=dname, shape=(b * t, v), providers=providers,
                               baseline=BASELINE, bytes_moved=3 * b * t * v * logits.element_size(), cfg=cfg,
                               env=env, mem_setup=lambda _x=logits: setattr(_x, "grad", None))
            print()
            print(H.format_table(rows, baseline=BASELINE, compare_to=("compile",)))
            grad_mb = b * t * v * logits.element_size() / 1e6
            print(f"one logits-sized gradient = {grad_mb:.1f} MB")
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
