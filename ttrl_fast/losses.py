"""`ttrl_fast.policy_loss` and `ttrl_fast.grpo_loss`: the GRPO loss family (TRL 1.16 semantics,
exact parity) on log-probs, and end to end from logits with one fused vocabulary pass each way."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ttrl_fast import _validation as v
from ttrl_fast.functional import selective_log_softmax
from ttrl_fast.metrics import Metrics
from ttrl_fast.ops import policy_loss as _ops
from ttrl_fast.reference.policy_loss import KL_ESTIMATORS, LOSS_TYPES, PPO_CLIP_TYPES, nan_reduce

# loss_type -> (kernel loss code, aggregation code); see csrc/include/ttrl_fast/policy_loss_math.h.
_CODES = {"grpo": (0, 0), "bnpo": (0, 1), "dr_grpo": (0, 1), "dapo": (0, 1), "luspo": (0, 2),
          "cispo": (1, 1), "sapo": (2, 0), "vespo": (3, 1)}


def _as_float_rows(name: str, x, shape: tuple[int, int], *, allow_cols_one: bool = False) -> Tensor | None:
    if x is None:
        return None
    v.check_tensor(name, x)
    if x.dim() == 1 and allow_cols_one and x.shape[0] == shape[0]:
        x = x.unsqueeze(-1)
    ok = x.shape == shape or (allow_cols_one and x.dim() == 2 and x.shape == (shape[0], 1))
    if not ok:
        extra = f" or ({shape[0]}, 1)" if allow_cols_one else ""
        raise ValueError(f"{name} must have shape {shape}{extra}, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got dtype {x.dtype}")
    return x.detach().float().contiguous()


def policy_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    use_bias_correction_kl: bool = False,
    rollout_is_ratio: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    backend: str | None = None,
) -> tuple[Tensor, Metrics]:
    """GRPO-family policy loss on per-token log-probs, fused into one O(tokens) kernel per backend.

    Exactly TRL 1.16's `GRPOTrainer._compute_loss` for one process without gradient accumulation
    (formulas: ttrl_fast/reference/policy_loss.py). For dapo/cispo/vespo pass num_items_in_batch
    (active tokens of the whole generation batch / processes) to match a distributed or
    accumulating TRL run; it defaults to this batch's mask sum.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (differentiable).
        old_logp: [B, T] under the sampling policy, or None (on-policy: ratio 1 with gradient).
        advantages: [B] (per sequence) or [B, T].
        mask: [B, T] bool / 0-1 (completion tokens that count).
        ref_logp: [B, T], required when beta != 0.
        loss_type: grpo, bnpo, dr_grpo, dapo, luspo, cispo, sapo, vespo.
        importance_sampling_level: "token" or "sequence" (GSPO).
        epsilon_low / epsilon_high: clip range (epsilon_high defaults to epsilon_low; for cispo it
            is the absolute ratio cap, e.g. 5.0). delta: two-sided clip cap (INTELLECT-2).
        beta, kl_estimator ("k1" | "k2" | "k3"), use_bias_correction_kl: the KL penalty.
        rollout_is_ratio: [B, T] or [B, 1] inference-engine IS ratio multiplying the per-token loss
            (folded into the sequence weight for vespo).
        entropy: [B, T] per-token entropy (for the metric and entropy_coef's bonus; differentiable).
        max_completion_length: dr_grpo's constant (default T).
        backend: None (automatic) or "reference" | "cpp" | "triton" | "cuda".
    Returns:
        (loss, metrics): loss a 0-dim float32 tensor; metrics a ttrl_fast.metrics.Metrics with
        policy_loss, kl, entropy, clip_ratio/{low,high,region}_mean, clip_ratio/low_min,
        clip_ratio/high_max, cispo_clip_ratio, vespo/phi_seq_mean, ratio/{min,mean,max} as apply,
        each with its (sum, count) or min/max op for exact all-reduce.
    """
    v.check_tensor("logp", logp)
    if logp.dim() != 2 or not logp.dtype.is_floating_point:
        raise ValueError(f"logp must be a [B, T] float tensor, got dtype {logp.dtype} shape {tuple(logp.shape)}")
    shape = tuple(logp.shape)
    eps_low, eps_high, beta = check_loss_hyperparameters(
        loss_type=loss_type, importance_sampling_level=importance_sampling_level, kl_estimator=kl_estimator,
        epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta, beta=beta,
        max_completion_length=max_completion_length)
    if beta != 0.0 and ref_logp is None:
        raise ValueError("ref_logp [B, T] is required when beta != 0")
    v.check_tensor("mask", mask)
    if mask.dtype.is_complex:
        raise ValueError(f"mask must be a bool, integer or float 0/1 tensor, got dtype {mask.dtype}")
    mask_f = _as_float_rows("mask", mask.float() if mask.shape == shape else mask, shape)
    adv = _as_float_rows("advantages", advantages, shape, allow_cols_one=True)
    old = _as_float_rows("old_logp", old_logp, shape)
    ref = _as_float_rows("ref_logp", ref_logp, shape) if beta != 0.0 else None
    ratio = _as_float_rows("rollout_is_ratio", rollout_is_ratio, shape, allow_cols_one=True)
    ent = _as_float_rows("entropy", entropy, shape)
    v.check_same_device(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp,
                        rollout_is_ratio=rollout_is_ratio, entropy=entropy)

    iparams, fparams = policy_loss_params(
        shape, mask_f, loss_type=loss_type, importance_sampling_level=importance_sampling_level,
        epsilon_low=eps_low, epsilon_high=eps_high, delta=delta, beta=beta, kl_estimator=kl_estimator,
        use_bias_correction_kl=use_bias_correction_kl, on_policy=old is None,
        max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch,
        sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg)
    logp32 = logp.float().contiguous()
    loss, _, stats = _ops.policy_loss_fwd(logp32, old, adv, mask_f, ref, ratio, ent, iparams, fparams, backend or "")
    metrics = _metrics(stats, loss, loss_type, iparams, adv.shape[1], beta, ent is not None)
    if entropy is not None and entropy_coef != 0.0:  # the bonus: a masked mean, O(tokens), differentiable
        bonus = (entropy.float() * mask_f).sum() / mask_f.sum().clamp(min=1.0)
        loss = loss - float(entropy_coef) * bonus
    return loss, metrics


def check_loss_hyperparameters(*, loss_type: str, importance_sampling_level: str, kl_estimator: str, epsilon_low,
                               epsilon_high, delta, beta, max_completion_length) -> tuple[float, float, float]:
    """The checks of policy_loss's hyperparameters, shared by every entry point of the loss (policy_loss,
    grpo_loss, fused_linear_grpo_loss): a ValueError naming the argument and its value. Returns
    (epsilon_low, epsilon_high, beta) as floats (epsilon_high defaults to epsilon_low)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    eps_low = v.check_positive_finite("epsilon_low", epsilon_low, allow_zero=True)
    eps_high = eps_low if epsilon_high is None else v.check_positive_finite("epsilon_high", epsilon_high, allow_zero=True)
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, numbers.Real)
                              or not (math.isfinite(delta) and delta > 0)):
        raise ValueError(f"delta must be a finite number > 0 or None, got {delta!r}")
    beta = v.check_positive_finite("beta", beta, allow_zero=True)
    if max_completion_length is not None and (isinstance(max_completion_length, bool)
                                              or not isinstance(max_completion_length, numbers.Integral)
                                              or max_completion_length < 1):
        raise ValueError(f"max_completion_length must be a positive int or None, got {max_completion_length!r}")
    return eps_low, eps_high, beta


