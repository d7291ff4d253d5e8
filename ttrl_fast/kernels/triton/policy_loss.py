"""Triton backend of ``policy_loss`` (raw contract: ``ttrl_fast/kernels/__init__.py``).

One program per sequence i, looping over its T positions in BLOCK_T chunks. The per-token math
mirrors ``csrc/include/ttrl_fast/policy_loss_math.h`` (policy_term, kl_term, aggregation_weight,
vespo_phi; clipped_ratio inlined, as the interpreter's cost is per jit-function call) branch for
branch, and the C++ / CUDA kernels' pass order; the spec is ``ttrl_fast/reference/policy_loss.py``.

    Pass A  n_i = sum m, lr = sum m (logp - old), vs = sum m clamp(logp - old, +-20)
            [+ sum over all Tr columns of clamp(log rho, log 1e-8, 20), VESPO only];
            s_i = exp(lr / max(n_i, 1)) at sequence level, else 1
    Pass B  per token: loss, gradient, metrics; the sequence level also gathers
            G_i = sum_t w dl/dr (the gradient through s_i)
    Pass C  sequence level only: grad_t += (G_i s_i / max(n_i, 1)) m_t

The structural integers (loss type, aggregation, KL estimator, sequence level, bias correction,
delta, on-policy) are constexpr: each selects code paths. Every float hyperparameter is a runtime
scalar, so one compiled kernel serves every value.

Self-contained on purpose (torch + triton only): ttrl_fast imports it only when triton imports.
"""

import torch
import triton
import triton.language as tl

# PolicyLossType / PolicyLossAggregation / KlEstimator of policy_loss_math.h.
PPO_CLIP, CISPO, SAPO, VESPO = 0, 1, 2, 3
SEQ_MEAN_TOKEN_MEAN, TOKEN_SUM_NORM, SEQ_MEAN_TOKEN_SUM = 0, 1, 2
KL_NONE, KL_K1, KL_K2, KL_K3 = 0, 1, 2, 3
NUM_STATS = 18

# Chunk cap on GPU: 1024 fp32 per live tensor; a program keeps ~15 of them, 4 warps.
_GPU_MAX_BLOCK_T = 1024
# Under TRITON_INTERPRET=1 small chunks keep the multi-chunk path exercised by tiny test shapes.
_INTERPRET_MAX_BLOCK_T = 8


@triton.jit
def _vespo_phi(log_w_sum, adv, k_pos, lam_pos, k_neg, lam_neg):
    """vespo_phi: exp(lam + k log w - lam w), log w clamped to [log 1e-8, 20]; NaN / inf -> 0."""
    log_w = tl.minimum(tl.maximum(log_w_sum, -18.420680743952367), 20.0)
    nonneg = adv >= 0.0
    k = tl.where(nonneg, k_pos, k_neg)
    lam = tl.where(nonneg, lam_pos, lam_neg)
    lam = tl.where(lam < 1e-4, 1e-4, lam)
    phi = tl.exp(lam + k * log_w - lam * tl.exp(log_w))
    return tl.where((phi != phi) | (phi == float("inf")), 0.0, phi)


@triton.jit
def _policy_term(r, adv, logp, phi, eps_low, eps_high, delta, tau_pos, tau_neg,
                 LOSS_TYPE: tl.constexpr, HAS_DELTA: tl.constexpr):
    """policy_term: (loss, d loss / d r, d loss / d logp at fixed r) before rho and KL."""
    zero = tl.zeros_like(r)
    if LOSS_TYPE == 0:  # PPO clip
        lo = 1.0 - eps_low
        hi = 1.0 + eps_high
        if HAS_DELTA:  # c1 = clipped_ratio(r)
            c1 = tl.where(r > delta, delta, r)
            dc1 = tl.where(r >= delta, 0.0, 1.0)  # d c1 / d r (0 at the bound, like torch.clamp)
        else:
            c1 = r
            dc1 = zero + 1.0
        c2 = tl.where(r < lo, lo, tl.where(r > hi, hi, r))
        dc2 = tl.where((r > lo) & (r < hi), 1.0, 0.0)  # strict, like torch.clamp's backward
        a = c1 * adv
        b = c2 * adv
        loss = -tl.where(a < b, a, b)
        # min's gradient: the smaller branch; a tie splits it evenly (torch.min semantics).
        d_ratio = tl.where(a < b, -adv * dc1, tl.where(a > b, -adv * dc2, -0.5 * adv * (dc1 + dc2)))
        d_logp = zero
    elif LOSS_TYPE == 1:  # CISPO
        w = tl.where(r > eps_high, eps_high, r)  # detached; a NaN ratio stays NaN (torch.clamp)
        loss = -w * adv * logp
        d_ratio = zero
        d_logp = -w * adv
    elif LOSS_TYPE == 2:  # SAPO
        tau = tl.where(adv > 0.0, tau_pos, tau_neg)
        s = 1.0 / (1.0 + tl.exp(-(tau * (r - 1.0))))
        loss = -s * 4.0 / tau * adv
        d_ratio = -4.0 * s * (1.0 - s) * adv
        d_logp = zero
    else:  # VESPO
        loss = -phi * adv * logp
        d_ratio = zero
        d_logp = -phi * adv
    return loss, d_ratio, d_logp


