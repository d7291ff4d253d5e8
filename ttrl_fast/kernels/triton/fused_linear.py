"""Triton kernels of the fused LM head: log-probs (and entropy) of ``hidden @ weight.T (+ bias)`` at
the target ids, without ever materialising the [N, V] logits.

Forward: one program per block of BLOCK_N tokens, looping over the vocabulary in BLOCK_V tiles; each
tile of logits is computed in registers by tl.dot with fp32 accumulation over H in BLOCK_K steps
(never rounded to bf16) and folded into a per-row online log-sum-exp. The numerics are those of the
selective log-softmax kernels (``selective_log_softmax.py``, ``csrc/include/ttrl_fast/logprob_math.h``):
every quantity is relative to the running raw row max m, d_v = (x_v - m) * inv_t,
s = sum exp(d), w = sum exp(d) * d, logp_y = d_y - log s, entropy = log s - w / s, and
stats = (m, log s) as in the ``selective_log_softmax`` raw contract (``ttrl_fast/kernels/__init__.py``).
Rows holding NaN or +inf logits are poisoned (NaN outputs); -inf logits (e.g. a -inf bias) have p = 0.

Backward: deterministic, no atomics. Both kernels recompute the logits tile and form
    dlogits_v = inv_t * (g_logp * (1[v == y] - p_v) - g_ent * p_v * (log p_v + H))
from the saved stats (p_v = 0 entries add nothing to the entropy term).
  * dX: one program per token block, looping over vocab tiles: dX[rows] += dlogits @ W_tile.
  * dW / db: one program per vocab block, looping over token blocks in a fixed order:
    dW[cols] += dlogits^T @ X_block, db[cols] += column sums.
The [BLOCK_N, H] / [BLOCK_V, H] accumulators do not fit in registers for real H, so each program
accumulates into its own rows of the fp32 output (read-modify-write in BLOCK_K slices, owned by
exactly one program: no races, fixed order). Token blocks without a valid row are skipped.

Matmul precision: 16-bit operands of the same dtype go to tl.dot natively (exact products, fp32
accumulation). fp32 operands, mixed dtypes and every gradient matmul (dlogits are fp32) run as fp32
dots with input_precision=_FP32_DOT_PRECISION ("ieee": the fp32 result torch gives without TF32).

Self-contained on purpose (torch + triton only).
"""

import torch
import triton
import triton.language as tl

# fp32 tl.dot precision. "ieee" matches torch's fp32 matmul (TF32 off); "tf32x3" (NVIDIA only) is
# close to fp32 accuracy on tensor cores and is the lever to benchmark on a GPU.
_FP32_DOT_PRECISION = "ieee"

# Launch configurations. tl.dot needs every block dim >= 16. Under TRITON_INTERPRET=1 (CPU tensors)
# small tiles keep the multi-tile paths (ragged H, several vocab tiles, several token blocks)
# exercised by tiny test shapes. On a GPU fp32 operands use BLOCK_K = 32 to bound shared memory.
_GPU_CONFIG = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=64, num_warps=8)
_GPU_CONFIG_FP32 = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=32, num_warps=8)
_INTERPRET_CONFIG = dict(BLOCK_N=16, BLOCK_V=32, BLOCK_K=16, num_warps=1)