def policy_loss_params(shape: tuple[int, int], mask_f: Tensor, *, loss_type: str, importance_sampling_level: str,
                       epsilon_low: float, epsilon_high: float, delta: float | None, beta: float, kl_estimator: str,
                       use_bias_correction_kl: bool, on_policy: bool, max_completion_length: int | None,
                       num_items_in_batch, sapo_temperature_pos: float, sapo_temperature_neg: float,
                       vespo_k_pos: float, vespo_lambda_pos: float, vespo_k_neg: float,
                       vespo_lambda_neg: float) -> tuple[list[int], list[float]]:
    """The kernels' (iparams, fparams) (field order of PolicyLossParams in policy_loss_math.h)."""
    batch, length = shape
    loss_code, aggregation = _CODES[loss_type]
    if aggregation == 0 or aggregation == 2:
        norm = float(batch)
    elif loss_type == "dr_grpo":
        norm = float(batch * (length if max_completion_length is None else max_completion_length))
    elif loss_type == "bnpo" or num_items_in_batch is None:
        norm = max(float(mask_f.sum()), 1.0)
    else:
        items = float(num_items_in_batch)
        if not (math.isfinite(items) and items >= 0):  # a token count: a negative one is a caller's bug
            raise ValueError(f"num_items_in_batch must be a finite count >= 0, got {items}")
        norm = max(items, 1.0)
    iparams = [loss_code, aggregation, KL_ESTIMATORS.index(kl_estimator) + 1 if beta != 0.0 else 0,
               int(importance_sampling_level == "sequence"), int(bool(use_bias_correction_kl)), int(delta is not None),
               int(on_policy)]
    fparams = [float(epsilon_low), float(epsilon_high), float(delta) if delta is not None else 0.0, float(beta),
               float(sapo_temperature_pos), float(sapo_temperature_neg), float(vespo_k_pos), float(vespo_lambda_pos),
               float(vespo_k_neg), float(vespo_lambda_neg), norm]
    return iparams, fparams


