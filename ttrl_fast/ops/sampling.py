"""`ttrl_fast::sample_tokens`: the torch.library op behind `ttrl_fast.sample_tokens` and the rollout
sampler's decode step (raw contract in ttrl_fast/kernels/__init__.py; no gradient)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ttrl_fast import backends


@torch.library.custom_op("ttrl_fast::sample_tokens", mutates_args=())
def sample_tokens(
    logits: Tensor,  # [R, V], stride(-1) == 1
    row_keys: Tensor,  # [R] int64 in [0, 2^32)
    step: int,
    seen: Optional[Tensor],  # [R, V] bool
    ban_ids: Optional[Tensor],  # [S] int64
    iparams: list[int],  # greedy, top_k
    fparams: list[float],  # inv_temperature, top_p, min_p, repetition_penalty
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    impl = backends.select("sample_tokens", logits.device, logits.dtype, backend or None)
    return impl.fwd(logits, row_keys, step, seen, ban_ids, list(iparams), list(fparams))


@sample_tokens.register_fake
def _(logits, row_keys, step, seen, ban_ids, iparams, fparams, backend):
    rows = logits.shape[0]
    floats = [logits.new_empty((rows,), dtype=torch.float32) for _ in range(3)]
    return (logits.new_empty((rows,), dtype=torch.int64), *floats)
