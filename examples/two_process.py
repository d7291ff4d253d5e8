"""The hand-written GRPO loop of custom_loop.py, data-parallel over 2 processes (torch.multiprocessing.spawn, gloo
on CPU), on ttrl_fast's public ops only.

Each rank samples G completions for its own shard of the prompts (a prompt's group never straddles ranks, so
group_advantages stays local), then:
  * global token normaliser: the ranks all-reduce their completion-token counts N_r, and each rank's dapo loss is
    its token sum S_r / N with N = sum_r N_r (policy_loss(..., num_items_in_batch=N));
  * gradient all-reduce (SUM): sum_r grad(S_r / N) = grad(sum_r S_r / N) = the gradient of the token mean over the
    whole global batch, exactly what one process holding every rank's rollouts would compute;
  * metrics.all_reduce(): exact global KL / clip ratios from each rank's (sum, count) parts.
Checks: at step 0, rank 0 gathers every rank's rollouts and recomputes the one-process gradient on the whole batch
(it must equal the all-reduced gradient up to float32 rounding); at the end the ranks all-gather their parameters,
which must be bitwise identical.

    python examples/two_process.py                    # 2 ranks x 10 steps
    python examples/two_process.py --tiny             # 3 steps (smoke test)
    python examples/two_process.py --world 4 --steps 20
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # custom_loop.py, also inside the spawned ranks
import ttrl_fast  # noqa: E402
from custom_loop import EOS, PAD, make_prompts, rewards_of, sequence_logprobs, tiny_model  # noqa: E402


def gather_rows(x: torch.Tensor, width: int | None = None, value=0) -> torch.Tensor:
    """all_gather of equal-shaped per-rank tensors (right-padded along dim 1 to `width` first)."""
    if width is not None:
        x = F.pad(x, (0, width - x.shape[1]), value=value)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def one_process_gradient(model, reference, batch, advantages, args) -> list[torch.Tensor]:
    """The gradient one process would get from the union of every rank's rollouts (run on rank 0 only after the
    collective gathers, which every rank joins)."""
    rows = batch.completion_ids.shape[0]
    whole = SimpleNamespace(
        prompt_ids=gather_rows(torch.tensor(batch.prompt_ids)).tolist(),
        group_index=gather_rows((batch.group_index + dist.get_rank() * len(batch.prompt_ids))[None]).flatten(),
        completion_ids=gather_rows(batch.completion_ids, args.max_tokens, PAD),
        completion_mask=gather_rows(batch.completion_mask, args.max_tokens, False))
    old = gather_rows(batch.logprobs, args.max_tokens)
    adv = gather_rows(advantages[None]).flatten()
    if dist.get_rank() != 0:
        return []
    assert whole.completion_ids.shape[0] == rows * dist.get_world_size()
    with torch.no_grad():
        ref = sequence_logprobs(reference, whole) if args.beta else None
    loss, _ = ttrl_fast.policy_loss(sequence_logprobs(model, whole), old, adv, whole.completion_mask, ref_logp=ref,
                                    beta=args.beta, loss_type="dapo")  # normaliser: all tokens of the union
    return list(torch.autograd.grad(loss, list(model.parameters())))


def worker(rank: int, args: argparse.Namespace, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=args.world)
    model = tiny_model(args.seed)
    for p in model.parameters():  # one initialisation for all ranks
        dist.broadcast(p.data, src=0)
    reference = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    prompts = make_prompts(args.prompts_per_rank * args.world, seed=args.seed)[rank::args.world]  # this rank's shard
    sampler = ttrl_fast.RolloutSampler(model, max_rows=len(prompts) * args.group_size,
                                       max_seq_len=len(prompts[0]) + args.max_tokens, pad_token_id=PAD,
                                       eos_token_ids=[EOS])
    history, parity = [], {}
    for step in range(args.steps):
        with torch.no_grad():
            batch = sampler.generate(prompts, ttrl_fast.SamplingParams(n=args.group_size, max_tokens=args.max_tokens,
                                                                       seed=args.seed * 100_003 + step))
            ref_logp = sequence_logprobs(reference, batch) if args.beta else None
        rewards = rewards_of(batch)
        advantages, _ = ttrl_fast.group_advantages(rewards, group_size=args.group_size)  # local groups
        tokens = batch.completion_mask.sum().float()
        dist.all_reduce(tokens)  # N = completion tokens of the global batch
        logp = sequence_logprobs(model, batch)
        loss, metrics = ttrl_fast.policy_loss(logp, batch.logprobs, advantages, batch.completion_mask,
                                              ref_logp=ref_logp, beta=args.beta, loss_type="dapo",
                                              num_items_in_batch=tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)  # SUM: each local loss already divides by the global N
        if step == 0:
            expected = one_process_gradient(model, reference, batch, advantages, args)
            if expected:
                scale = max(float(g.abs().max()) for g in expected)
                parity["grad_max_abs_err"] = max(float((p.grad - g).abs().max())
                                                 for p, g in zip(model.parameters(), expected))
                parity["grad_max_abs"] = scale
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # identical gradients -> identical clipping
        optimizer.step()
        metrics = metrics.all_reduce()  # exact global KL / clip ratios
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)  # sum_r S_r / N: the global batch's loss
        mean_reward = rewards.mean()
        dist.all_reduce(mean_reward)
        history.append({"step": step, "loss": global_loss.item(), "reward": mean_reward.item() / args.world,
                        "kl": float(metrics["kl"]) if args.beta else 0.0, "tokens": int(tokens)})
        if rank == 0:
            print(f"step {step:3d}  global reward {history[-1]['reward']:.3f}  loss {history[-1]['loss']:+.4f}  "
                  f"kl {history[-1]['kl']:.4f}  tokens {int(tokens)}", flush=True)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(args.world)]
    dist.all_gather(copies, flat)
    parity["param_max_abs_diff"] = max(float((c - copies[0]).abs().max()) for c in copies)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "history": history, **parity}))
    dist.destroy_process_group()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="3 steps (smoke test)")
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--steps", type=int, default=None, help="default 10 (3 with --tiny)")
    p.add_argument("--prompts-per-rank", type=int, default=2)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "runs" / "two_process"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args, str(Path(tmp) / "rendezvous"), str(out)), nprocs=args.world, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.world)]
    first = ranks[0]
    relative = first["grad_max_abs_err"] / max(first["grad_max_abs"], 1e-30)
    summary = {"world": args.world, "history": first["history"], "grad_rel_err_vs_one_process": relative,
               "param_max_abs_diff": first["param_max_abs_diff"],
               "same_history_on_all_ranks": all(r["history"] == first["history"] for r in ranks)}
    summary["parity_ok"] = (relative < 1e-5 and summary["param_max_abs_diff"] == 0.0
                            and summary["same_history_on_all_ranks"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"all-reduced gradient vs one process on the whole batch: max rel. error {relative:.2e}; "
          f"parameters across ranks: max |diff| {summary['param_max_abs_diff']:.1e} -> "
          f"{'OK' if summary['parity_ok'] else 'MISMATCH'}")
    return summary


if __name__ == "__main__":
    main()
