"""Time ttrl_fast's three core ops on every backend available here against eager PyTorch, for one shape each,
forward + backward (the training path):

  selective_log_softmax   logits [N, V] -> log-probs of the sampled tokens (TRL's selective_log_softmax)
  fused_linear_logprobs   hidden [N, H] and LM head [V, H] -> the same log-probs without the [N, V] logits
  policy_loss             GRPO dapo loss, clip 0.2, k3 KL (beta 0.04) on [B, T] log-probs

Every provider is first checked against eager (output and input gradients), then all providers of an op are
timed interleaved in one process (bench/_harness.py: each round calls every provider once, rotating the order,
so machine drift hits all alike); the table shows medians. Backends: ttrl_fast.available_backends(device)
(reference and cpp on a CPU; cuda, triton and reference on a GPU; triton is skipped on a CPU, where it would
run in the interpreter).

    python examples/microbenchmark.py                              # CPU (or --device cuda), fp32, ~2 min on 2 CPU cores
    python examples/microbenchmark.py --dtype bf16 --rounds 9
    python examples/microbenchmark.py --tiny                       # tiny shapes, a few rounds (smoke test)

For the full benchmark grid (memory, CSV, torch.compile rows) see bench/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import ttrl_fast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _harness as H  # noqa: E402  (the repository's interleaved timing harness)

SHAPES = {"full": dict(N=1024, V=32000, H=512, B=64, T=512), "tiny": dict(N=64, V=1000, H=32, B=8, T=16)}


# ---------------------------------------------------------------------------------------------- eager baselines
def eager_logprobs(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL-style: gather - logsumexp in fp32, log_softmax in the native dtype for 16-bit logits."""
    if logits.dtype == torch.float32:
        return logits.gather(-1, index[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.log_softmax(logits, -1).gather(-1, index[:, None]).squeeze(-1).float()


def eager_fused_linear(hidden: torch.Tensor, weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return eager_logprobs(hidden @ weight.T, index)  # materialises the [N, V] logits


def eager_policy_loss(logp, old, adv, mask, ref, beta=0.04, eps=0.2):
    """dapo: -min(r A, clip(r) A) + beta k3, summed over the valid tokens / their count (TRL 1.16's formula)."""
    ratio = torch.exp(logp - old)
    per_token = -torch.min(ratio * adv[:, None], ratio.clamp(1 - eps, 1 + eps) * adv[:, None])
    per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------- problems
def problems(shape: dict, dtype: torch.dtype, device: str) -> dict:
    """op -> (inputs needing gradients, callable(backend or None) -> scalar or [N] output)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    N, V, H, B, T = (shape[k] for k in "NVHBT")

    def rand(*size, scale=1.0, grad=False, dt=dtype):
        return (torch.randn(*size, generator=g) * scale).to(device, dt).requires_grad_(grad)

    logits = rand(N, V, scale=2.0, grad=True)
    index = torch.randint(0, V, (N,), generator=g).to(device)
    hidden, weight = rand(N, H, grad=True), rand(V, H, scale=H ** -0.5, grad=True)
    logp = (-torch.rand(B, T, generator=g) * 3).to(device).requires_grad_(True)
    old = (logp.detach() + torch.randn(B, T, generator=g).to(device) * 0.1).clamp(max=0)
    ref = (logp.detach() + torch.randn(B, T, generator=g).to(device) * 0.1).clamp(max=0)
    adv = torch.randn(B, generator=g).to(device)
    lengths = torch.randint(1, T + 1, (B,), generator=g).to(device)
    mask = torch.arange(T, device=device)[None] < lengths[:, None]
    return {
        "selective_log_softmax": ([logits], lambda b: eager_logprobs(logits, index) if b is None else
                                  ttrl_fast.selective_log_softmax(logits, index, backend=b)),
        "fused_linear_logprobs": ([hidden, weight], lambda b: eager_fused_linear(hidden, weight, index) if b is None
                                  else ttrl_fast.fused_linear_logprobs(hidden, weight, index, backend=b)),
        "policy_loss": ([logp], lambda b: eager_policy_loss(logp, old, adv, mask, ref) if b is None else
                        ttrl_fast.policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="dapo",
                                              backend=b)[0]),
    }


def forward_backward(inputs: list[torch.Tensor], fn, backend):
    """One training call: outputs and the input gradients (a fixed output gradient, as a loss would give)."""
    for x in inputs:
        x.grad = None
    out = fn(backend)
    out.backward(torch.ones_like(out) if out.dim() == 0 else torch.linspace(-1, 1, out.numel(), device=out.device))
    return out.detach().float(), [x.grad.float() for x in inputs]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes, 3 rounds")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; 3 with --tiny)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    shape = SHAPES["tiny" if args.tiny else "full"]
    rounds = args.rounds or (3 if args.tiny else 7)
    backends = [b for b in ttrl_fast.available_backends(args.device) if not (b == "triton" and args.device == "cpu")]
    print(f"device {args.device} ({H.device_name(args.device)}), {args.dtype}, shape {shape}, backends {backends}")
    rows = []
    for op, (inputs, fn) in problems(shape, dtype, args.device).items():
        want, want_grads = forward_backward(inputs, fn, None)
        providers, errors = {"eager": lambda fn=fn, inputs=inputs: forward_backward(inputs, fn, None)}, {"eager": 0.0}
        for b in backends:
            got, grads = forward_backward(inputs, fn, b)  # correctness first: output and every input gradient
            errors[f"ttrl_fast:{b}"] = max([float((got - want).abs().max())] +
                                           [float((x - y).abs().max()) for x, y in zip(grads, want_grads)])
            providers[f"ttrl_fast:{b}"] = lambda fn=fn, inputs=inputs, b=b: forward_backward(inputs, fn, b)
        timings = H.time_interleaved(H.warmup(providers, 1, args.device), device=args.device, rounds=rounds)
        base = timings["eager"].p50_ms
        for name, t in timings.items():
            rows.append({"op": op, "provider": name, "median_ms": t.p50_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                         "speedup_vs_eager": base / t.p50_ms, "max_abs_err_vs_eager": errors[name],
                         "calls": t.calls})
    print(f"\n{'op':<24}{'provider':<20}{'median ms':>11}{'p20-p80 ms':>17}{'vs eager':>10}{'max |err|':>11}")
    for r in rows:
        print(f"{r['op']:<24}{r['provider']:<20}{r['median_ms']:>11.3f}{r['p20_ms']:>8.2f}-{r['p80_ms']:<8.2f}"
              f"{r['speedup_vs_eager']:>9.2f}x{r['max_abs_err_vs_eager']:>11.1e}")
    return rows


if __name__ == "__main__":
    main()
