"""Shared-prefix ("cascade") decode attention: the G samples of a prompt read the prompt's keys and
values once per group instead of once per row.

Without it, forking copies each prompt's KV into its G rows and every decode step reads G copies of
the same prompt: at P = 256 prompt tokens and N = 64 new ones the attention reads ~G x more bytes than
it needs, which dominates a small model's decode step. With it the cache keeps one copy of each prompt
(row b, positions [0, P)) and each row's own generated keys after it (positions [P, P + t)); a decode
step computes, per layer and KV head,

    prefix scores  [B, H_kv, G*rep, P] = (the group's G queries stacked) @ K_prefix(b)^T    one GEMM per group
    suffix scores  [rows, H_kv, rep, t] = q_row @ K_suffix(row)^T
    softmax over the concatenation (exactly the full-row softmax), then the same split for P @ V,

which is the same attention as SDPA over the full row (the parity tests compare log-probs with a
teacher-forced forward at 1e-5). Rows that finished and were compacted away simply leave holes in
their group's stacked queries (zeros, whose outputs are dropped).

The model calls this function through transformers' AttentionInterface: the sampler switches the text
config's attention implementation to SHARED_PREFIX_ATTENTION for its decode forwards only (prefill runs
the model's own SDPA / eager attention) and publishes the per-chunk state in a context variable.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass

import torch
from torch import Tensor

from ttrl_fast.sampler import decode_attention as D

SHARED_PREFIX_ATTENTION = "ttrl_fast_shared_prefix"


@dataclass
class SharedPrefixState:
    """What a decode step's attention needs beyond the query and the row's own keys."""

    cache: object  # RolloutCache: layer i's prompt keys are cache.layers[i].key_buffer[:prompts, :, :prefix]
    prompts: int
    group: int
    prefix: int  # P: padded prompt length
    prefix_valid: Tensor | None  # [prompts, P] bool (False on left padding), None without padding
    slots: Tensor | None  # [rows] int64: row -> b * G + g once rows were compacted, None while dense


_ACTIVE: contextvars.ContextVar[SharedPrefixState | None] = contextvars.ContextVar("ttrl_fast_shared_prefix",
                                                                                   default=None)


def unsupported_reason(model) -> str | None:
    """Why the shared-prefix path cannot serve `model` (None when it can)."""
    reason = D.plain_attention_reason(model)
    implementation = getattr(D.text_config(model), "_attn_implementation", None)
    if reason is None and implementation not in ("sdpa", "eager", None):
        reason = f"attention implementation {implementation!r} (shared prefix replaces sdpa / eager)"
    return reason


def _stack_groups(x: Tensor, state: SharedPrefixState) -> Tensor:
    """[rows, H, ...] per-row values -> [prompts * G, H, ...] in group slots (zeros where a row left)."""
    if state.slots is None:
        return x
    dense = x.new_zeros((state.prompts * state.group,) + tuple(x.shape[1:]))
    dense[state.slots] = x
    return dense


def _by_kv_head(x: Tensor, state: SharedPrefixState, kv_heads: int) -> Tensor:
    """[prompts * G, H, L] -> [prompts, H_kv, G * rep, L]: a group's queries of one KV head, stacked."""
    width = x.shape[-1]
    x = x.view(state.prompts, state.group, kv_heads, -1, width).permute(0, 2, 1, 3, 4)
    return x.reshape(state.prompts, kv_heads, -1, width)


def _by_row(x: Tensor, state: SharedPrefixState, heads: int) -> Tensor:
    """Inverse of _by_kv_head followed by the row gather: -> [rows, H, L]."""
    kv_heads, width = x.shape[1], x.shape[-1]
    x = x.view(state.prompts, kv_heads, state.group, heads // kv_heads, width).permute(0, 2, 1, 3, 4)
    x = x.reshape(state.prompts * state.group, heads, width)
    return x if state.slots is None else x[state.slots]


def shared_prefix_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
                            dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """AttentionInterface function for one decode step.

    query [rows, H, 1, D]; key / value [rows, H_kv, t, D]: the rows' generated keys (the cache returns
    only the suffix while a shared prefix is active). Returns ([rows, 1, H, D], None) like sdpa.
    """
    state = _ACTIVE.get()
    if state is None:
        raise RuntimeError(f"{SHARED_PREFIX_ATTENTION} attention runs only inside RolloutSampler decode steps")
    if query.shape[2] != 1:
        raise RuntimeError(f"shared-prefix attention decodes one token per row, got query length {query.shape[2]}")
    D.check_plain_call("shared-prefix", kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    layer = state.cache.layers[module.layer_idx]
    prefix_k = layer.key_buffer[:state.prompts, :, :state.prefix]  # [prompts, H_kv, P, D]
    prefix_v = layer.value_buffer[:state.prompts, :, :state.prefix]
    q = query[:, :, 0]  # [rows, H, D]

    prefix_scores = torch.matmul(_by_kv_head(_stack_groups(q, state), state, kv_heads), prefix_k.transpose(-1, -2))
    if state.prefix_valid is not None:
        prefix_scores = prefix_scores.masked_fill(~state.prefix_valid[:, None, None, :], float("-inf"))
    prefix_scores = _by_row(prefix_scores, state, heads)  # [rows, H, P]
    own_scores = torch.matmul(q.view(rows, kv_heads, -1, dim), key.transpose(-1, -2)).view(rows, heads, -1)

    # one softmax over [prefix | own]: exactly the full row's attention weights (fp32 like SDPA's)
    weights = torch.softmax(torch.cat([prefix_scores, own_scores], -1).float() * scaling, -1).to(value.dtype)
    prefix_w, own_w = weights[..., :state.prefix], weights[..., state.prefix:]
    out = torch.matmul(_by_kv_head(_stack_groups(prefix_w, state), state, kv_heads), prefix_v)
    out = _by_row(out, state, heads)  # [rows, H, D]
    out = out + torch.matmul(own_w.view(rows, kv_heads, -1, own_w.shape[-1]), value).view(rows, heads, dim)
    return out.view(rows, 1, heads, dim), None


def active(model, state: SharedPrefixState):
    """Context manager: the text model's decode attention is shared_prefix_attention within it."""
    return D.switched(model, SHARED_PREFIX_ATTENTION, shared_prefix_attention, _ACTIVE, state)
