"""Decode attention through flash-attn's `flash_attn_with_kvcache` on the sampler's own cache buffers
(CUDA only; guarded import).

HF's flash-attention path with a 2D padding mask un-pads and re-pads the whole batch every step; the
kvcache kernel instead reads each row's keys in place: row r attends to cache positions
[leftpad_r, seqlen) where leftpad_r is its left padding (prompt rows are right-aligned) and seqlen the
shared write pointer + 1 (this step's key, just written by the cache's update). The buffers are
[rows, H_kv, S, D]; the kernel takes [rows, S, H_kv, D] with a contiguous last dim and arbitrary other
strides, which is the transposed view, so nothing is copied.

This file cannot run here (no GPU): the tests drive it with a pure-PyTorch stand-in for the kernel that
follows flash-attn 2.8's documented semantics, so the glue (layout, lengths, left padding, compaction)
is checked, not the kernel.
"""
from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass

from torch import Tensor

from ttrl_fast.sampler import decode_attention as D

FLASH_DECODE_ATTENTION = "ttrl_fast_flash_decode"


@dataclass
class FlashDecodeState:
    cache: object  # RolloutCache
    seqlens: Tensor  # [rows] int32: keys [leftpad, seqlens) are attended
    leftpad: Tensor  # [rows] int32


_ACTIVE: contextvars.ContextVar[FlashDecodeState | None] = contextvars.ContextVar("ttrl_fast_flash_decode",
                                                                                 default=None)


def kernel():
    """flash_attn.flash_attn_with_kvcache, or None when flash-attn is missing or predates cache_leftpad."""
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception:  # ImportError, or a build that does not match this torch / GPU
        return None
    if "cache_leftpad" not in inspect.signature(flash_attn_with_kvcache).parameters:
        return None  # flash-attn < 2.6
    return flash_attn_with_kvcache


def unsupported_reason(model) -> str | None:
    """Why this path cannot serve `model` here (None when it can)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return f"the model is on {device}, flash_attn_with_kvcache needs CUDA"
    if kernel() is None:
        return "flash-attn >= 2.6 (flash_attn_with_kvcache with cache_leftpad) is not installed"
    implementation = getattr(D.text_config(model), "_attn_implementation", None)
    if implementation not in ("flash_attention_2", "sdpa", "eager", None):
        return f"attention implementation {implementation!r}"
    return D.plain_attention_reason(model)


def flash_decode_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
                           dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """AttentionInterface function for one decode step: query [rows, H, 1, D] -> ([rows, 1, H, D], None)."""
    state = _ACTIVE.get()
    if state is None:
        raise RuntimeError(f"{FLASH_DECODE_ATTENTION} attention runs only inside RolloutSampler decode steps")
    D.check_plain_call("flash decode", kwargs)
    rows = query.shape[0]
    layer = state.cache.layers[module.layer_idx]
    out = kernel()(query.transpose(1, 2), layer.key_buffer[:rows].transpose(1, 2),
                   layer.value_buffer[:rows].transpose(1, 2), cache_seqlens=state.seqlens,
                   cache_leftpad=state.leftpad, softmax_scale=scaling, causal=True)
    return out, None


def active(model, state: FlashDecodeState):
    """Context manager: the text model's decode attention is flash_decode_attention within it."""
    return D.switched(model, FLASH_DECODE_ATTENTION, flash_decode_attention, _ACTIVE, state)
