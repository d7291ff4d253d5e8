"""ttrl_fast.compat.openrlhf.PolicyLoss against OpenRLHF's formulas written out directly: PPO with and
without dual clip, token- and sample-level aggregation with global normalisers, the three vLLM IS
corrections, GSPO; values, gradients and the returned metrics."""
import pytest
import torch

from ttrl_fast.compat.openrlhf import PolicyLoss

from .test_verl import batch


def spec(logp, old, adv, mask, *, low=0.2, high=0.2, dual=None, weight=None, token=True, n_tokens=None, dp=1,
         n_seqs=None, gspo=False):
    if gspo:
        r = (((logp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).exp()[:, None] * mask
    else:
        r = (logp - old).clamp(-20, 20).exp()
    best = torch.min(r * adv, r.clamp(1 - low, 1 + high) * adv)
    if dual is not None:
        best = torch.where(adv < 0, torch.max(best, dual * adv), best)
    loss = -best if weight is None else -best * weight
    if token:
        return (loss * mask).sum() / (mask.sum() if n_tokens is None else n_tokens) * (1 if n_tokens is None else dp)
    lengths = mask.sum(-1)
    per_seq = (loss * mask).sum(-1) / (lengths + 1e-8)
    keep = (lengths > 0).double()
    return (per_seq * keep).sum() / (keep.sum() if n_seqs is None else n_seqs) * (1 if n_seqs is None else dp)


@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("token", [True, False])
@pytest.mark.parametrize("normalisers", [{}, dict(dp_size=2, batch_num_tokens=60.0, global_batch_size=9.0)])
def test_ppo(dual, token, normalisers):
    old, logp, adv, mask = batch(seed=4)
    fn = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual, token_level_loss=token)
    loss, clip_ratio, ppo_kl, vllm_kl = fn(logp, old, adv, mask, **normalisers)
    expected = spec(logp, old, adv, mask, high=0.28, dual=dual, token=token, n_tokens=normalisers.get(
        "batch_num_tokens"), n_seqs=normalisers.get("global_batch_size"), dp=normalisers.get("dp_size", 1))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0].double(), torch.autograd.grad(expected, logp)[0],
                               rtol=1e-5, atol=1e-6)
    r = (logp - old).detach().exp()
    assert float(clip_ratio) == pytest.approx(float(((r.clamp(0.8, 1.28) * adv < r * adv).double() * mask).sum()
                                                    / mask.sum()))
    assert float(ppo_kl) == pytest.approx(float(((old - logp.detach()) * mask).sum() / mask.sum()))
    assert vllm_kl is None


@pytest.mark.parametrize("kind", ["tis", "icepop", "seq-mask-tis"])
def test_vllm_is_corrections(kind):
    old, logp, adv, mask = batch(seed=5)
    rollout = old + torch.randn_like(old) * 0.5
    fn = PolicyLoss(enable_vllm_is_correction=True, vllm_is_truncated_threshold=[0.5, 2.0],
                    vllm_is_correction_type=kind)
    loss, _, _, vllm_kl = fn(logp, old, adv, mask, rollout_log_probs=rollout)
    w = (old - rollout).exp()
    if kind == "tis":
        w = w.clamp(0.5, 2.0)
    elif kind == "icepop":
        w = w * ((w >= 0.5) & (w <= 2.0))
    else:
        seq = (((old - rollout) * mask).sum(-1) / mask.sum(-1)).exp()
        w = ((seq >= 0.5) & (seq <= 2.0))[:, None] * w
    expected = spec(logp, old, adv, mask, weight=w)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert float(vllm_kl) == pytest.approx(float(((rollout - old) * mask).sum() / mask.sum()))


def test_gspo_is_sequence_level():
    old, logp, adv, mask = batch(seed=6, spread=0.3)
    loss, *_ = PolicyLoss(policy_loss_type="gspo")(logp, old, adv, mask)
    expected = spec(logp, old, adv, mask, token=False, gspo=True)
    torch.testing.assert_close(loss.double(), expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(expected, logp)[0])


def test_errors():
    with pytest.raises(ValueError, match="dual_clip must be > 1.0"):
        PolicyLoss(dual_clip=0.9)
    with pytest.raises(ValueError, match="vllm_is_correction_type"):
        PolicyLoss(vllm_is_correction_type="clip")
    old, logp, adv, mask = batch()
    with pytest.raises(ValueError, match="advantages must have the shape of log_probs"):
        PolicyLoss()(logp, old, adv[:, :2], mask)
    with pytest.raises(ValueError, match="rollout_log_probs are required"):
        PolicyLoss(enable_vllm_is_correction=True, vllm_is_truncated_threshold=[0.5, 2])(logp, old, adv, mask)
