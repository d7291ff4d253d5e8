"""Triton policy_loss kernel against the float64 spec (ttrl_fast.reference.policy_loss).

Without CUDA the kernel runs on CPU under TRITON_INTERPRET=1, which triton reads when a kernel is
decorated: it has to be set before the kernel module is imported. Shapes stay tiny because the
interpreter is slow (its cost is per program and per op): the big matrix runs with one chunk per
sequence, dedicated tests lower the chunk cap to 4 so that every pass loops over several chunks.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

from . import load_kernel_module  # noqa: E402

pytest.importorskip("triton")

from ttrl_fast.reference.policy_loss import policy_loss as spec_policy_loss  # noqa: E402

tpl = load_kernel_module("policy_loss")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-5, atol=1e-5)

# The interpreter's numpy ops may warn in lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
_LOSS_CODE = {"grpo": 0, "bnpo": 0, "dr_grpo": 0, "dapo": 0, "luspo": 0, "cispo": 1, "sapo": 2, "vespo": 3}
_KL_CODE = {"k1": 1, "k2": 2, "k3": 3}


@pytest.fixture(autouse=True)
def block_cap(monkeypatch):
    """One chunk per sequence by default (T <= 16): the interpreter's cost grows with the chunks."""
    monkeypatch.setattr(tpl, "_INTERPRET_MAX_BLOCK_T", 16)


def kernel_params(loss_type, mask, *, level="token", beta=0.0, kl_estimator="k3", bias_kl=False, delta=None,
                  eps_low=0.2, eps_high=None, on_policy=False, sapo_tau_pos=1.0, sapo_tau_neg=1.05,
                  vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0):
    """The Python-level options of the spec -> (iparams, fparams) of the raw contract."""
    B, T = mask.shape
    total = max(float(mask.sum()), 1.0)
    if loss_type in ("grpo", "sapo"):
        aggregation, norm = 0, float(B)
    elif loss_type == "dr_grpo":
        aggregation, norm = 1, float(B * T)
    elif loss_type in ("bnpo", "dapo", "cispo", "vespo"):
        aggregation, norm = 1, total
    elif loss_type == "luspo":
        aggregation, norm = 2, float(B)
    else:
        raise ValueError(loss_type)
    kl = 0 if beta == 0.0 else _KL_CODE[kl_estimator]
    iparams = [_LOSS_CODE[loss_type], aggregation, kl, int(level == "sequence"), int(bool(bias_kl)),
               int(delta is not None), int(on_policy)]
    fparams = [eps_low, eps_low if eps_high is None else eps_high, 0.0 if delta is None else delta, beta,
               sapo_tau_pos, sapo_tau_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, norm]
    return iparams, [float(f) for f in fparams]


def make_case(B, T, seed, *, adv_per_token, rho_shape, zero_row=1):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen) * 2.0
    old = logp + 0.35 * torch.randn(B, T, generator=gen)
    ref = logp + 0.3 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, T if adv_per_token else 1, generator=gen)
    adv[torch.rand(adv.shape, generator=gen) < 0.1] = 0.0  # A = 0: the PPO-clip tie
    mask = (torch.rand(B, T, generator=gen) < 0.75).float()
    mask[0] = 1.0
    if zero_row is not None and B > 1:
        mask[zero_row] = 0.0  # an all-masked sequence
    rho = None
    if rho_shape is not None:
        rho = torch.rand(B, rho_shape, generator=gen) * 1.5 + 0.25
    entropy = torch.rand(B, T, generator=gen) * 3.0
    return dict(logp=logp, old=old, ref=ref, adv=adv, mask=mask, rho=rho, entropy=entropy)


def _nanmin(x):
    x = x[~torch.isnan(x)]
    return x.min() if x.numel() else torch.tensor(float("nan"), dtype=torch.float64)


def _nanmax(x):
    x = x[~torch.isnan(x)]
    return x.max() if x.numel() else torch.tensor(float("nan"), dtype=torch.float64)