@triton.jit
def _logits_tile(
    hidden_ptr,  # [N, H] contiguous
    weight_ptr,  # [V, H] contiguous
    bias_ptr,  # [V]; unused without HAS_BIAS
    rows,  # [BLOCK_N] int64 token ids
    row_ok,  # [BLOCK_N] rows to read (others load 0: invalid rows never touch the math)
    cols,  # [BLOCK_V] int64 vocab ids
    col_ok,  # [BLOCK_V]
    H,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """fp32 logits tile [BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols].T (+ bias[cols])."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(hidden_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * H + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(h, tl.trans(w), acc)  # 16-bit x 16-bit -> fp32 accumulation
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _dlogits(
    acc,  # [BLOCK_N, BLOCK_V] fp32 raw logits
    cols,
    col_ok,
    keep,  # [BLOCK_N] valid rows
    y,  # [BLOCK_N] int64 targets
    row_max,  # [BLOCK_N] stats[:, 0]
    log_s,  # [BLOCK_N] stats[:, 1]
    g_logp,  # [BLOCK_N] (zeros without HAS_GRAD_LOGP)
    g_ent,  # [BLOCK_N] (zeros without HAS_GRAD_ENTROPY)
    h,  # [BLOCK_N] forward entropy (zeros without HAS_GRAD_ENTROPY)
    inv_t,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
):
    """d loss / d logits for one tile; exactly 0 on padded columns and invalid rows."""
    x = tl.where(col_ok[None, :], acc, float("-inf"))
    logp_v = (x - row_max[:, None]) * inv_t - log_s[:, None]
    p = tl.exp(logp_v)
    g = tl.zeros(acc.shape, tl.float32)
    if HAS_GRAD_LOGP:
        g = tl.where(cols[None, :] == y[:, None], g_logp[:, None], 0.0) - g_logp[:, None] * p
    if HAS_GRAD_ENTROPY:
        g -= g_ent[:, None] * tl.where(p > 0, p * (logp_v + h[:, None]), 0.0)  # p = 0: 0 * (-inf) = 0
    return tl.where(keep[:, None] & col_ok[None, :], g * inv_t, 0.0)


# Per token block: reads BLOCK_N * H hidden values per vocab tile (L2-resident) and the whole weight
# once; writes 4 (logp) + 4 (entropy) + 8 (stats) bytes per token.
@triton.jit
def _fused_linear_fwd_kernel(
    hidden_ptr,  # [N, H] fp32/bf16/fp16 contiguous
    weight_ptr,  # [V, H] contiguous
    bias_ptr,  # [V]; unused without HAS_BIAS
    targets_ptr,  # [N] int64
    valid_ptr,  # [N] uint8 (bool viewed as bytes)
    logp_ptr,  # [N] fp32 out
    entropy_ptr,  # [N] fp32 out; unused without WITH_ENTROPY
    stats_ptr,  # [N, 2] fp32 out: (raw row max, log sum)
    N,
    V,
    H,
    inv_t,  # runtime scalar: one compiled kernel serves every temperature
    HAS_BIAS: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)  # tl.cast: under the interpreter inv_t is a Python float
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # N * H exceeds 2^31: int64
    row_in = rows < N
    keep = tl.load(valid_ptr + rows, mask=row_in, other=0) != 0
    y = tl.load(targets_ptr + rows, mask=keep, other=0)
    # A block without a valid row skips the vocab loop entirely.
    n_v = tl.where(tl.max(keep.to(tl.int32), axis=0) > 0, V, 0)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # running raw max (-inf while empty)
    s = tl.zeros((BLOCK_N,), tl.float32)  # sum exp(d), relative to m
    w = tl.zeros((BLOCK_N,), tl.float32)  # sum exp(d) * d, relative to m
    x_y = tl.zeros((BLOCK_N,), tl.float32)  # raw target logit
    bad = tl.zeros((BLOCK_N,), tl.int32)  # row holds NaN or +inf
    for v0 in range(0, n_v, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_ok = cols < V
        acc = _logits_tile(hidden_ptr, weight_ptr, bias_ptr, rows, keep, cols, col_ok, H,
                           HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_K)
        x = tl.where(col_ok[None, :], acc, float("-inf"))
        # The target's raw logit, when its tile passes (exactly one hit per valid row overall).
        x_y += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
        # NaN / +inf poison the row through `bad`; replacing them by -inf keeps the max and the sums
        # well defined regardless of how tl.max treats NaN on a given target.
        is_bad = (x != x) | (x == float("inf"))
        bad = bad | tl.max(is_bad.to(tl.int32), axis=1)
        x = tl.where(is_bad, float("-inf"), x)

        # Rebase on the new max. An empty state (s == 0) only takes the new max: dm = 0 there avoids
        # (-inf) - (-inf); c * (w + s * dm) is the exact shift of w.
        m_new = tl.maximum(m, tl.max(x, axis=1))
        dm = tl.where(s > 0, (m - m_new) * inv_t, 0.0)  # <= 0
        c = tl.exp(dm)
        if WITH_ENTROPY:
            w = c * (w + s * dm)
        s = c * s
        m = m_new

        # -inf entries contribute exactly 0 (also while m is still -inf, where x - m is NaN).
        d = (x - m[:, None]) * inv_t  # <= 0
        e = tl.where(x == float("-inf"), 0.0, tl.exp(d))
        s += tl.sum(e, axis=1)
        if WITH_ENTROPY:
            w += tl.sum(tl.where(e > 0, e * d, 0.0), axis=1)  # 0 * (-inf) counts as 0

    log_s = tl.log(s)
    logp = (x_y - m) * inv_t - log_s
    logp = tl.where(logp > 0, 0.0, logp)  # rounding can give +1 ulp; NaN > 0 is False: NaN stays
    target_ok = (y >= 0) & (y < V)  # out-of-range index: NaN, never an out-of-bounds read
    logp = tl.where(target_ok, logp, float("nan"))
    poisoned = bad != 0
    logp = tl.where(poisoned, float("nan"), logp)
    tl.store(logp_ptr + rows, tl.where(keep, logp, 0.0), mask=row_in)
    if WITH_ENTROPY:
        h = log_s - w / s
        h = tl.where(h < 0, 0.0, h)
        h = tl.where(poisoned, float("nan"), h)
        tl.store(entropy_ptr + rows, tl.where(keep, h, 0.0), mask=row_in)
    tl.store(stats_ptr + 2 * rows, tl.where(keep, tl.where(poisoned, float("nan"), m), 0.0), mask=row_in)
    tl.store(stats_ptr + 2 * rows + 1, tl.where(keep, tl.where(poisoned, float("nan"), log_s), 0.0), mask=row_in)


@triton.jit
def _load_row_grads(
    rows,
    keep,
    targets_ptr,
    stats_ptr,
    grad_logp_ptr,
    grad_entropy_ptr,
    entropy_ptr,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
):
    """Per-row inputs of the backward: (y, row_max, log_s, g_logp, g_ent, entropy)."""
    y = tl.load(targets_ptr + rows, mask=keep, other=0)
    row_max = tl.load(stats_ptr + 2 * rows, mask=keep, other=0.0)
    log_s = tl.load(stats_ptr + 2 * rows + 1, mask=keep, other=0.0)
    g_logp = tl.zeros(row_max.shape, tl.float32)
    g_ent = tl.zeros(row_max.shape, tl.float32)
    h = tl.zeros(row_max.shape, tl.float32)
    if HAS_GRAD_LOGP:
        g_logp = tl.load(grad_logp_ptr + rows, mask=keep, other=0.0)
    if HAS_GRAD_ENTROPY:
        g_ent = tl.load(grad_entropy_ptr + rows, mask=keep, other=0.0)
        h = tl.load(entropy_ptr + rows, mask=keep, other=0.0)
    return y, row_max, log_s, g_logp, g_ent, h


# dX: per token block, per vocab tile: recompute the tile (reads BLOCK_V * H weights), then
# dX[rows] += dlogits @ W_tile, read-modify-write of the block's own [BLOCK_N, H] fp32 rows.
@triton.jit
def _fused_linear_bwd_dx_kernel(
    dx_ptr,  # [N, H] fp32 out, zero-initialised
    grad_logp_ptr,  # [N] fp32; unused without HAS_GRAD_LOGP
    grad_entropy_ptr,  # [N] fp32; unused without HAS_GRAD_ENTROPY
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    valid_ptr,
    stats_ptr,  # [N, 2] fp32 from the forward
    entropy_ptr,  # [N] fp32; unused without HAS_GRAD_ENTROPY
    N,
    V,
    H,
    inv_t,
    HAS_BIAS: tl.constexpr,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < N
    keep = tl.load(valid_ptr + rows, mask=row_in, other=0) != 0
    y, row_max, log_s, g_logp, g_ent, h = _load_row_grads(rows, keep, targets_ptr, stats_ptr,
                                                          grad_logp_ptr, grad_entropy_ptr, entropy_ptr,
                                                          HAS_GRAD_LOGP, HAS_GRAD_ENTROPY)
    n_v = tl.where(tl.max(keep.to(tl.int32), axis=0) > 0, V, 0)  # all-invalid block: dX stays 0
    for v0 in range(0, n_v, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_ok = cols < V
        acc = _logits_tile(hidden_ptr, weight_ptr, bias_ptr, rows, keep, cols, col_ok, H,
                           HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_K)
        g = _dlogits(acc, cols, col_ok, keep, y, row_max, log_s, g_logp, g_ent, h, inv_t,
                     HAS_GRAD_LOGP, HAS_GRAD_ENTROPY)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < H
            wt = tl.load(weight_ptr + cols[:, None] * H + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                         other=0.0)  # [BLOCK_V, BLOCK_K]
            part = tl.dot(g, wt.to(tl.float32), input_precision=PRECISION)  # [BLOCK_N, BLOCK_K]
            ptrs = dx_ptr + rows[:, None] * H + ks[None, :]
            io = row_in[:, None] & k_ok[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=io, other=0.0) + part, mask=io)


# dW / db: per vocab block, per token block (fixed order): recompute the tile, then
# dW[cols] += dlogits^T @ X_block (read-modify-write of the block's own [BLOCK_V, H] fp32 rows),
# db[cols] += column sums (registers, stored once).
@triton.jit
def _fused_linear_bwd_dw_kernel(
    dw_ptr,  # [V, H] fp32 out, zero-initialised; unused without NEED_DW
    db_ptr,  # [V] fp32 out; unused without NEED_DB
    grad_logp_ptr,
    grad_entropy_ptr,
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    valid_ptr,
    stats_ptr,
    entropy_ptr,
    N,
    V,
    H,
    inv_t,
    HAS_BIAS: tl.constexpr,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)
    cols = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    db_acc = tl.zeros((BLOCK_V,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_in = rows < N
        keep = tl.load(valid_ptr + rows, mask=row_in, other=0) != 0
        if tl.max(keep.to(tl.int32), axis=0) > 0:  # token blocks without a valid row add nothing
            y, row_max, log_s, g_logp, g_ent, h = _load_row_grads(rows, keep, targets_ptr, stats_ptr,
                                                                  grad_logp_ptr, grad_entropy_ptr, entropy_ptr,
                                                                  HAS_GRAD_LOGP, HAS_GRAD_ENTROPY)
            acc = _logits_tile(hidden_ptr, weight_ptr, bias_ptr, rows, keep, cols, col_ok, H,
                               HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_K)
            g = _dlogits(acc, cols, col_ok, keep, y, row_max, log_s, g_logp, g_ent, h, inv_t,
                         HAS_GRAD_LOGP, HAS_GRAD_ENTROPY)
            if NEED_DB:
                db_acc += tl.sum(g, axis=0)
            if NEED_DW:
                gt = tl.trans(g)  # [BLOCK_V, BLOCK_N]
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < H
                    # Invalid rows load 0: garbage (NaN) hidden there must not reach dW (0 * NaN).
                    xb = tl.load(hidden_ptr + rows[:, None] * H + ks[None, :], mask=keep[:, None] & k_ok[None, :],
                                 other=0.0)  # [BLOCK_N, BLOCK_K]
                    part = tl.dot(gt, xb.to(tl.float32), input_precision=PRECISION)  # [BLOCK_V, BLOCK_K]
                    ptrs = dw_ptr + cols[:, None] * H + ks[None, :]
                    io = col_ok[:, None] & k_ok[None, :]
                    tl.store(ptrs, tl.load(ptrs, mask=io, other=0.0) + part, mask=io)
    if NEED_DB:
        tl.store(db_ptr + cols, db_acc, mask=col_ok)


# ------------------------------------------------------------------------------------------------
# Host wrappers
# ------------------------------------------------------------------------------------------------

def _check(hidden, weight, bias, targets, valid):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, H] and weight [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"unsupported {name} dtype {t.dtype}")
    n, v = hidden.shape[0], weight.shape[0]
    if bias is not None and bias.shape != (v,):
        raise ValueError(f"bias must be [V] = ({v},), got {tuple(bias.shape)}")
    if targets.shape != (n,) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be [N] int64, got {tuple(targets.shape)} {targets.dtype}")
    if valid.shape != (n,) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be [N] bool, got {tuple(valid.shape)} {valid.dtype}")


def _launch_config(hidden, weight):
    """(block sizes and num_warps, UPCAST, PRECISION)."""
    same16 = hidden.dtype == weight.dtype and hidden.dtype != torch.float32
    if hidden.is_cuda:
        cfg = _GPU_CONFIG if same16 else _GPU_CONFIG_FP32
        upcast = not same16
    else:
        # The interpreter's bf16 tl.dot returns garbage (triton 3.8): bf16 goes through fp32 there.
        cfg = _INTERPRET_CONFIG
        upcast = not same16 or hidden.dtype == torch.bfloat16
    return dict(cfg), upcast, _FP32_DOT_PRECISION


def fused_linear_logprob_fwd(hidden, weight, bias, targets, valid, inv_temperature: float, with_entropy: bool):
    """Returns (logp [N] fp32, entropy [N] fp32 or empty(0), stats [N, 2] fp32).

    hidden [N, H], weight [V, H] (fp32/bf16/fp16), bias [V] or None, targets [N] int64 in [0, V)
    where valid, valid [N] bool. Invalid rows: logp 0, entropy 0, stats (0, 0).
    """
    _check(hidden, weight, bias, targets, valid)
    hidden, weight, targets, valid = hidden.contiguous(), weight.contiguous(), targets.contiguous(), valid.contiguous()
    bias = None if bias is None else bias.contiguous()
    n, hdim = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    logp = torch.zeros(n, dtype=torch.float32, device=dev)
    entropy = torch.zeros(n if with_entropy else 0, dtype=torch.float32, device=dev)
    stats = torch.zeros(n, 2, dtype=torch.float32, device=dev)
    if n == 0:
        return logp, entropy, stats
    cfg, upcast, precision = _launch_config(hidden, weight)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    _fused_linear_fwd_kernel[grid](
        hidden,
        weight,
        bias if bias is not None else hidden,  # dummy pointer, never read
        targets,
        valid.view(torch.uint8),
        logp,
        entropy if with_entropy else logp,  # dummy pointer, never written
        stats,
        n,
        v,
        hdim,
        float(inv_temperature),
        HAS_BIAS=bias is not None,
        WITH_ENTROPY=bool(with_entropy),
        UPCAST=upcast,
        PRECISION=precision,
        **cfg,
    )
    return logp, entropy, stats


def fused_linear_logprob_bwd(grad_logp, grad_entropy, hidden, weight, bias, targets, valid, stats, entropy,
                             inv_temperature: float, need_dx: bool, need_dw: bool, need_db: bool):
    """Returns (dx [N, H] fp32 or None, dw [V, H] fp32 or None, db [V] fp32 or None).

    grad_logp / grad_entropy: [N] fp32 or None (= zeros); entropy: the forward's entropy [N] when
    grad_entropy is given; stats: the forward's [N, 2]. Invalid rows contribute nothing.
    """
    _check(hidden, weight, bias, targets, valid)
    hidden, weight, targets, valid = hidden.contiguous(), weight.contiguous(), targets.contiguous(), valid.contiguous()
    bias = None if bias is None else bias.contiguous()
    n, hdim = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    dx = torch.zeros(n, hdim, dtype=torch.float32, device=dev) if need_dx else None
    dw = torch.zeros(v, hdim, dtype=torch.float32, device=dev) if need_dw else None
    db = torch.zeros(v, dtype=torch.float32, device=dev) if need_db else None
    if n == 0 or v == 0 or (grad_logp is None and grad_entropy is None) or not (need_dx or need_dw or need_db):
        return dx, dw, db
    if stats.shape != (n, 2):
        raise ValueError(f"stats must be [N, 2], got {tuple(stats.shape)}")
    if grad_entropy is not None and (entropy is None or entropy.numel() != n):
        raise ValueError("grad_entropy given but the forward's entropy was not computed")
    stats = stats.float().contiguous()
    grad_logp = None if grad_logp is None else grad_logp.float().contiguous()
    if grad_entropy is not None:
        grad_entropy, entropy = grad_entropy.float().contiguous(), entropy.float().contiguous()
    cfg, upcast, precision = _launch_config(hidden, weight)
    common = (
        grad_logp if grad_logp is not None else stats,  # dummy pointers, never read
        grad_entropy if grad_entropy is not None else stats,
        hidden,
        weight,
        bias if bias is not None else hidden,
        targets,
        valid.view(torch.uint8),
        stats,
        entropy if grad_entropy is not None else stats,
        n,
        v,
        hdim,
        float(inv_temperature),
    )
    flags = dict(HAS_BIAS=bias is not None, HAS_GRAD_LOGP=grad_logp is not None,
                 HAS_GRAD_ENTROPY=grad_entropy is not None)
    if need_dx:
        _fused_linear_bwd_dx_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
            dx, *common, **flags, UPCAST=upcast, PRECISION=precision, **cfg)
    if need_dw or need_db:
        _fused_linear_bwd_dw_kernel[(triton.cdiv(v, cfg["BLOCK_V"]),)](
            dw if need_dw else stats,  # dummy pointers, never written
            db if need_db else stats,
            *common, **flags, NEED_DW=bool(need_dw), NEED_DB=bool(need_db), UPCAST=upcast,
            PRECISION=precision, **cfg)
    return dx, dw, db
