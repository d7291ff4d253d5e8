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
rank draws exactly what a single process would draw for the same prompts.

FSDP2 (sharded parameters): `shard_fsdp2(policy)` applies torch's fully_shard to an HFCausalLMPolicy's
decoder layers, decoder and LM head (as a FusedLinearHead module, so the fused log-prob head is gathered
by its own hooks) and the root; FSDP2 then averages the gradients itself (reduce-scatter) and
`average_gradients` leaves sharded parameters alone.
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
    params = [p for p in params if not hasattr(p, "device_mesh")]  # FSDP2 DTensors: already reduce-scattered
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


def shard_fsdp2(policy) -> None:
    """FSDP2 for an HFCausalLMPolicy that trains every weight (and its frozen reference copy): each decoder
    layer, the decoder (embeddings, final norm), the LM head and the root become fully_shard units.
    Tied input / output embeddings cannot live in two units: untie them first. Call after
    torch.distributed is initialised and before building the GRPOTrainer (its optimizer must see the
    sharded parameters)."""
    from torch.distributed.fsdp import fully_shard

    from ttrl_fast.fused_linear import FusedLinearHead

    if hasattr(policy.model, "peft_config"):
        raise ValueError("shard_fsdp2 shards full-weight training; with LoRA every rank can hold the model "
                         "(plain data parallelism, nothing to call)")
    for model in [policy.model] + ([policy._frozen] if getattr(policy, "_frozen", None) is not None else []):
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        if head.weight is decoder.get_input_embeddings().weight:
            raise ValueError("shard_fsdp2: the model ties its input and output embeddings (one tensor cannot be "
                             "sharded in two FSDP units); untie them (config.tie_word_embeddings=False) first")
        if type(head) is not torch.nn.Linear:
            raise ValueError(f"shard_fsdp2: the LM head is a {type(head).__name__}, expected nn.Linear")
        head.__class__ = FusedLinearHead  # same parameters and keys; forward also serves fused log-probs
        for layer in decoder.layers:
            fully_shard(layer)
        fully_shard(decoder)
        fully_shard(head)
        fully_shard(model)
