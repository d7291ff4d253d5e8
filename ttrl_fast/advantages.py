"""`ttrl_fast.group_advantages`: group-relative advantages (GRPO, Dr. GRPO, RLOO) in one fused
segmented reduction per backend."""
from __future__ import annotations

import torch
from torch import Tensor

from ttrl_fast import _validation as v
from ttrl_fast.ops import policy_loss as _ops
from ttrl_fast.reference.advantages import MODES

_MODE_CODES = {name: code for code, name in enumerate(MODES)}


def _groups(n: int, group_size: int | None, group_ids: Tensor | None, device) -> tuple[Tensor, Tensor, Tensor]:
    """(perm [N], offsets [G + 1], group_keys [G]): members of group g are perm[offsets[g]:offsets[g + 1]]."""
    if (group_size is None) == (group_ids is None):
        raise ValueError("pass exactly one of group_size (contiguous blocks, TRL) or group_ids (verl uid)")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if n % group_size:
            raise ValueError(f"group_size={group_size} must divide the number of rewards {n} (rewards of shape ({n},))")
        perm = torch.arange(n, device=device)
        offsets = torch.arange(0, n + 1, group_size, device=device)
        return perm, offsets, torch.arange(n // group_size, device=device)
    v.check_integer("group_ids", group_ids)
    if group_ids.shape != (n,):
        raise ValueError(f"group_ids must have the shape of rewards ({n},), got {tuple(group_ids.shape)}")
    keys, inverse, counts = torch.unique(group_ids.to(device), return_inverse=True, return_counts=True)
    perm = torch.argsort(inverse, stable=True)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return perm, offsets, keys


def group_advantages(
    rewards: Tensor,
    *,
    group_size: int | None = None,
    group_ids: Tensor | None = None,
    mode: str = "group",
    std_correction: int = 1,
    eps: float = 1e-4,
    backend: str | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Group-relative advantages of one reward per sample.

    Args:
        rewards: [N] float; NaN (or +-inf) marks an unscorable sample (excluded from the statistics,
            advantage 0).
        group_size: samples form contiguous groups of this size (TRL's layout: prompt-major, G per prompt).
        group_ids: [N] integer group id per sample (verl's uid), in any order. Exactly one of the two.
        mode: "group" (r - mean_g) / (std_g + eps) (TRL default), "batch" (group mean, batch std),
            "none" r - mean_g (Dr. GRPO), "rloo" r - mean of the other members.
        std_correction: Bessel correction of the std (1 = unbiased, TRL and verl; 0 = population).
        eps: added to the std.
    Returns:
        advantages [N] float32, and stats: "mean", "std", "count" per group [G] (group order: group_ids
        sorted, or block order), "group_ids" [G], "frac_zero_std" (fraction of groups whose std is ~0,
        TRL's isclose), "batch_std" (mode="batch").
    """
    v.check_tensor("rewards", rewards)
    if not rewards.dtype.is_floating_point or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D float tensor, got dtype {rewards.dtype} shape {tuple(rewards.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if std_correction not in (0, 1):
        raise ValueError(f"std_correction must be 0 or 1, got {std_correction!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    values = rewards.detach().float()
    # +-inf (an overflowing reward) is as unscorable as NaN: it would make its group's mean and std
    # infinite and erase every member's advantage. The kernels' contract knows only NaN.
    values = torch.where(torch.isinf(values), float("nan"), values).contiguous()
    n = values.numel()
    if group_ids is not None:
        v.check_tensor("group_ids", group_ids)
        v.check_same_device(rewards=rewards, group_ids=group_ids)
    perm, offsets, keys = _groups(n, group_size, group_ids, values.device)
    batch_std = float("nan")
    if mode == "batch":  # the whole batch as one segment: its std
        whole = torch.tensor([0, n], device=values.device)
        _, batch_stats = _ops.group_advantages_fwd(values, torch.arange(n, device=values.device), whole,
                                                   _MODE_CODES["none"], std_correction, eps, batch_std, backend or "")
        batch_std = float(batch_stats[0, 2])
    advantages, stats = _ops.group_advantages_fwd(values, perm.contiguous(), offsets.contiguous(), _MODE_CODES[mode],
                                                  std_correction, float(eps), batch_std, backend or "")
    std = stats[:, 2]
    info = {
        "count": stats[:, 0], "mean": stats[:, 1], "std": std, "group_ids": keys,
        "frac_zero_std": torch.isclose(std, torch.zeros_like(std)).float().mean(),
        "batch_std": torch.tensor(batch_std),
    }
    return advantages, info