def _metrics(stats: Tensor, loss: Tensor, loss_type: str, iparams: list[int], adv_cols: int, beta: float,
             has_entropy: bool) -> Metrics:
    """TRL's metric conventions from the per-sequence statistics (layout: kernels/__init__.py)."""
    st = stats.detach()
    n = st[:, 1]
    tokens = n.sum()
    batch = torch.tensor(float(st.shape[0]))
    per_sequence = bool(iparams[3]) and adv_cols == 1  # flags live on [B, 1]: one per sequence
    m = Metrics()
    m.add_mean("policy_loss", loss.detach(), torch.ones(()))
    if beta != 0.0:
        m.add_mean("kl", st[:, 2].sum(), tokens)
    if has_entropy:
        m.add_mean("entropy", st[:, 3].sum(), tokens)

    def flag_metrics(name: str, token_col: int, seq_col: int) -> Tensor:
        if per_sequence:
            m.add_mean(name, st[:, seq_col].sum(), batch)
            return st[:, seq_col]
        m.add_mean(name, st[:, token_col].sum(), tokens)
        return st[:, token_col] / n  # NaN for empty sequences: skipped below

    if loss_type in PPO_CLIP_TYPES:
        low = flag_metrics("clip_ratio/low_mean", 4, 7)
        high = flag_metrics("clip_ratio/high_mean", 5, 8)
        flag_metrics("clip_ratio/region_mean", 6, 9)
        m.add_extreme("clip_ratio/low_min", nan_reduce(low, "min"), "min")
        m.add_extreme("clip_ratio/high_max", nan_reduce(high, "max"), "max")
    elif loss_type == "cispo":
        flag_metrics("cispo_clip_ratio", 10, 11)
    elif loss_type == "vespo":
        if adv_cols == 1:
            m.add_mean("vespo/phi_seq_mean", st[:, 13].sum(), batch)
        else:
            m.add_mean("vespo/phi_seq_mean", st[:, 12].sum(), tokens)
    if iparams[3]:  # sequence-level ratio: one per sequence
        m.add_mean("ratio/mean", st[:, 17].sum(), batch)
        m.add_extreme("ratio/min", st[:, 17].min() if st.shape[0] else torch.tensor(float("nan")), "min")
        m.add_extreme("ratio/max", st[:, 17].max() if st.shape[0] else torch.tensor(float("nan")), "max")
    else:
        m.add_mean("ratio/mean", st[:, 14].sum(), tokens)
        lo, hi = (st[:, 15].min(), st[:, 16].max()) if st.shape[0] else (torch.tensor(float("inf")),) * 2
        m.add_extreme("ratio/min", lo if torch.isfinite(lo) else torch.tensor(float("nan")), "min")
        m.add_extreme("ratio/max", hi if torch.isfinite(hi) else torch.tensor(float("nan")), "max")
    return m


def grpo_loss(
    logits: Tensor,
    completion_ids: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    temperature: float = 1.0,
    log_entropy: bool = True,
    backend: str | None = None,
    **loss_kwargs,
) -> tuple[Tensor, Metrics]:
    """GRPO loss end to end from logits: one fused vocabulary pass computes log-probs (and entropy),
    one O(tokens) kernel the loss and its gradient w.r.t. the log-probs, and the backward is one
    more vocabulary pass writing the gradient w.r.t. logits. No [B, T, V] temporary exists other
    than that gradient; masked positions cost no vocabulary pass.

    Args:
        logits: [B, T, V] fp32/bf16/fp16, aligned with completion_ids (slice logits[:, :-1] yourself;
            slices are read in place).
        completion_ids: [B, T] sampled token ids. advantages: [B] or [B, T]. mask: [B, T].
        old_logp, ref_logp: [B, T] or None. temperature: applied to the logits (runtime scalar).
        log_entropy: compute the per-token entropy for the "entropy" metric (TRL logs it; ~5% of the
            forward). Always on when entropy_coef != 0.
        **loss_kwargs: every keyword of ttrl_fast.policy_loss (loss_type, beta, epsilon_*, ...).
    Returns:
        (loss, metrics) as ttrl_fast.policy_loss.
    """
    v.check_tensor("completion_ids", completion_ids)
    entropy_coef = float(loss_kwargs.get("entropy_coef", 0.0))
    need_entropy = log_entropy or entropy_coef != 0.0
    v.check_tensor("mask", mask)
    if mask.shape != completion_ids.shape:
        raise ValueError(f"mask must have the shape of completion_ids {tuple(completion_ids.shape)}, "
                         f"got {tuple(mask.shape)}")
    mask_b = mask != 0  # positions outside it cost no vocabulary pass
    out = selective_log_softmax(logits, completion_ids, temperature=temperature, mask=mask_b,
                                return_entropy=need_entropy, backend=backend)
    logp, entropy = out if need_entropy else (out, None)
    if entropy is not None and entropy_coef == 0.0:
        entropy = entropy.detach()  # metric only: no entropy term in the backward
    return policy_loss(logp, old_logp, advantages, mask, ref_logp=ref_logp, entropy=entropy, backend=backend,
                       **loss_kwargs)
