"""Left padding and the position convention shared by the sampler, the trainer's log-prob forward and
the HF critic. They must agree exactly for the sampler's log-probs to be the trainer's: positions are
cumsum(mask) - 1 (HF generate's convention), 0 on padding. Also the prompt-id checks both samplers share."""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import Tensor


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """(ids [len(rows), longest] int64, mask of the same shape, bool): rows right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.int64, device=device)
        mask[i, width - len(row):] = True
    return ids, mask


def positions_from_mask(mask: Tensor) -> Tensor:
    """int64 position ids: cumsum(mask) - 1 along the last dim, clamped to 0 on leading padding."""
    return (mask.long().cumsum(-1) - 1).clamp_(min=0)


def check_prompt_ids(prompts, *, vocab_size: int, max_seq_len: int, room: int, room_name: str,
                     vocab_name: str = "vocab_size") -> list[list[int]]:
    """Prompts as lists of ints, each non-empty, ids in [0, vocab_size) and short enough that `room`
    more positions (the tokens to generate) fit in max_seq_len; clear errors naming the prompt."""
    if isinstance(prompts, Tensor) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    checked = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)):  # text: not tokenized
            raise TypeError(f"prompts[{i}] must be a list of int token ids, got {type(prompt).__name__} "
                            f"(tokenize the text first)")
        if not isinstance(prompt, Sequence) or len(prompt) == 0:
            raise ValueError(f"prompts[{i}] must be a non-empty list of token ids")
        for t in prompt:  # int() would truncate 1.7 to 1: a silently different prompt
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise TypeError(f"prompts[{i}] must be a list of int token ids, got a {type(t).__name__} ({t!r})")
        ids = [int(t) for t in prompt]
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"prompts[{i}] has token ids outside [0, {vocab_name}={vocab_size})")
        if len(ids) + room > max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} is too small for prompts[{i}] of length {len(ids)} "
                             f"plus {room_name}={room}")
        checked.append(ids)
    return checked