def run_and_check(case, loss_type, *, level="token", beta=0.0, kl_estimator="k3", bias_kl=False, delta=None,
                  eps_low=0.2, eps_high=None, on_policy=False, entropy_coef=0.0, with_entropy=True, **hyper):
    logp, mask, adv = case["logp"], case["mask"], case["adv"]
    B, T = logp.shape
    old = None if on_policy else case["old"]
    ref = case["ref"] if beta != 0.0 else None
    rho = case["rho"]
    entropy = case["entropy"] if with_entropy else None

    # The kernel (fp32).
    iparams, fparams = kernel_params(loss_type, mask, level=level, beta=beta, kl_estimator=kl_estimator,
                                     bias_kl=bias_kl, delta=delta, eps_low=eps_low, eps_high=eps_high,
                                     on_policy=on_policy, **hyper)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    grad, stats = tpl.policy_loss_fwd(to(logp), to(old), to(adv), to(mask), to(ref), to(rho), to(entropy),
                                      iparams, fparams)
    assert grad.shape == (B, T) and grad.dtype == torch.float32
    assert stats.shape == (B, 18) and stats.dtype == torch.float32
    grad, stats = grad.cpu().double(), stats.cpu().double()

    # The spec (float64, autograd).
    d = lambda t: None if t is None else t.double()  # noqa: E731
    x = logp.double().requires_grad_(True)
    spec_hyper = {("sapo_temperature_" + k[len("sapo_tau_"):] if k.startswith("sapo_tau_") else k): v
                  for k, v in hyper.items()}
    loss, parts = spec_policy_loss(
        x, d(old), adv.double(), mask.double(), ref_logp=d(ref), loss_type=loss_type,
        importance_sampling_level=level, epsilon_low=eps_low, epsilon_high=eps_high, delta=delta, beta=beta,
        kl_estimator=kl_estimator, use_bias_correction_kl=bias_kl, rollout_is_ratio=d(rho), entropy=d(entropy),
        entropy_coef=entropy_coef, **spec_hyper)
    loss.backward()

    close = lambda a, b: torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),  # noqa: E731
                                                    torch.as_tensor(b, dtype=torch.float64), equal_nan=True, **TOL)
    # (a) the gradient, (b) the loss.
    close(grad, x.grad)
    close(stats[:, 0].sum(), parts["policy_loss"][0])
    total_m = mask.double().sum().clamp(min=1.0)
    if with_entropy:
        close(stats[:, 0].sum() - entropy_coef * stats[:, 3].sum() / total_m, loss.detach())
        close(stats[:, 3].sum(), parts["entropy"][0])
    else:
        assert (stats[:, 3] == 0).all()
    assert (grad[mask == 0] == 0).all()

    # (c) metrics.
    n = mask.double().sum(-1)
    close(stats[:, 1], n)
    seq = level == "sequence"
    lr = 0.0 if on_policy else ((logp.double() - old.double()) * mask.double()).sum(-1)
    s = torch.exp(lr / n.clamp(min=1.0)) if seq else torch.ones(B, dtype=torch.float64)
    close(stats[:, 17], s * torch.ones(B, dtype=torch.float64))
    if beta != 0.0:
        close(stats[:, 2].sum(), parts["kl"][0])
    else:
        assert (stats[:, 2] == 0).all()
    # [B, 1]-shaped metrics (sequence ratio and [B, 1] advantages) use the "at (s_i, A_i0)" columns.
    narrow = seq and adv.shape[-1] == 1
    if _LOSS_CODE[loss_type] == 0:
        c = (7, 8, 9) if narrow else (4, 5, 6)
        close(stats[:, c[0]].sum(), parts["clip_ratio/low_mean"][0])
        close(stats[:, c[1]].sum(), parts["clip_ratio/high_mean"][0])
        close(stats[:, c[2]].sum(), parts["clip_ratio/region_mean"][0])
        low_seq = stats[:, 7] if narrow else stats[:, 4] / n
        high_seq = stats[:, 8] if narrow else stats[:, 5] / n
        close(_nanmin(low_seq), parts["clip_ratio/low_min"])
        close(_nanmax(high_seq), parts["clip_ratio/high_max"])
    if loss_type == "cispo":
        close(stats[:, 11 if narrow else 10].sum(), parts["cispo_clip_ratio"][0])
    if loss_type == "vespo":
        phi_narrow = adv.shape[-1] == 1
        close(stats[:, 13 if phi_narrow else 12].sum(), parts["vespo/phi_seq_mean"][0])
    else:
        assert (stats[:, 12:14] == 0).all()
    if seq:
        close(stats[:, 17].sum(), parts["ratio/mean"][0])
        close(stats[:, 17].min(), parts["ratio/min"])
        close(stats[:, 17].max(), parts["ratio/max"])
    else:
        close(stats[:, 14].sum(), parts["ratio/mean"][0])
        if (mask > 0).any():
            close(stats[:, 15].min(), parts["ratio/min"])
            close(stats[:, 16].max(), parts["ratio/max"])
    empty = n == 0
    assert (stats[empty, 15] == math.inf).all() and (stats[empty, 16] == -math.inf).all()
    return grad, stats


_BETAS = [(0.0, False), (0.04, False), (0.04, True)]  # (beta, use_bias_correction_kl)
_MATRIX = list(itertools.product(LOSS_TYPES, ["token", "sequence"], _BETAS, [None, "BT", "B1"],
                                 ["off", "on"], [False, True]))