@triton.jit
def _kl_term(logp, ref, KL: tl.constexpr):
    """kl_term: (KL estimate, d KL / d logp) with x = logp - ref."""
    x = logp - ref
    if KL == 1:
        kl = x
        d_kl = tl.zeros_like(x) + 1.0
    elif KL == 2:
        kl = 0.5 * x * x
        d_kl = x
    else:  # k3: e^-x + x - 1
        e = tl.exp(-x)
        kl = e + x - 1.0
        d_kl = 1.0 - e
    return kl, d_kl


# Bytes per sequence (T positions, all fp32): Pass A reads mask [+ logp + old, sequence level or
# VESPO] [+ Tr rho, VESPO]; Pass B reads mask, logp [, old, adv (T or 1), ref, rho (T or 1),
# entropy] and writes grad (token level, or sequence level with a direct term) and 72 bytes of
# seq_stats; Pass C (sequence level) reads mask [+ grad, with a direct term] and writes grad.
@triton.jit
def _policy_loss_fwd_kernel(
    grad_ptr,  # [B, T] fp32 out
    stats_ptr,  # [B, 18] fp32 out
    logp_ptr,  # [B, T] fp32
    old_ptr,  # [B, T] fp32; unused without HAS_OLD
    adv_ptr,  # [B, Ta] fp32
    mask_ptr,  # [B, T] fp32 0/1
    ref_ptr,  # [B, T] fp32; unused when KL == 0
    rho_ptr,  # [B, Tr] fp32; unused without HAS_RHO
    ent_ptr,  # [B, T] fp32; unused without HAS_ENTROPY
    T,
    Ta,
    Tr,
    adv_st,  # 1 when Ta == T > 1 else 0 (a [B, 1] advantage broadcast over t)
    rho_st,  # same for rho
    eps_low,  # runtime float scalars (fparams order)
    eps_high,
    delta,
    beta,
    tau_pos,
    tau_neg,
    k_pos,
    lam_pos,
    k_neg,
    lam_neg,
    norm,
    LOSS_TYPE: tl.constexpr,
    AGGREGATION: tl.constexpr,
    KL: tl.constexpr,
    SEQUENCE_LEVEL: tl.constexpr,
    BIAS_KL: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    HAS_OLD: tl.constexpr,  # not on_policy
    HAS_RHO: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    # tl.cast: under the interpreter the scalars arrive as Python floats.
    eps_low = tl.cast(eps_low, tl.float32)
    eps_high = tl.cast(eps_high, tl.float32)
    delta = tl.cast(delta, tl.float32)
    beta = tl.cast(beta, tl.float32)
    tau_pos = tl.cast(tau_pos, tl.float32)
    tau_neg = tl.cast(tau_neg, tl.float32)
    k_pos = tl.cast(k_pos, tl.float32)
    lam_pos = tl.cast(lam_pos, tl.float32)
    k_neg = tl.cast(k_neg, tl.float32)
    lam_neg = tl.cast(lam_neg, tl.float32)
    norm = tl.cast(norm, tl.float32)

    i = tl.program_id(0).to(tl.int64)  # B * T may exceed 2^31: all offsets in int64
    row = i * T
    # The gradient through s_i needs a second write only when a direct d l / d logp exists.
    DIRECT: tl.constexpr = (LOSS_TYPE == 1) or (LOSS_TYPE == 3) or (KL != 0)

    # ---- Pass A: n_i, log-ratio sums -------------------------------------------------------
    n = tl.zeros((), tl.float32)
    lr = tl.zeros((), tl.float32)
    vs = tl.zeros((), tl.float32)
    for start in range(0, T, BLOCK_T):
        offs = start + tl.arange(0, BLOCK_T)
        valid = offs < T
        m = tl.load(mask_ptr + row + offs, mask=valid, other=0.0)
        n += tl.sum(m, axis=0)
        if HAS_OLD:
            if SEQUENCE_LEVEL or LOSS_TYPE == 3:
                lp = tl.load(logp_ptr + row + offs, mask=valid, other=0.0)
                old = tl.load(old_ptr + row + offs, mask=valid, other=0.0)
                d = lp - old
                if SEQUENCE_LEVEL:
                    lr += tl.sum(m * d, axis=0)
                if LOSS_TYPE == 3:
                    vs += tl.sum(m * tl.minimum(tl.maximum(d, -20.0), 20.0), axis=0)
        elif SEQUENCE_LEVEL:  # on-policy log-ratio: 0, NaN where logp is not finite (policy_loss_math.h)
            lp = tl.load(logp_ptr + row + offs, mask=valid, other=0.0)
            lr += tl.sum(m * tl.where(tl.abs(lp) < float("inf"), 0.0, float("nan")), axis=0)
    if LOSS_TYPE == 3:
        if HAS_RHO:
            for start in range(0, Tr, BLOCK_T):
                offs = start + tl.arange(0, BLOCK_T)
                valid = offs < Tr
                rho = tl.load(rho_ptr + i * Tr + offs, mask=valid, other=1.0)
                lrho = tl.minimum(tl.maximum(tl.log(rho), -18.420680743952367), 20.0)
                vs += tl.sum(tl.where(valid, lrho, 0.0), axis=0)
    n_c = tl.where(n > 1.0, n, 1.0)  # max(n_i, 1)
    if SEQUENCE_LEVEL:
        s = tl.exp(lr / n_c)
    else:
        s = tl.zeros((), tl.float32) + 1.0

    # ---- Pass B: per-token loss, gradient and metrics ----------------------------------------
    a0 = tl.load(adv_ptr + i * Ta, mask=Ta > 0, other=0.0)
    lo = 1.0 - eps_low
    hi = 1.0 + eps_high
    loss_acc = tl.zeros((), tl.float32)
    kl_acc = tl.zeros((), tl.float32)
    ent_acc = tl.zeros((), tl.float32)
    low_acc = tl.zeros((), tl.float32)
    high_acc = tl.zeros((), tl.float32)
    region_acc = tl.zeros((), tl.float32)
    cispo_acc = tl.zeros((), tl.float32)
    phi_acc = tl.zeros((), tl.float32)
    r_acc = tl.zeros((), tl.float32)
    r_min = tl.full((), float("inf"), tl.float32)
    r_max = tl.full((), float("-inf"), tl.float32)
    g_seq = tl.zeros((), tl.float32)  # G_i = sum_t w dl/dr
    for start in range(0, T, BLOCK_T):
        offs = start + tl.arange(0, BLOCK_T)
        valid = offs < T
        m = tl.load(mask_ptr + row + offs, mask=valid, other=0.0)
        lp = tl.load(logp_ptr + row + offs, mask=valid, other=0.0)
        if SEQUENCE_LEVEL:
            r = tl.zeros_like(lp) + s
        else:
            if HAS_OLD:
                old = tl.load(old_ptr + row + offs, mask=valid, other=0.0)
                r = tl.exp(lp - old)
            else:  # on-policy ratio: 1, NaN where logp is not finite (on_policy_ratio, policy_loss_math.h)
                r = tl.where(tl.abs(lp) < float("inf"), 1.0, float("nan"))
        adv = tl.load(adv_ptr + i * Ta + offs * adv_st, mask=valid, other=0.0)
        if LOSS_TYPE == 3:
            phi = _vespo_phi(vs, adv, k_pos, lam_pos, k_neg, lam_neg)
        else:
            phi = tl.zeros_like(lp)
        l, dl_dr, dl_dlogp = _policy_term(r, adv, lp, phi, eps_low, eps_high, delta, tau_pos, tau_neg,
                                          LOSS_TYPE, HAS_DELTA)
        if HAS_RHO:
            if LOSS_TYPE != 3:
                rho = tl.load(rho_ptr + i * Tr + offs * rho_st, mask=valid, other=1.0)
                l = l * rho
                dl_dr = dl_dr * rho
                dl_dlogp = dl_dlogp * rho
        if KL != 0:
            ref = tl.load(ref_ptr + row + offs, mask=valid, other=0.0)
            kl, dkl = _kl_term(lp, ref, KL)
            if BIAS_KL:
                l = l + beta * kl * r
                dl_dr = dl_dr + beta * kl
                dl_dlogp = dl_dlogp + beta * dkl * r
                kl_metric = kl * r
            else:
                l = l + beta * kl
                dl_dlogp = dl_dlogp + beta * dkl
                kl_metric = kl
            kl_acc += tl.sum(m * kl_metric, axis=0)
        if AGGREGATION == 0:
            w = m / n_c / norm
        else:
            w = m / norm
        loss_acc += tl.sum(w * l, axis=0)
        if SEQUENCE_LEVEL:
            g_seq += tl.sum(w * dl_dr, axis=0)
            if DIRECT:
                tl.store(grad_ptr + row + offs, w * dl_dlogp, mask=valid)
        else:
            tl.store(grad_ptr + row + offs, w * (dl_dr * r + dl_dlogp), mask=valid)

        if HAS_ENTROPY:
            h = tl.load(ent_ptr + row + offs, mask=valid, other=0.0)
            ent_acc += tl.sum(m * h, axis=0)
        # clipped_ratio, inlined (the interpreter's cost is per jit-function call)
        if HAS_DELTA:
            c1 = tl.where(r > delta, delta, r)
        else:
            c1 = r
        low = (c1 < lo) & (adv < 0.0)
        high = (c1 > hi) & (adv > 0.0)
        low_acc += tl.sum(m * low.to(tl.float32), axis=0)
        high_acc += tl.sum(m * high.to(tl.float32), axis=0)
        region_acc += tl.sum(m * (low | high).to(tl.float32), axis=0)
        cispo_acc += tl.sum(m * ((r > eps_high) & (adv > 0.0)).to(tl.float32), axis=0)
        if LOSS_TYPE == 3:
            phi_acc += tl.sum(m * phi, axis=0)
        r_acc += tl.sum(m * r, axis=0)
        kept = (m > 0.0) & (r == r)  # NaN ratios are skipped, as the C++ / CUDA comparisons do
        r_min = tl.minimum(r_min, tl.min(tl.where(kept, r, float("inf")), axis=0))
        r_max = tl.maximum(r_max, tl.max(tl.where(kept, r, float("-inf")), axis=0))

    # ---- Pass C: the gradient through the sequence ratio s_i ---------------------------------
    if SEQUENCE_LEVEL:
        if DIRECT:
            tl.debug_barrier()  # Pass B's stores are visible to every thread of the program
        scale = g_seq * s / n_c  # G_i s_i / max(n_i, 1)
        for start in range(0, T, BLOCK_T):
            offs = start + tl.arange(0, BLOCK_T)
            valid = offs < T
            m = tl.load(mask_ptr + row + offs, mask=valid, other=0.0)
            add = scale * m
            if DIRECT:
                g = tl.load(grad_ptr + row + offs, mask=valid, other=0.0) + add
            else:
                g = add
            tl.store(grad_ptr + row + offs, g, mask=valid)

    # ---- seq_stats -----------------------------------------------------------------------
    if HAS_DELTA:
        c1_0 = tl.where(s > delta, delta, s)
    else:
        c1_0 = s
    low_0 = (c1_0 < lo) & (a0 < 0.0)
    high_0 = (c1_0 > hi) & (a0 > 0.0)
    if LOSS_TYPE == 3:
        phi_0 = _vespo_phi(vs, a0, k_pos, lam_pos, k_neg, lam_neg)
    else:
        phi_0 = tl.zeros((), tl.float32)
    out = stats_ptr + i * 18
    tl.store(out + 0, loss_acc)
    tl.store(out + 1, n)
    tl.store(out + 2, kl_acc)
    tl.store(out + 3, ent_acc)
    tl.store(out + 4, low_acc)
    tl.store(out + 5, high_acc)
    tl.store(out + 6, region_acc)
    tl.store(out + 7, low_0.to(tl.float32))
    tl.store(out + 8, high_0.to(tl.float32))
    tl.store(out + 9, (low_0 | high_0).to(tl.float32))
    tl.store(out + 10, cispo_acc)
    tl.store(out + 11, ((s > eps_high) & (a0 > 0.0)).to(tl.float32))
    tl.store(out + 12, phi_acc)
    tl.store(out + 13, phi_0)
    tl.store(out + 14, r_acc)
    tl.store(out + 15, r_min)
    tl.store(out + 16, r_max)
    tl.store(out + 17, s)


def _as_f32(x):
    return None if x is None else x.to(torch.float32).contiguous()


def _check_bt(name, x, B, T):
    if x is not None and tuple(x.shape) != (B, T):
        raise ValueError(f"{name} must be [{B}, {T}], got {tuple(x.shape)}")


def _launch_config(T, is_cuda):
    cap = _GPU_MAX_BLOCK_T if is_cuda else _INTERPRET_MAX_BLOCK_T
    block_t = min(triton.next_power_of_2(max(T, 1)), cap)
    num_warps = 4 if block_t >= 512 else 2 if block_t >= 128 else 1
    return block_t, num_warps


def policy_loss_fwd(logp, old_logp, advantages, mask, ref_logp, rollout_is_ratio, entropy, iparams, fparams):
    """Returns (grad_logp [B, T] fp32, seq_stats [B, 18] fp32); see the raw contract."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    if len(iparams) != 7 or len(fparams) != 11:
        raise ValueError(f"expected 7 iparams and 11 fparams, got {len(iparams)} and {len(fparams)}")
    loss_type, aggregation, kl_estimator, sequence_level, bias_kl, has_delta, on_policy = (int(v) for v in iparams)
    (eps_low, eps_high, delta, beta, tau_pos, tau_neg, k_pos, lam_pos, k_neg, lam_neg,
     norm) = (float(v) for v in fparams)
    if loss_type not in (PPO_CLIP, CISPO, SAPO, VESPO):
        raise ValueError(f"unknown loss_type {loss_type}")
    if aggregation not in (SEQ_MEAN_TOKEN_MEAN, TOKEN_SUM_NORM, SEQ_MEAN_TOKEN_SUM):
        raise ValueError(f"unknown aggregation {aggregation}")
    if kl_estimator not in (KL_NONE, KL_K1, KL_K2, KL_K3):
        raise ValueError(f"unknown kl_estimator {kl_estimator}")

    B, T = logp.shape
    logp = _as_f32(logp)
    old_logp = None if on_policy else _as_f32(old_logp)
    if not on_policy and old_logp is None:
        raise ValueError("old_logp is required unless on_policy")
    advantages = _as_f32(advantages)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    mask = _as_f32(mask)
    ref_logp = _as_f32(ref_logp) if kl_estimator != KL_NONE else None
    if kl_estimator != KL_NONE and ref_logp is None:
        raise ValueError("ref_logp is required when kl_estimator != 0")
    rho = _as_f32(rollout_is_ratio)
    entropy = _as_f32(entropy)
    _check_bt("old_logp", old_logp, B, T)
    _check_bt("mask", mask, B, T)
    _check_bt("ref_logp", ref_logp, B, T)
    _check_bt("entropy", entropy, B, T)
    Ta = advantages.shape[-1]
    if advantages.dim() != 2 or advantages.shape[0] != B or Ta not in (1, T):
        raise ValueError(f"advantages must be [{B}, 1] or [{B}, {T}], got {tuple(advantages.shape)}")
    Tr = 1
    if rho is not None:
        if rho.dim() == 1:
            rho = rho.unsqueeze(-1)
        Tr = rho.shape[-1]
        if rho.dim() != 2 or rho.shape[0] != B or Tr not in (1, T):
            raise ValueError(f"rollout_is_ratio must be [{B}, 1] or [{B}, {T}], got {tuple(rho.shape)}")

    dev = logp.device
    grad = torch.empty((B, T), dtype=torch.float32, device=dev)
    stats = torch.empty((B, NUM_STATS), dtype=torch.float32, device=dev)
    if B == 0:
        return grad, stats
    block_t, num_warps = _launch_config(T, logp.is_cuda)
    _policy_loss_fwd_kernel[(B,)](
        grad,
        stats,
        logp,
        old_logp if old_logp is not None else logp,  # dummy pointers, never read
        advantages,
        mask,
        ref_logp if ref_logp is not None else logp,
        rho if rho is not None else logp,
        entropy if entropy is not None else logp,
        T,
        Ta,
        Tr,
        1 if (Ta == T and T > 1) else 0,
        1 if (Tr == T and T > 1) else 0,
        eps_low,
        eps_high,
        delta,
        beta,
        tau_pos,
        tau_neg,
        k_pos,
        lam_pos,
        k_neg,
        lam_neg,
        norm,
        LOSS_TYPE=loss_type,
        AGGREGATION=aggregation,
        KL=kl_estimator,
        SEQUENCE_LEVEL=bool(sequence_level),
        BIAS_KL=bool(bias_kl) and kl_estimator != KL_NONE,
        HAS_DELTA=bool(has_delta),
        HAS_OLD=not on_policy,
        HAS_RHO=rho is not None,
        HAS_ENTROPY=entropy is not None,
        BLOCK_T=block_t,
        num_warps=num_warps,
    )
    return grad, stats
