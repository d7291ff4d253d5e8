"""The public ops: typed, keyword-only hyperparameters, validated inputs, backend dispatch."""
from __future__ import annotations

import torch
from torch import Tensor

from ttrl_fast import _validation as v
from ttrl_fast.ops import selective_log_softmax as _sls_op


def _as_rows(logits: Tensor) -> Tensor:
    """A [A, B, V] view of logits [..., V] with stride(-1) == 1, copying only when no view exists.
    Slices such as logits[:, :-1, :] stay views: rows are addressed as a * stride0 + b * stride1."""
    if logits.dim() > 1 and logits.stride(-1) != 1 and logits.shape[-1] > 1:
        logits = logits.contiguous()
    v_size = logits.shape[-1]
    inner = logits.shape[-2] if logits.dim() >= 2 else 1
    if logits.numel() == 0 or inner == 0:  # no rows (or V = 0, refused earlier by the index check)
        return logits.reshape(1, logits.shape[:-1].numel(), v_size)
    try:
        return logits.view(-1, inner, v_size)
    except RuntimeError:  # leading dims that cannot be merged into one stride
        return logits.contiguous().view(-1, inner, v_size)


def selective_log_softmax(
    logits: Tensor,
    index: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    return_entropy: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probabilities of `index` under softmax(logits / temperature), without materialising log_softmax.

    Args:
        logits: [..., V] float32, bfloat16 or float16. Any strides with stride(-1) == 1 are read in
            place (e.g. ``logits[:, :-1]``); others are copied once.
        index: [...] integer token ids in [0, V) (positions where ``mask`` is False are not read).
        temperature: > 0, a runtime scalar (a new value never recompiles anything).
        mask: [...] bool (or 0/1 integer) or None. False positions give 0, a zero gradient and no
            vocabulary pass.
        return_entropy: also return the entropy of softmax(logits / temperature) per position.
        backend: None (automatic: cpp on CPU, cuda -> triton on GPU, reference as the fallback),
            or "reference" | "cpp" | "triton" | "cuda" to force one (raises with the reasons if it
            cannot run). ``ttrl_fast.use_backend`` and TTRL_FAST_BACKEND set it too.

    Returns:
        logp [...] float32 (<= 0), and entropy [...] float32 (>= 0) if ``return_entropy``. Both are
        differentiable w.r.t. logits; the backward reads the logits once and returns a fresh
        gradient. NaN or +inf in an unmasked row gives NaN there, never a plausible number.

    Raises:
        ValueError / IndexError / TypeError naming the argument for bad input;
        ttrl_fast.BackendUnavailableError when the requested backend cannot run.
    """
    v.check_tensor("logits", logits, allowed=v.FLOAT_DTYPES, kind="float32, bfloat16 or float16")
    v.check_integer("index", index)
    if logits.dim() == 0:
        raise ValueError("logits must have shape [..., V], got a 0-dim tensor")
    if index.shape != logits.shape[:-1]:
        raise ValueError(
            f"index must have the leading shape of logits {tuple(logits.shape[:-1])} (logits {tuple(logits.shape)}), "
            f"got {tuple(index.shape)}")
    inv_temperature = 1.0 / v.check_positive_finite("temperature", temperature)
    mask = v.check_mask(mask, index.shape, like="index")
    v.check_same_device(logits=logits, index=index, mask=mask)
    v.check_index_range(index, mask, logits.shape[-1])

    rows = _as_rows(logits)
    flat_index = index.reshape(-1).to(torch.int64).contiguous()
    flat_mask = None if mask is None else mask.reshape(-1).contiguous()
    logp, entropy, _ = _sls_op.selective_log_softmax_fwd(
        rows, flat_index, flat_mask, inv_temperature, bool(return_entropy), backend or "")
    logp = logp.view(index.shape)
    if return_entropy:
        return logp, entropy.view(index.shape)
    return logp
