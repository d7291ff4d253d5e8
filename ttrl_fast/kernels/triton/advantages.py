"""Triton backend of ``group_advantages`` (raw contract: ``ttrl_fast/kernels/__init__.py``).

One program per group g, whose members are rewards[perm[offsets[g]:offsets[g+1]]], looping over
them in BLOCK chunks (a group may be larger than one chunk). The numerics mirror segment_stats and
advantage_of of ``csrc/include/ttrl_fast/policy_loss_math.h``: two fp32 passes (count and sum,
then the centred second moment) with NaN rewards excluded, then one pass writing the advantages.
The mode is constexpr (it selects the formula); the correction, eps and batch std are runtime.

Self-contained on purpose (torch + triton only): ttrl_fast imports it only when triton imports.
"""

import torch
import triton
import triton.language as tl

ADV_GROUP, ADV_BATCH, ADV_NONE, ADV_RLOO = 0, 1, 2, 3

_GPU_MAX_BLOCK = 256
# Under TRITON_INTERPRET=1 small chunks keep the multi-chunk path exercised by tiny test groups.
_INTERPRET_MAX_BLOCK = 4


# Bytes per group of n members: reads 16 (offsets) + 3 passes x n x (8 perm + 4 reward, a gather);
# writes n x 4 (advantages, a scatter) + 12 (group_stats).
@triton.jit
def _group_advantages_kernel(
    adv_ptr,  # [N] fp32 out
    stats_ptr,  # [G, 3] fp32 out: (count, mean, std)
    rewards_ptr,  # [N] fp32, NaN = excluded
    perm_ptr,  # [N] int64
    offsets_ptr,  # [G + 1] int64
    correction,  # runtime int (Bessel correction of the std)
    eps,  # runtime float
    batch_std,  # runtime float (MODE == 1)
    MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    corr = tl.cast(correction, tl.float32)
    eps = tl.cast(eps, tl.float32)
    batch_std = tl.cast(batch_std, tl.float32)
    g = tl.program_id(0).to(tl.int64)
    begin = tl.load(offsets_ptr + g)
    end = tl.load(offsets_ptr + g + 1)

    # Pass 1: count and sum of the non-NaN members (padding lanes read NaN: excluded too).
    count = tl.zeros((), tl.float32)
    total = tl.zeros((), tl.float32)
    for start in range(begin, end, BLOCK):
        j = start + tl.arange(0, BLOCK)
        valid = j < end
        idx = tl.load(perm_ptr + j, mask=valid, other=0)
        r = tl.load(rewards_ptr + idx, mask=valid, other=float("nan"))
        ok = r == r
        count += tl.sum(ok.to(tl.float32), axis=0)
        total += tl.sum(tl.where(ok, r, 0.0), axis=0)
    has = count > 0.0
    mean = tl.where(has, total / tl.where(has, count, 1.0), float("nan"))

    # Pass 2: centred second moment.
    m2 = tl.zeros((), tl.float32)
    for start in range(begin, end, BLOCK):
        j = start + tl.arange(0, BLOCK)
        valid = j < end
        idx = tl.load(perm_ptr + j, mask=valid, other=0)
        r = tl.load(rewards_ptr + idx, mask=valid, other=float("nan"))
        d = tl.where(r == r, r - mean, 0.0)
        m2 += tl.sum(d * d, axis=0)
    defined = count > corr
    std = tl.where(defined, tl.sqrt(m2 / tl.where(defined, count - corr, 1.0)), float("nan"))

    # Pass 3: advantage_of per member; NaN results (NaN reward, undefined std) become 0.
    for start in range(begin, end, BLOCK):
        j = start + tl.arange(0, BLOCK)
        valid = j < end
        idx = tl.load(perm_ptr + j, mask=valid, other=0)
        r = tl.load(rewards_ptr + idx, mask=valid, other=float("nan"))
        if MODE == 0:
            a = (r - mean) / (std + eps)
        elif MODE == 1:
            a = (r - mean) / (batch_std + eps)
        elif MODE == 2:
            a = r - mean
        else:  # leave-one-out: n / (n - 1) (r - mean)
            many = count > 1.0
            a = tl.where(many, count / tl.where(many, count - 1.0, 1.0) * (r - mean), 0.0)
        a = tl.where(a == a, a, 0.0)
        tl.store(adv_ptr + idx, a, mask=valid)

    tl.store(stats_ptr + 3 * g, count)
    tl.store(stats_ptr + 3 * g + 1, mean)
    tl.store(stats_ptr + 3 * g + 2, std)


def group_advantages_fwd(rewards, perm, offsets, mode: int, std_correction: int, eps: float, batch_std: float):
    """Returns (advantages [N] fp32, group_stats [G, 3] fp32: count, mean, std)."""
    mode = int(mode)
    if mode not in (ADV_GROUP, ADV_BATCH, ADV_NONE, ADV_RLOO):
        raise ValueError(f"unknown advantage mode {mode}")
    if rewards.dim() != 1 or perm.dim() != 1 or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("rewards, perm must be [N] and offsets [G + 1]")
    rewards = rewards.to(torch.float32).contiguous()
    perm = perm.to(torch.int64).contiguous()
    offsets = offsets.to(torch.int64).contiguous()
    N = rewards.numel()
    G = offsets.numel() - 1
    dev = rewards.device
    advantages = torch.zeros(N, dtype=torch.float32, device=dev)  # members of no group stay 0
    stats = torch.empty((G, 3), dtype=torch.float32, device=dev)
    if G == 0:
        return advantages, stats
    cap = _GPU_MAX_BLOCK if rewards.is_cuda else _INTERPRET_MAX_BLOCK
    block = min(triton.next_power_of_2(max(N, 1)), cap)
    _group_advantages_kernel[(G,)](
        advantages,
        stats,
        rewards,
        perm,
        offsets,
        int(std_correction),
        float(eps),
        float(batch_std),
        MODE=mode,
        BLOCK=block,
        num_warps=1 if block <= 128 else 2,
    )
    return advantages, stats
