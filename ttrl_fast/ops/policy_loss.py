"""`ttrl_fast::policy_loss_fwd` and `ttrl_fast::group_advantages_fwd`: the torch.library ops behind
ttrl_fast.policy_loss / grpo_loss / group_advantages (kernel-shaped inputs; the raw contracts are in
ttrl_fast/kernels/__init__.py). The backend is chosen inside the op body."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ttrl_fast import backends

SEQ_STATS = 18


@torch.library.custom_op("ttrl_fast::policy_loss_fwd", mutates_args=())
def policy_loss_fwd(
    logp: Tensor,  # [B, T] fp32
    old_logp: Optional[Tensor],
    advantages: Tensor,  # [B, Ta]
    mask: Tensor,  # [B, T] fp32
    ref_logp: Optional[Tensor],
    rollout_is_ratio: Optional[Tensor],  # [B, Tr]
    entropy: Optional[Tensor],
    iparams: list[int],
    fparams: list[float],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (loss [], d loss / d logp [B, T], seq_stats [B, 18])."""
    impl = backends.select("policy_loss", logp.device, logp.dtype, backend or None)
    grad, stats = impl.fwd(logp, old_logp, advantages, mask, ref_logp, rollout_is_ratio, entropy, iparams, fparams)
    return stats[:, 0].sum(), grad, stats  # a fixed-order sum: deterministic


@policy_loss_fwd.register_fake
def _(logp, old_logp, advantages, mask, ref_logp, rollout_is_ratio, entropy, iparams, fparams, backend):
    return logp.new_empty(()), torch.empty_like(logp), logp.new_empty((logp.shape[0], SEQ_STATS))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_grad, _grad_stats):
    (grad_logp,) = ctx.saved_tensors
    g = None if grad_loss is None else grad_loss * grad_logp  # the loss is linear in its upstream scale
    return g, None, None, None, None, None, None, None, None, None


policy_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("ttrl_fast::group_advantages_fwd", mutates_args=())
def group_advantages_fwd(
    rewards: Tensor,  # [N] fp32
    perm: Tensor,  # [N] int64
    offsets: Tensor,  # [G + 1] int64
    mode: int,
    std_correction: int,
    eps: float,
    batch_std: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Returns (advantages [N], group_stats [G, 3] = (count, mean, std))."""
    impl = backends.select("group_advantages", rewards.device, rewards.dtype, backend or None)
    return impl.fwd(rewards, perm, offsets, mode, std_correction, eps, batch_std)


@group_advantages_fwd.register_fake
def _(rewards, perm, offsets, mode, std_correction, eps, batch_std, backend):
    return torch.empty_like(rewards), rewards.new_empty((offsets.shape[0] - 1, 3))
