"""Left padding and the position convention shared by the sampler, the trainer's log-prob forward and
the HF critic. They must agree exactly for the sampler's log-probs to be the trainer's: positions are
cumsum(mask) - 1 (HF generate's convention), 0 on padding."""
from __future__ import annotations

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
