"""Test utilities shipped with the package, so embedders can check their own use of the ops the way
our test-suite does: random inputs with the hard cases, and the error measures we assert on."""
from __future__ import annotations

import torch
from torch import Tensor

# fp32 kernels against a float64 evaluation of the reference (relative to the output's scale).
FP32_RTOL = 1e-5


def make_logits(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    offset: float = 0.0,
    scale: float = 3.0,
    neg_inf_fraction: float = 0.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Random logits [..., V] = scale * N(0, 1) + offset, with a fraction of entries set to -inf
    (never a whole row: the first entry of every row stays finite)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset
    if neg_inf_fraction > 0 and shape[-1] > 1:
        drop = torch.rand(shape, generator=generator) < neg_inf_fraction
        drop[..., 0] = False
        x = x.masked_fill(drop, float("-inf"))
    return x.to(device=device, dtype=dtype)


def make_index(logits: Tensor, *, avoid_neg_inf: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Random token ids [...] in [0, V); by default never pointing at a -inf logit."""
    v = logits.shape[-1]
    idx = torch.randint(0, v, logits.shape[:-1], generator=generator)
    if avoid_neg_inf:
        finite = torch.isfinite(logits.detach().cpu().float())
        bad = ~finite.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        idx = torch.where(bad, torch.zeros_like(idx), idx)  # entry 0 is always finite
    return idx.to(logits.device)


def scaled_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|): the relative error at the output's scale,
    which stays meaningful where individual entries are ~0 (log-probs of certain tokens)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    if actual.numel() == 0:
        return 0.0
    diff = (actual - expected).abs().max().item()
    return diff / max(1.0, expected.abs().max().item())
