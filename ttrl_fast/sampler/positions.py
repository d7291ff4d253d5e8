"""Extra prefill inputs (images) for the sampler, batched per chunk, and the position scheme a model needs.

Prefill inputs: `RolloutSampler.generate(..., prefill_inputs=[dict per prompt])` hands each prompt's extra
model kwargs (pixel_values, image_grid_thw, ...) to the prefill forward only; the G rows of a prompt share
its prefilled KV, so each image is encoded once per prompt. Batching a chunk's dicts (`batch_prefill`):
    * tensors are concatenated along dim 0: right for InternVL's pixel_values [n_img, 3, H, W], Qwen-VL's
      flattened patches [n_patches, C*T*p*p] with image_grid_thw [n_img, 3], image_sizes [n_img, 2];
    * per-token keys (mm_token_type_ids, token_type_ids: [L] or [1, L]) are left-padded with 0 like the ids;
    * other values (e.g. vision_feature_layer) must be equal across the chunk and are passed once;
    * a prompt may lack a key (a text-only prompt among image ones): it contributes nothing to it.

Positions: text LMs (and InternVL, whose image tokens are ordinary 1-D positions) use cumsum(mask) - 1
(padding.py), nothing extra. Models with M-RoPE (Qwen2-VL / Qwen2.5-VL) give image tokens 3-D
(temporal, height, width) positions; the text after an image continues from max + 1, so a prompt's
next position is len(prompt) + delta with delta = max_position + 1 - len(prompt) <= 0. `MRopePositions`
computes the prefill positions [3, B, P] with the model's own get_rope_index on the left-padded ids +
mask (mm_token_type_ids from prefill_inputs, else from the placeholder ids) and keeps the per-prompt
delta; in decode the three components are equal, so a decode position is the cumsum position + delta,
passed 2-D ([rows, 1]; the model expands it to its 3 components).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# keys the sampler builds itself: a prefill_inputs dict must not carry them
RESERVED_KEYS = frozenset({"input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache",
                           "inputs_embeds", "logits_to_keep", "cache_position"})
# per-token keys: padded like the ids instead of concatenated
PER_TOKEN_KEYS = frozenset({"mm_token_type_ids", "token_type_ids"})
# top-level model types whose decoder uses M-RoPE positions from get_rope_index(input_ids, mm_token_type_ids,
# image_grid_thw, video_grid_thw, attention_mask=...)
MROPE_MODELS = frozenset({"qwen2_vl", "qwen2_5_vl"})


def check_prefill_inputs(prefill_inputs, count: int) -> list[dict] | None:
    """None, or a list of `count` dicts of extra prefill kwargs (one per prompt); clear errors otherwise."""
    if prefill_inputs is None:
        return None
    if isinstance(prefill_inputs, (dict, Tensor, str)) or not isinstance(prefill_inputs, Sequence):
        raise TypeError(f"prefill_inputs must be None or a list with one dict per prompt, got "
                        f"{type(prefill_inputs).__name__}")
    if len(prefill_inputs) != count:
        raise ValueError(f"prefill_inputs has {len(prefill_inputs)} entries for {count} prompts (one dict per prompt)")
    for i, extra in enumerate(prefill_inputs):
        if not isinstance(extra, dict):
            raise TypeError(f"prefill_inputs[{i}] must be a dict of model kwargs, got {type(extra).__name__}")
        reserved = sorted(RESERVED_KEYS & set(extra))
        if reserved:
            raise ValueError(f"prefill_inputs[{i}] sets {reserved}: the sampler builds those itself")
    return list(prefill_inputs)


def batch_prefill(inputs: Sequence[dict], lengths: Sequence[int], width: int, device, first: int = 0) -> dict:
    """One kwargs dict for a chunk's prefill forward (see the module docstring for the per-key rule).
    lengths: each prompt's length; width: the padded length P; first: the chunk's first prompt (messages)."""
    batched = {}
    for key in dict.fromkeys(k for extra in inputs for k in extra):  # a text-only prompt may lack image keys
        values = [extra[key] for extra in inputs if key in extra]
        if key in PER_TOKEN_KEYS:
            padded = torch.zeros(len(inputs), width, dtype=torch.int64, device=device)
            for i, (extra, length) in enumerate(zip(inputs, lengths)):
                if key not in extra:
                    continue  # 0 = text
                value = torch.as_tensor(extra[key]).reshape(-1)
                if value.numel() != length:
                    raise ValueError(f"prefill_inputs[{first + i}][{key!r}] has {value.numel()} entries for a "
                                     f"prompt of {length} tokens")
                padded[i, width - length:] = value.to(device)
            batched[key] = padded
        elif all(isinstance(v, Tensor) for v in values):
            batched[key] = torch.cat([v.to(device) for v in values], 0)
        elif any(isinstance(v, Tensor) for v in values):
            raise TypeError(f"prefill_inputs[*][{key!r}] mixes tensors and other values")
        else:
            if any(v != values[0] for v in values[1:]):
                raise ValueError(f"prefill_inputs[*][{key!r}] is not a tensor and differs between prompts of a "
                                 f"chunk; only tensors are batched")
            batched[key] = values[0]
    return batched


def _rope_index_owner(model):
    """The submodule whose class defines get_rope_index (looked up on the class: PEFT wrappers forward
    attribute lookups, which would find it on the wrong object)."""
    for module in model.modules():
        if callable(getattr(type(module), "get_rope_index", None)):
            return module
    raise ValueError(f"{type(model).__name__} has no get_rope_index: cannot build its M-RoPE positions")


class MRopePositions:
    """Qwen2-VL / Qwen2.5-VL positions through the model's get_rope_index (see the module docstring)."""

    def __init__(self, model):
        config = model.config
        self._owner = _rope_index_owner(model)
        self.image_token_id = getattr(config, "image_token_id", None)
        self.video_token_id = getattr(config, "video_token_id", None)

    def token_types(self, ids: Tensor, mask: Tensor) -> Tensor:
        """mm_token_type_ids [B, P]: 1 on image placeholders, 2 on video ones, 0 elsewhere."""
        types = torch.zeros_like(ids)
        if self.image_token_id is not None:
            types.masked_fill_(ids == self.image_token_id, 1)
        if self.video_token_id is not None:
            types.masked_fill_(ids == self.video_token_id, 2)
        return types.masked_fill_(~mask.bool(), 0)

    def prefill(self, ids: Tensor, mask: Tensor, extras: dict) -> tuple[Tensor, Tensor]:
        """ids, mask [B, P] left-padded prompts; extras: the chunk's batched prefill kwargs.
        Returns (positions [3, B, P] int64, delta [B] int64: decode position = cumsum position + delta)."""
        types = extras.get("mm_token_type_ids")
        if types is None:
            types = self.token_types(ids, mask)
        kwargs = {k: extras[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in extras}
        positions, delta = self._owner.get_rope_index(ids, types, attention_mask=mask.long(), **kwargs)
        return positions.to(torch.int64), delta.reshape(-1).to(device=ids.device, dtype=torch.int64)


def position_scheme(model) -> MRopePositions | None:
    """The model's own position scheme when it is not cumsum(mask) - 1 (None: the cumsum default)."""
    if getattr(model.config, "model_type", None) in MROPE_MODELS:
        return MRopePositions(model)
    return None
