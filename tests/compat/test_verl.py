"""ttrl_fast.compat.verl against verl 0.9's formulas written out directly (one line each, the spec), on
random inputs with both advantage signs, ratios far outside the clip range, masked and empty rows:
values, gradients, metrics, and the fused path (vanilla + token-mean) against the explicit one."""
import pytest
import torch

from ttrl_fast.compat import verl as V


def batch(seed=0, b=6, t=9, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = (old + torch.randn(b, t, generator=g, dtype=torch.float64) * spread).clamp(max=0).requires_grad_()
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).contiguous()
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[1] = False  # an empty response
    return old, logp, adv, mask.double()


def spec_agg(loss, mask, mode):
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    lengths = mask.sum(-1)
    keep = lengths > 0
    if mode == "seq-mean-token-sum":
        return (loss * mask).sum(-1)[keep].mean()
    if mode == "seq-mean-token-mean":
        return ((loss * mask).sum(-1)[keep] / lengths[keep]).mean()
    return (loss * mask).sum() / mask.shape[-1]


def spec_vanilla(old, logp, adv, low, high, c):
    r = (logp - old).clamp(-20, 20).exp()
    ppo = torch.maximum(-adv * r, -adv * r.clamp(1 - low, 1 + high))
    return torch.where(adv < 0, torch.minimum(ppo, -adv * c), ppo)


@pytest.mark.parametrize("mode", V.AGG_MODES)
@pytest.mark.parametrize("clip", [(0.2, 0.2, 3.0), (0.2, 0.28, 1.5)])
def test_vanilla_dual_clip_values_gradients_and_metrics(mode, clip):
    low, high, c = clip
    old, logp, adv, mask = batch()
    config = V.ActorLossConfig(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    loss, metrics = V.get_policy_loss_fn("vanilla")(old, logp, adv, mask, loss_agg_mode=mode, config=config)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = spec_agg(spec_vanilla(old, logp, adv, low, high, c), mask, mode)
    (expected_grad,) = torch.autograd.grad(expected, logp)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
    r = (logp - old).detach().exp()
    pg1, pg2 = -adv * r, -adv * r.clamp(1 - low, 1 + high)
    frac = ((pg2 > pg1).double() * mask).sum() / mask.sum()
    lower = (((torch.maximum(pg1, pg2) > -adv * c) & (adv < 0)).double() * mask).sum() / mask.sum()
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float(frac))
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(float(lower))
    assert metrics["actor/pg_clipfrac_lower"] > 0  # the dual clip is exercised by these inputs
    assert metrics["actor/ppo_kl"] == pytest.approx(float(((old - logp.detach()) * mask).sum() / mask.sum()))


def test_vanilla_token_mean_is_the_fused_op_and_honours_global_normalisers():
    old, logp, adv, mask = batch(seed=3)
    info = dict(dp_size=4, batch_num_tokens=130)
    config = V.ActorLossConfig(clip_ratio_c=3.0, global_batch_info=info)
    loss, _ = V.compute_policy_loss_vanilla(old, logp, adv, mask, "token-mean", config)
    expected = (spec_vanilla(old, logp, adv, 0.2, 0.2, 3.0) * mask).sum() / 130 * 4
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_cispo_is_two_sided_and_gradient_flows_through_logp_only():
    old, logp, adv, mask = batch(seed=1)
    config = V.ActorLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28)
    loss, metrics = V.get_policy_loss_fn("cispo")(old, logp, adv, mask, config=config)
    w = (logp - old).detach().exp().clamp(0.8, 1.28)
    expected = spec_agg(-w * adv * logp, mask, "token-mean")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(expected, logp)[0])
    r = (logp - old).detach().exp()
    assert ((r < 0.8) & (mask > 0)).any() and ((r > 1.28) & (mask > 0)).any()  # both sides really clip here
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float((((r < 0.8) | (r > 1.28)).double() * mask).sum()
                                                                / mask.sum()))


