"""`ttrl_fast.sample_tokens`: one fused sampling step (penalty -> temperature -> top-k -> top-p -> min-p
-> exponential race) returning the token and its raw and processed log-probs; and the row keys that
make draws independent of batch composition."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ttrl_fast import _validation as v
from ttrl_fast.ops import sampling as _ops
from ttrl_fast.reference.sampling import GOLDEN, MASK32, mix32_int


class SampledTokens(NamedTuple):
    tokens: Tensor  # [R] int64
    logprobs: Tensor  # [R] fp32 raw: log_softmax(logits / T)[token] over the full vocabulary
    processed_logprobs: Tensor  # [R] fp32: log-prob under the distribution actually sampled from
    log_kept_mass: Tensor  # [R] fp32: log of the probability mass truncation kept (0 = nothing cut)


def prompt_key(prompt: Sequence[int]) -> int:
    """A 32-bit key of a prompt's token ids (stable across processes, unlike hash())."""
    key = mix32_int(len(prompt) + GOLDEN)
    for token in prompt:
        key = mix32_int(key ^ (int(token) & MASK32))
    return key


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The noise key of sample `sample` of the prompt keyed `prompt` under `seed`."""
    key = mix32_int((seed & MASK32) ^ mix32_int((seed >> 32) & MASK32))
    key = mix32_int(key ^ prompt)
    return mix32_int(key ^ mix32_int(sample + GOLDEN))


def kernel_params(*, temperature: float, top_k: int, top_p: float, min_p: float, repetition_penalty: float,
                  vocab: int) -> tuple[list[int], list[float]]:
    """The raw contract's (iparams, fparams): temperature 0 is greedy, top_k <= 0 or >= V is off."""
    greedy = temperature == 0
    iparams = [int(greedy), top_k if 0 < top_k < vocab else 0]
    fparams = [1.0 if greedy else 1.0 / temperature, float(top_p), float(min_p), float(repetition_penalty)]
    return iparams, fparams


def sample_tokens(
    logits: Tensor,
    *,
    row_keys: Tensor,
    step: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seen: Tensor | None = None,
    ban_ids: Tensor | None = None,
    backend: str | None = None,
) -> SampledTokens:
    """Draw one token per row.

    Args:
        logits: [R, V] float32/bfloat16/float16 next-token logits (stride(-1) == 1).
        row_keys: [R] int64 noise keys in [0, 2^32) (see row_key); equal keys and step give equal draws.
        step: the decode step, mixed into the noise.
        temperature: 0 = greedy (argmax; log-probs untempered).
        top_k / top_p / min_p: truncation, 0 / 1 / 0 = off; ties are kept or cut together.
        repetition_penalty: applied to the tokens marked in `seen` [R, V] bool (HF's rule).
        ban_ids: [S] token ids that cannot be drawn (min_tokens); the raw log-prob ignores the ban.
    Returns:
        SampledTokens(tokens [R] int64, logprobs [R], processed_logprobs [R], log_kept_mass [R]) fp32.
        A row holding NaN or +inf logits gives NaN log-probs (its token, drawn from the other entries,
        is still in [0, V)), on every backend.
    """
    v.check_tensor("logits", logits, allowed=v.FLOAT_DTYPES, kind="float32, bfloat16 or float16")
    if logits.dim() != 2 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [R, V] with V >= 1, got shape {tuple(logits.shape)}")
    rows, vocab = logits.shape
    v.check_integer("row_keys", row_keys)
    if row_keys.shape != (rows,):
        raise ValueError(f"row_keys must be [R] = ({rows},), got shape {tuple(row_keys.shape)}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    temperature = v.check_positive_finite("temperature", temperature, allow_zero=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        raise ValueError(f"top_k must be an int >= -1 (0 or -1 = off), got {top_k!r}")
    if not 0 < v.check_real("top_p", top_p) <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not 0 <= v.check_real("min_p", min_p) <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    repetition_penalty = v.check_positive_finite("repetition_penalty", repetition_penalty)
    if seen is not None:
        v.check_tensor("seen", seen, allowed=(torch.bool,), kind="a bool tensor")
        if seen.shape != logits.shape:
            raise ValueError(f"seen must have the shape of logits {tuple(logits.shape)}, got {tuple(seen.shape)}")
        seen = seen.contiguous()
    if ban_ids is not None:
        v.check_integer("ban_ids", ban_ids)
        if ban_ids.dim() != 1:
            raise ValueError(f"ban_ids must be 1-D, got shape {tuple(ban_ids.shape)}")
    # devices first: the range checks below read values (.item())
    v.check_same_device(logits=logits, row_keys=row_keys, seen=seen, ban_ids=ban_ids)
    if rows and (int(row_keys.min()) < 0 or int(row_keys.max()) > MASK32):
        raise ValueError("row_keys must hold values in [0, 2^32)")
    if ban_ids is not None:
        if ban_ids.numel() and (int(ban_ids.min()) < 0 or int(ban_ids.max()) >= vocab):
            raise ValueError(f"ban_ids must be in [0, V={vocab}), got values in "
                             f"[{int(ban_ids.min())}, {int(ban_ids.max())}]")
        ban_ids = ban_ids.to(dtype=torch.int64).contiguous()
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    iparams, fparams = kernel_params(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                     repetition_penalty=repetition_penalty, vocab=vocab)
    out = _ops.sample_tokens(logits, row_keys.to(torch.int64).contiguous(), step, seen, ban_ids, iparams, fparams,
                             backend or "")
    return SampledTokens(*out)
