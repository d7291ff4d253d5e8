"""Group-relative advantages: the spec (a plain loop over groups) and the reference backend
(vectorised). TRL 1.16 semantics (`_generate_and_score_completions`, sum_then_normalize):

    group:  A = (r - mean_g) / (std_g + eps)      std with Bessel-style `std_correction` (TRL: 1)
    batch:  A = (r - mean_g) / (std_batch + eps)  std over the whole batch
    none:   A = r - mean_g                        (Dr. GRPO)
    rloo:   A = r - mean of the group's others = n / (n - 1) (r - mean_g)
NaN rewards (unscorable) are excluded from every statistic and get A = 0; so does anything whose
statistic is undefined (a singleton group's std, a group with no scorable member). ttrl_fast.group_advantages
passes +-inf rewards as NaN: an overflowing reward is unscorable too.
"""
from __future__ import annotations

import torch
from torch import Tensor

MODES = ("group", "batch", "none", "rloo")


def _stats(values: Tensor, correction: int) -> tuple[Tensor, Tensor, Tensor]:
    """(count, mean, std) of the non-NaN values (NaN mean / std when undefined)."""
    kept = values[~torch.isnan(values)]
    count = torch.tensor(float(kept.numel()), dtype=values.dtype)
    mean = kept.mean() if kept.numel() else torch.tensor(float("nan"), dtype=values.dtype)
    if kept.numel() > correction:
        std = ((kept - mean) ** 2).sum().div(kept.numel() - correction).sqrt()
    else:
        std = torch.tensor(float("nan"), dtype=values.dtype)
    return count, mean, std


def group_advantages(rewards: Tensor, group_index: Tensor, num_groups: int, *, mode: str = "group",
                     std_correction: int = 1, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """The spec. rewards [N], group_index [N] in [0, num_groups). Returns (advantages [N],
    group_stats [num_groups, 3] = (count, mean, std))."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    advantages = torch.zeros_like(rewards)
    stats = torch.zeros(num_groups, 3, dtype=rewards.dtype)
    batch_std = _stats(rewards, std_correction)[2]
    for g in range(num_groups):
        members = (group_index == g).nonzero().flatten()
        count, mean, std = _stats(rewards[members], std_correction)
        stats[g] = torch.stack([count, mean, std])
        r = rewards[members]
        if mode == "group":
            a = (r - mean) / (std + eps)
        elif mode == "batch":
            a = (r - mean) / (batch_std + eps)
        elif mode == "none":
            a = r - mean
        else:
            a = count / (count - 1) * (r - mean) if count > 1 else torch.zeros_like(r)
        advantages[members] = torch.where(torch.isnan(a), 0.0, a)
    return advantages, stats


def group_advantages_fwd(rewards: Tensor, perm: Tensor, offsets: Tensor, mode: int, std_correction: int, eps: float,
                         batch_std: float) -> tuple[Tensor, Tensor]:
    """Reference backend (raw contract in ttrl_fast/kernels/__init__.py), vectorised with scatter-adds."""
    n, groups = rewards.numel(), offsets.numel() - 1
    counts_all = offsets[1:] - offsets[:-1]  # [G]
    seg = torch.repeat_interleave(torch.arange(groups, device=rewards.device), counts_all)  # group of perm[j]
    values = rewards[perm]
    valid = ~torch.isnan(values)
    zero = torch.zeros(groups, dtype=rewards.dtype, device=rewards.device)
    count = zero.scatter_add(0, seg, valid.to(rewards.dtype))
    total = zero.scatter_add(0, seg, torch.where(valid, values, 0.0))
    mean = torch.where(count > 0, total / count, torch.full_like(total, float("nan")))
    dev = torch.where(valid, values - mean[seg], 0.0)
    m2 = zero.scatter_add(0, seg, dev * dev)
    std = torch.where(count > std_correction, (m2 / (count - std_correction)).sqrt(), torch.full_like(m2, float("nan")))
    if mode == 0:
        a = (values - mean[seg]) / (std[seg] + eps)
    elif mode == 1:
        a = (values - mean[seg]) / (batch_std + eps)
    elif mode == 2:
        a = values - mean[seg]
    else:
        c = count[seg]
        a = torch.where(c > 1, c / (c - 1) * (values - mean[seg]), 0.0)
    advantages = torch.empty(n, dtype=rewards.dtype, device=rewards.device)
    advantages[perm] = torch.where(torch.isnan(a), 0.0, a)
    return advantages, torch.stack([count, mean, std], dim=1)