def test_gspo_sapo_gpg():
    old, logp, adv, mask = batch(seed=2, spread=0.3)
    config = V.ActorLossConfig(tau_pos=1.0, tau_neg=1.05)
    seq = ((logp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    s = (logp - logp.detach() + seq.detach()[:, None]).clamp(max=10).exp()
    gspo = spec_agg(torch.maximum(-adv * s, -adv * s.clamp(0.8, 1.2)), mask, "seq-mean-token-mean")
    tau = torch.where(adv > 0, 1.0, 1.05)
    sapo = spec_agg(-torch.sigmoid(tau * ((logp - old).exp() - 1)) * 4 / tau * adv, mask, "seq-mean-token-mean")
    gpg = spec_agg(-logp * adv, mask, "seq-mean-token-sum")
    for name, expected, mode in (("gspo", gspo, "token-mean"), ("sapo", sapo, "token-mean"),
                                 ("gpg", gpg, "seq-mean-token-sum")):
        loss, _ = V.get_policy_loss_fn(name)(old, logp, adv, mask, loss_agg_mode=mode, config=config)
        torch.testing.assert_close(loss, expected, msg=name)
        torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(expected, logp)[0],
                                   msg=name)


@pytest.mark.parametrize("kind", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+"])
def test_kl_penalty(kind):
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 5, generator=g, dtype=torch.float64) * 30).requires_grad_()  # extreme: |d| > 20
    ref = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 3
    d = logp - ref
    base = kind.rstrip("+")
    value = {"kl": d, "k1": d, "abs": d.abs(), "mse": 0.5 * d ** 2, "k2": 0.5 * d ** 2,
             "low_var_kl": ((-d).clamp(-20, 20).exp() + d.clamp(-20, 20) - 1).clamp(-10, 10),
             "k3": ((-d).clamp(-20, 20).exp() + d.clamp(-20, 20) - 1).clamp(-10, 10)}[base]
    got = V.kl_penalty(logp, ref, kind)
    torch.testing.assert_close(got, value)
    if kind.endswith("+"):  # straight-through: k2's gradient d
        torch.testing.assert_close(torch.autograd.grad(got.sum(), logp)[0], d.detach())


def test_grpo_advantage_matches_verl_semantics_with_any_uids():
    rewards = torch.zeros(7, 4)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 3.0, 2.0, 5.0, 0.5])
    mask = torch.ones(7, 4)
    mask[0, 2:] = 0
    index = ["a", "a", "a", 7, 7, "lone", 7]  # uids in any order and type; "lone" is a group of one
    adv, returns = V.get_adv_estimator_fn("grpo")(rewards, mask, index)
    a = torch.tensor([1.0, 0.0, 1.0])
    b = torch.tensor([3.0, 2.0, 0.5])
    expected = torch.empty(7)
    expected[[0, 1, 2]] = (a - a.mean()) / (a.std() + 1e-6)
    expected[[3, 4, 6]] = (b - b.mean()) / (b.std() + 1e-6)
    expected[5] = 5.0 / (1 + 1e-6)  # verl: mean 0, std 1 for a group of one
    torch.testing.assert_close(adv, expected[:, None] * mask)
    assert returns is adv
    drgrpo, _ = V.compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(drgrpo[3:5, 0], b[:2] - b.mean())


def test_linear_cross_entropy_matches_eager():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (10,), generator=g)
    logp, entropy = V.linear_cross_entropy(hidden, weight, labels, temperature=0.7)
    full = torch.log_softmax((hidden @ weight.t()).double() / 0.7, -1)
    torch.testing.assert_close(logp.double(), full.gather(-1, labels[:, None]).squeeze(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), -(full.exp() * full).sum(-1), rtol=0, atol=1e-4)


def test_errors_name_the_argument():
    old, logp, adv, mask = batch()
    with pytest.raises(ValueError, match="response_mask must be a tensor of shape"):
        V.compute_policy_loss_vanilla(old, logp, adv, mask[:, :3], config=V.ActorLossConfig())
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        V.compute_policy_loss_vanilla(old, logp, adv, mask, config=V.ActorLossConfig(clip_ratio_c=1.0))
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        V.agg_loss(logp, mask, "tokens")
    with pytest.raises(NotImplementedError, match="clip_cov"):
        V.get_policy_loss_fn("clip_cov")
    with pytest.raises(ValueError, match="index must hold one uid per row"):
        V.compute_grpo_outcome_advantage(torch.zeros(3, 2), torch.ones(3, 2), ["a"])