def _options(loss_type, k):
    """Settings cycled over the matrix index k: KL estimator, eps_high, delta, temperatures."""
    opts = dict(kl_estimator=("k1", "k2", "k3")[k % 3])
    if loss_type == "cispo":
        opts["eps_high"] = (None, 1.2)[k % 2]
    elif loss_type in ("sapo", "vespo"):
        opts["eps_high"] = (None, 0.28)[k % 2]
        if loss_type == "sapo" and (k // 2) % 2:
            opts.update(sapo_tau_pos=0.9, sapo_tau_neg=1.1)
    else:
        opts["eps_high"] = (None, 0.28)[k % 2]
        opts["delta"] = (None, 1.1, 1.3)[(k // 2) % 3]
    return opts


@pytest.mark.parametrize(
    "loss_type,level,beta_bias,rho,policy,adv_per_token", _MATRIX,
    ids=[f"{lt}-{lv}-b{b}{'bc' if bc else ''}-rho{r}-{p}-adv{'BT' if a else 'B1'}"
         for lt, lv, (b, bc), r, p, a in _MATRIX])
def test_matches_spec(loss_type, level, beta_bias, rho, policy, adv_per_token):
    k = _MATRIX.index((loss_type, level, beta_bias, rho, policy, adv_per_token))
    beta, bias = beta_bias
    B, T = (4, 13) if k % 2 else (3, 11)
    case = make_case(B, T, seed=1000 + k, adv_per_token=adv_per_token,
                     rho_shape={None: None, "BT": T, "B1": 1}[rho])
    run_and_check(case, loss_type, level=level, beta=beta, bias_kl=bias, on_policy=policy == "on",
                  entropy_coef=0.01 if k % 3 == 0 else 0.0, with_entropy=k % 5 != 0, **_options(loss_type, k))


@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "sapo", "vespo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_multi_chunk(monkeypatch, loss_type, level):
    """Chunk cap 4: T = 13 runs Pass A, B and C over four chunks (the last one partial)."""
    monkeypatch.setattr(tpl, "_INTERPRET_MAX_BLOCK_T", 4)
    case = make_case(5, 13, seed=7, adv_per_token=True, rho_shape=13)
    run_and_check(case, loss_type, level=level, beta=0.04, bias_kl=True, delta=1.3 if loss_type == "dapo" else None,
                  eps_high=1.2 if loss_type == "cispo" else 0.28)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "vespo"])
def test_single_position(loss_type, level):
    """T = 1: Ta = Tr = T = 1."""
    case = make_case(3, 1, seed=3, adv_per_token=False, rho_shape=1, zero_row=None)
    run_and_check(case, loss_type, level=level, beta=0.04, kl_estimator="k2")


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_fully_masked_batch(level):
    """No token at all: zero loss and gradient, min/max +-inf."""
    case = make_case(3, 6, seed=5, adv_per_token=True, rho_shape=None)
    case["mask"].zero_()
    grad, stats = run_and_check(case, "grpo", level=level, beta=0.04)
    assert (grad == 0).all() and (stats[:, 0] == 0).all()


def test_large_ratios_hit_every_clip_branch():
    """Log-ratios of +-1.5: both clip sides and the delta clamp are taken, at both advantage signs."""
    case = make_case(5, 13, seed=11, adv_per_token=True, rho_shape=None)
    case["old"] = case["logp"] + 1.5 * torch.randn(5, 13, generator=torch.Generator().manual_seed(1))
    for lt in ("grpo", "dapo"):
        _, stats = run_and_check(case, lt, eps_high=0.28, delta=2.0)
        assert stats[:, 4].sum() > 0 and stats[:, 5].sum() > 0


def test_hyperparameters_are_runtime():
    """Different float hyperparameters reuse the same compiled kernel (interpreter: no-op check)."""
    case = make_case(4, 9, seed=13, adv_per_token=False, rho_shape=None)
    for eps in (0.1, 0.2, 0.3):
        run_and_check(case, "sapo", eps_low=eps, beta=0.02 + eps / 10, sapo_tau_pos=1.0 + eps, sapo_tau_neg=2.0 - eps)


def _tie_case():
    case = make_case(4, 7, seed=17, adv_per_token=True, rho_shape=7)
    case["adv"][case["adv"] == 0] = 0.5
    return case


@pytest.mark.parametrize("delta", [None, 1.0])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_clip_boundary_tie_vs_spec(level, delta):
    """r = 1 exactly on every clamp bound (on-policy, eps 0, delta 1): torch.clamp's backward is 0
    at its bounds and min's tie splits the gradient; the kernels match the spec there too."""
    run_and_check(_tie_case(), "grpo", level=level, on_policy=True, eps_low=0.0, eps_high=0.0, delta=delta)
