"""Selective log-softmax: the spec (plain autograd) and the reference backend (explicit fwd/bwd).

For logits x [..., V], temperature T and an index y [...]:
    z = x / T,   logp = log_softmax(z)[y],   entropy = -sum_v p_v log p_v   (p = softmax(z))
    d logp / d x_v    = (1[v = y] - p_v) / T
    d entropy / d x_v = -p_v (log p_v + entropy) / T
Entries with x_v = -inf have p_v = 0 and contribute 0 (never 0 * -inf = NaN). Positions where the
mask is False give 0 and a zero gradient. NaN or +inf in an unmasked row gives NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Rows per block of the reference backend: bounds its temporaries to about 64 MiB of fp32.
_BLOCK_ELEMENTS = 1 << 24


def selective_log_softmax(
    logits: Tensor,
    index: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The spec, differentiable by plain autograd. Computes in float64 for float64 logits, else float32.

    Args:
        logits: [..., V] floating point.
        index:  [...] integer in [0, V) where mask is True.
        mask:   [...] bool or None.
    Returns:
        logp [...] (and entropy [...] if return_entropy), in the compute dtype.
    """
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if mask is not None:
        mask = mask.bool()
        index = torch.where(mask, index, torch.zeros_like(index))  # masked slots may hold -100 etc.
    logp_all = torch.log_softmax(logits.to(compute) / temperature, dim=-1)  # [..., V]
    logp = logp_all.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)  # [...]
    if mask is not None:
        logp = torch.where(mask, logp, torch.zeros_like(logp))
    if not return_entropy:
        return logp
    p = logp_all.exp()
    # where() before the product: p * (-inf) would make NaN values *and* NaN gradients.
    safe_logp = torch.where(p > 0, logp_all, torch.zeros_like(logp_all))
    entropy = -(p * safe_logp).sum(-1)  # [...]
    if mask is not None:
        entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
    return logp, entropy


def _row_blocks(logits: Tensor):
    """Yields (first_row, rows [n, V] view) over a [A, B, V] tensor without copying it."""
    a_dim, b_dim, v = logits.shape
    step = max(1, _BLOCK_ELEMENTS // max(v, 1))
    for a in range(a_dim):
        for b0 in range(0, b_dim, step):
            yield a * b_dim + b0, logits[a, b0 : b0 + step]


def selective_log_softmax_fwd(
    logits: Tensor, index: Tensor, mask: Tensor | None, inv_temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference backend forward (raw contract in ttrl_fast/kernels/__init__.py), in blocks of rows."""
    n = logits.shape[0] * logits.shape[1]
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=logits.device)
    stats = torch.empty(n, 2, dtype=torch.float32, device=logits.device)
    v = logits.shape[-1]
    for r0, rows in _row_blocks(logits):
        r1 = r0 + rows.shape[0]
        x = rows.float()  # [n, V]
        row_max = x.amax(-1, keepdim=True)  # [n, 1]; NaN propagates
        d = (x - row_max) * inv_temperature  # relative to the raw max: exact for large offsets
        e = d.exp()
        log_sum = e.sum(-1).log()  # [n]
        y = index[r0:r1]
        ok = (y >= 0) & (y < v)
        d_y = d.gather(-1, y.clamp(0, max(v - 1, 0)).unsqueeze(-1)).squeeze(-1)
        lp = torch.where(ok, (d_y - log_sum).clamp(max=0.0), torch.full_like(log_sum, float("nan")))
        logp[r0:r1] = lp  # clamp(max=0) keeps NaN
        stats[r0:r1, 0] = row_max.squeeze(-1)
        stats[r0:r1, 1] = log_sum
        if with_entropy:
            w = torch.where(e > 0, e * d, torch.zeros_like(d)).sum(-1)
            entropy[r0:r1] = (log_sum - w / e.sum(-1)).clamp(min=0.0)
    if mask is not None:
        logp.masked_fill_(~mask, 0.0)
        stats.masked_fill_(~mask.unsqueeze(-1), 0.0)
        if with_entropy:
            entropy.masked_fill_(~mask, 0.0)
    return logp, entropy, stats


def selective_log_softmax_bwd(
    grad_logp: Tensor | None,
    grad_entropy: Tensor | None,
    logits: Tensor,
    index: Tensor,
    mask: Tensor | None,
    stats: Tensor,
    entropy: Tensor,
    inv_temperature: float,
) -> Tensor:
    """Reference backend backward: a fresh [A, B, V] gradient in logits.dtype."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    flat = grad.view(-1, logits.shape[-1])
    v = logits.shape[-1]
    for r0, rows in _row_blocks(logits):
        r1 = r0 + rows.shape[0]
        lp = (rows.float() - stats[r0:r1, :1]) * inv_temperature - stats[r0:r1, 1:]  # log p_v, [n, V]
        p = lp.exp()
        g = torch.zeros_like(p)
        if grad_logp is not None:
            g_logp = grad_logp[r0:r1].unsqueeze(-1)  # [n, 1]
            g -= g_logp * p
            y = index[r0:r1].clamp(0, max(v - 1, 0)).unsqueeze(-1)
            g.scatter_add_(-1, y, g_logp)
        if grad_entropy is not None:
            h = entropy[r0:r1].unsqueeze(-1)
            g -= grad_entropy[r0:r1].unsqueeze(-1) * torch.where(p > 0, p * (lp + h), torch.zeros_like(p))
        g *= inv_temperature
        if mask is not None:
            g.masked_fill_(~mask[r0:r1].unsqueeze(-1), 0.0)
        flat[r0:r1] = g.to(logits.dtype)
    return grad
