"""compat.liger's LigerFusedLinearGRPOLoss, fused_selective_log_softmax and get_gamma_weights against
Liger 0.8.5 itself (its chunked loss runs on CPU with compiled=False), values, gradients and metrics."""
import pytest
import torch

liger_grpo = pytest.importorskip("liger_kernel.chunked_loss.grpo_loss")

from ttrl_fast.compat import liger as ours  # noqa: E402


def inputs(seed=0, b=4, t=7, h=16, v=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, generator=g)
    w = torch.randn(v, h, generator=g) * 0.5
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.25).long()
    mask[:, 0] = 1
    adv = torch.randn(b, generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(x @ w.t() / 0.8, -1).gather(-1, ids[..., None]).squeeze(-1)
    old = logp + torch.randn(b, t, generator=g) * 0.3
    ref_x = x + 0.1 * torch.randn(b, t, h, generator=g)
    return x, w, ids, mask, adv, old, ref_x


@pytest.mark.parametrize("loss_type,extra", [("dapo", {}), ("grpo", {}), ("bnpo", {}), ("cispo", {"epsilon_high": 1.3}),
                                             ("sapo", {}), ("dr_grpo", {"max_completion_length": 9}),
                                             ("grpo", {"importance_sampling_level": "sequence"}),
                                             ("dapo", {"delta": 1.5, "use_bias_correction_kl": True})])
def test_matches_liger(loss_type, extra):
    x, w, ids, mask, adv, old, ref_x = inputs()
    settings = {"beta": 0.04, "loss_type": loss_type, "temperature": 0.8, "epsilon_high": 0.28, **extra}
    theirs = liger_grpo.LigerFusedLinearGRPOLoss(compiled=False, **settings)
    mine = ours.LigerFusedLinearGRPOLoss(**settings)
    results = []
    for module in (theirs, mine):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss, metrics = module(xi, wi, ids, mask, adv, old_per_token_logps=old, ref_input=ref_x, ref_weight=w)
        loss.backward()
        results.append((loss.detach(), [m.detach() for m in metrics], xi.grad, wi.grad))
    (l1, m1, gx1, gw1), (l2, m2, gx2, gw2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx2, gx1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw2, gw1, rtol=1e-4, atol=1e-6)
    assert len(m1) == len(m2) == 2
    for a, b in zip(m2, m1):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_fused_selective_log_softmax_and_gamma_weights():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 30, generator=g)
    ids = torch.randint(0, 30, (3, 8), generator=g)
    mask = torch.ones(3, 8)
    mask[1, -2:] = 0
    got = ours.fused_selective_log_softmax(logits, ids, temperature=0.9, mask=mask)
    want = torch.log_softmax(logits[:, :-1].double() / 0.9, -1).gather(-1, ids[:, -5:, None]).squeeze(-1)
    want = want * mask[:, -5:]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    adv = torch.randn(3, generator=g)
    log_ratio = torch.randn(3, 5, generator=g) * 0.2
    m = (torch.rand(3, 5, generator=g) > 0.2).float()
    isr = torch.rand(3, 5, generator=g) + 0.5
    torch.testing.assert_close(ours.get_gamma_weights(adv, log_ratio, m, isr),
                               liger_grpo.get_gamma_weights(adv, log_ratio, m, isr), rtol=1e-5, atol=1e-6)
