"""grpo_loss end to end from logits on every backend against the float64 composition of the two
specs (selective log-softmax, then the policy loss; the latter is checked against TRL itself)."""
import pytest
import torch

import ttrl_fast
from ttrl_fast import reference
from ttrl_fast.reference.policy_loss import policy_loss as spec_policy_loss
from ttrl_fast.testing import make_index, make_logits, scaled_error

from ..conftest import DEVICE

INTERPRETED = DEVICE.type == "cpu"


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo", "sapo", "vespo", "luspo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_matches_the_composed_specs_values_and_logits_gradient(backend, loss_type, level):
    v = 37 if backend == "triton" and INTERPRETED else 301
    logits = make_logits((3, 7, v), neg_inf_fraction=0.05, device=DEVICE)
    ids = make_index(logits)
    mask = torch.rand(3, 7, device=DEVICE) > 0.3
    with torch.no_grad():
        base = reference.selective_log_softmax(logits.double(), ids, temperature=0.9)
    old = (base + 0.2 * torch.randn_like(base)).float()
    ref = (base + 0.2 * torch.randn_like(base)).float()
    adv = torch.randn(3, device=DEVICE)
    knobs = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04, use_bias_correction_kl=True,
                 entropy_coef=0.01, epsilon_high=5.0 if loss_type == "cispo" else 0.28)

    x = logits.clone().requires_grad_(True)
    loss, metrics = ttrl_fast.grpo_loss(x, ids, adv, mask, old_logp=old, ref_logp=ref, temperature=0.9,
                                        backend=backend, **knobs)
    loss.backward()

    xr = logits.double().requires_grad_(True)
    logp, entropy = reference.selective_log_softmax(xr, ids, temperature=0.9, mask=mask, return_entropy=True)
    ref_loss, parts = spec_policy_loss(logp, old.double(), adv.double(), mask.double(), ref_logp=ref.double(),
                                       entropy=entropy, **knobs)
    ref_loss.backward()
    assert scaled_error(loss, ref_loss) <= 1e-5
    assert scaled_error(x.grad, xr.grad) <= 1e-5
    assert abs(float(metrics["entropy"]) - float(parts["entropy"][0] / parts["entropy"][1])) <= 1e-5
    assert (x.grad[~mask] == 0).all()  # masked positions: no gradient (and no vocabulary pass)


def test_grpo_loss_reads_sliced_logits_in_place_and_keeps_them(backend):
    full = make_logits((2, 6, 37), device=DEVICE).requires_grad_(True)
    before = full.detach().clone()
    ids = make_index(full[:, :-1])
    loss, _ = ttrl_fast.grpo_loss(full[:, :-1], ids, torch.randn(2, device=DEVICE),
                                  torch.ones(2, 5, device=DEVICE), backend=backend)
    loss.backward()
    torch.testing.assert_close(full.detach(), before, rtol=0, atol=0)
    assert (full.grad[:, -1] == 0).all()
