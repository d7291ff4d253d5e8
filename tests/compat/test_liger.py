"""ttrl_fast.compat.liger.triton_grpo_loss against Liger-Kernel 0.8.5 itself (its Triton kernels run
on CPU under TRITON_INTERPRET=1, set by tests/conftest.py), for the loss types both define alike
(luspo differs on purpose: ttrl_fast uses TRL's corrected aggregation)."""
import inspect

import pytest
import torch

from ttrl_fast.compat.liger import triton_grpo_loss

liger_grpo = pytest.importorskip("liger_kernel.transformers.grpo_loss", reason="Liger 0.8.5 is a test dependency")

B, L, V = 3, 6, 40


def test_signature_and_defaults_are_ligers():
    ours = inspect.signature(triton_grpo_loss)
    theirs = inspect.signature(liger_grpo.triton_grpo_loss)
    assert list(ours.parameters) == list(theirs.parameters)
    for name, p in theirs.parameters.items():
        assert ours.parameters[name].default == p.default, name


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo"])
@pytest.mark.parametrize("reduce", [True, False])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_matches_liger(loss_type, reduce, level):
    if level == "sequence" and loss_type in ("cispo", "sapo", "vespo"):
        pytest.skip("Liger refuses sequence-level IS for this loss type (so does the shim)")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, L + 1, V, generator=g)
    ids = torch.randint(0, V, (B, L), generator=g)
    adv = torch.randn(B, generator=g)
    old = -torch.rand(B, L, generator=g) - 3
    ref = -torch.rand(B, L, generator=g) - 3
    mask = (torch.rand(B, L, generator=g) > 0.2).long()
    ratio = torch.rand(B, L, generator=g) + 0.5
    kw = dict(completion_mask=mask, reduce=reduce, loss_type=loss_type, importance_sampling_level=level,
              eps_high=5.0 if loss_type == "cispo" else 0.4, vllm_is_ratio=ratio, use_bias_correction_kl=True,
              delta=1.3 if loss_type in ("grpo", "dapo") else None)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    theirs = liger_grpo.triton_grpo_loss(a, old, ref, ids, adv, inplace=False, **kw)
    ours = triton_grpo_loss(b, old, ref, ids, adv, **kw)
    if reduce:
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
        assert len(ours[1]) == len(theirs[1])
        for x, y in zip(ours[1], theirs[1]):
            torch.testing.assert_close(x, y.detach(), rtol=1e-5, atol=1e-5)
        ours[0].backward()
        theirs[0].backward()
    else:
        for x, y in zip(ours, theirs):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        grad = torch.randn(B, L, generator=g)
        (ours[0] * grad).sum().backward()
        (theirs[0] * grad).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
