"""Data parallelism for the GRPO loop under torchrun (any torch.distributed backend: gloo on CPU, nccl on GPU).

Every rank holds the whole policy (LoRA adapter or full weights), samples and scores its own shard of
each step's prompts, and after backward the trainable gradients are averaged across ranks: DDP's
arithmetic, done explicitly on `policy.trainable_parameters()` so that it works for every Policy (the
fused log-prob path calls the decoder and the head directly, which a DDP wrapper would not see) and
reduces only what trains (a LoRA adapter is a few MB). One flat buffer per dtype, one all_reduce.

Loss normalisation across ranks follows TRL: token-level losses (dapo, cispo, vespo) divide by the
GLOBAL token count / world size (`num_items_in_batch`), so averaging the gradients gives the gradient
of sum(all tokens' losses) / all tokens; sequence-mean losses (grpo, ...) average per rank, which equals
the global mean because every rank gets the same number of prompts (enforced by `shard`).

Sampling needs no coordination: the sampler's noise is keyed by (seed, prompt content, g, step), so a
rank draws exactly what a single process would draw for the same prompts. FSDP (sharded parameters) is
not supported by this loop: models must fit one device (LoRA makes 7B-class models fit one GPU).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's equal share of a step's prompts (rank r takes items r, r + W, ...)."""
    rank, world = rank_and_world()
    if len(items) % world:
        raise ValueError(f"{len(items)} prompts per step cannot be split evenly over {world} ranks: make "
                         f"AdaptConfig.prompts_per_step a multiple of the world size")
    return list(items[rank::world])


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """grad <- mean over ranks, in place (no-op on one process). Parameters without a gradient on this
    rank contribute zeros, so every rank runs the same collective."""
    if not active():
        return
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in group:
            piece = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is None:
                p.grad = piece.clone()
            else:
                p.grad.copy_(piece)


def global_sum(value: Tensor) -> Tensor:
    """Sum of a tensor over ranks (a copy; the input on one process)."""
    out = value.detach().clone().float()
    if active():
        dist.all_reduce(out)
    return out


def global_max(value: float) -> float:
    if not active():
        return value
    out = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out)


def gather_values(values: Tensor) -> Tensor:
    """All ranks' 1-D values concatenated in rank order (equal lengths per rank)."""
    if not active():
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def gather_objects(items: list) -> list:
    """All ranks' lists of picklable objects, concatenated in rank order."""
    if not active():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def barrier() -> None:
    if active():
        dist.barrier()
