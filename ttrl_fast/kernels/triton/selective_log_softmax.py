"""Triton backend of ``selective_log_softmax`` (raw contract: ``ttrl_fast/kernels/__init__.py``).

One program per row, looping over the vocabulary in BLOCK_V chunks. The numerics mirror
``csrc/include/ttrl_fast/logprob_math.h``: every quantity is kept relative to the running raw row
max m, d_v = (x_v - m) * inv_t, so a common offset of 1e4 on the logits costs no precision;
s = sum exp(d), w = sum exp(d) * d, logp_y = d_y - log s, entropy = log s - w / s.
Rows holding NaN or +inf are poisoned (NaN outputs), -inf entries have p = 0.

Self-contained on purpose (torch + triton only): ttrl_fast imports it only when triton imports.
"""

import torch
import triton
import triton.language as tl

# Chunk cap on GPU: 4096 fp32 = 16 KiB of registers per row, 16 values per thread at 8 warps.
_GPU_MAX_BLOCK_V = 4096
# Under TRITON_INTERPRET=1 (CPU tensors) small chunks keep the multi-chunk path exercised by tiny
# test shapes; the interpreter's cost is per program, not per element, so this is not slower.
_INTERPRET_MAX_BLOCK_V = 64


# Bytes per unmasked row: reads V * sizeof(logits) + 8 (index) + 1 (mask) + one target logit;
# writes 4 (logp) + 4 (entropy, WITH_ENTROPY only) + 8 (stats). Masked rows read only the mask and
# write the zero outputs: the vocab loop has zero trips.
@triton.jit
def _selective_log_softmax_fwd_kernel(
    logits_ptr,  # [A, B, V] fp32/bf16/fp16, stride(-1) == 1
    index_ptr,  # [A*B] int64
    mask_ptr,  # [A*B] uint8 (bool viewed as bytes); unused without HAS_MASK
    logp_ptr,  # [A*B] fp32 out
    entropy_ptr,  # [A*B] fp32 out; unused without WITH_ENTROPY
    stats_ptr,  # [A*B, 2] fp32 out: (raw row max, log sum)
    B,
    V,
    stride0,
    stride1,
    inv_t,  # runtime scalar: one compiled kernel serves every temperature
    HAS_MASK: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)  # tl.cast: under the interpreter inv_t is a Python float
    row = tl.program_id(0).to(tl.int64)  # rows * V exceeds 2^31: all offsets in int64
    row_ptr = logits_ptr + (row // B) * stride0 + (row % B) * stride1

    if HAS_MASK:
        keep = tl.load(mask_ptr + row) != 0
    else:
        keep = row >= 0  # always True, as a tensor so both branches share the code below
    n_v = tl.where(keep, V, 0)  # masked rows skip the vocab loop entirely

    m = tl.full((), float("-inf"), tl.float32)  # running raw max (-inf while empty)
    s = tl.zeros((), tl.float32)  # sum exp(d), relative to m
    w = tl.zeros((), tl.float32)  # sum exp(d) * d, relative to m
    bad = tl.zeros((), tl.int32)  # row holds NaN or +inf
    for start in range(0, n_v, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        # NaN / +inf poison the row through `bad`; replacing them by -inf keeps the max and the
        # sums well defined regardless of how tl.max treats NaN on a given target.
        is_bad = (x != x) | (x == float("inf"))
        bad = bad | tl.max(is_bad.to(tl.int32), axis=0)
        x = tl.where(is_bad, float("-inf"), x)

        # Rebase the state on the new max. An empty state (s == 0) only takes the new max:
        # dx = 0 there avoids (-inf) - (-inf); c * (w + s * dx) is the exact shift of w.
        m_new = tl.maximum(m, tl.max(x, axis=0))
        dx = tl.where(s > 0, (m - m_new) * inv_t, 0.0)  # <= 0
        c = tl.exp(dx)
        if WITH_ENTROPY:
            w = c * (w + s * dx)
        s = c * s
        m = m_new

        # -inf entries contribute exactly 0 (also when m is still -inf, where x - m is NaN).
        d = (x - m) * inv_t  # [BLOCK_V], <= 0
        e = tl.where(x == float("-inf"), 0.0, tl.exp(d))
        s += tl.sum(e, axis=0)
        if WITH_ENTROPY:
            w += tl.sum(tl.where(e > 0, e * d, 0.0), axis=0)  # 0 * (-inf) counts as 0

    y = tl.load(index_ptr + row)
    target_ok = (y >= 0) & (y < V)
    # Out-of-range index: never read out of bounds, write NaN instead (defence in depth).
    x_y = tl.load(row_ptr + y, mask=target_ok & keep, other=0.0).to(tl.float32)

    log_s = tl.log(s)
    logp = (x_y - m) * inv_t - log_s
    logp = tl.where(logp > 0, 0.0, logp)  # rounding can give +1 ulp; NaN > 0 is False: NaN stays
    logp = tl.where(target_ok, logp, float("nan"))
    poisoned = bad != 0
    logp = tl.where(poisoned, float("nan"), logp)
    tl.store(logp_ptr + row, tl.where(keep, logp, 0.0))
    if WITH_ENTROPY:
        h = log_s - w / s
        h = tl.where(h < 0, 0.0, h)
        h = tl.where(poisoned, float("nan"), h)
        tl.store(entropy_ptr + row, tl.where(keep, h, 0.0))
    tl.store(stats_ptr + 2 * row, tl.where(keep, tl.where(poisoned, float("nan"), m), 0.0))
    tl.store(stats_ptr + 2 * row + 1, tl.where(keep, tl.where(poisoned, float("nan"), log_s), 0.0))


# Bytes per unmasked row: reads V * sizeof(logits) + 8 (stats) + 8 (index) + 1 (mask) + 4 (grad_logp)
# + 8 (grad_entropy and entropy, HAS_GRAD_ENTROPY only); writes V * sizeof(logits) (gradient).
# Masked rows skip the logits read but still write V zeros (the gradient is allocated uninitialised).
@triton.jit
def _selective_log_softmax_bwd_kernel(
    grad_logits_ptr,  # [A*B, V] out, logits.dtype, contiguous
    grad_logp_ptr,  # [A*B] fp32; unused without HAS_GRAD_LOGP
    grad_entropy_ptr,  # [A*B] fp32; unused without HAS_GRAD_ENTROPY
    logits_ptr,  # [A, B, V], stride(-1) == 1
    index_ptr,  # [A*B] int64
    mask_ptr,  # [A*B] uint8; unused without HAS_MASK
    stats_ptr,  # [A*B, 2] fp32: (raw row max, log sum)
    entropy_ptr,  # [A*B] fp32; unused without HAS_GRAD_ENTROPY
    B,
    V,
    stride0,
    stride1,
    inv_t,  # runtime scalar
    HAS_MASK: tl.constexpr,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // B) * stride0 + (row % B) * stride1
    out_ptr = grad_logits_ptr + row * V

    if HAS_MASK:
        keep = tl.load(mask_ptr + row) != 0
    else:
        keep = row >= 0

    row_max = tl.load(stats_ptr + 2 * row)
    log_s = tl.load(stats_ptr + 2 * row + 1)
    y = tl.load(index_ptr + row)
    g_logp = tl.zeros((), tl.float32)
    if HAS_GRAD_LOGP:
        g_logp = tl.load(grad_logp_ptr + row)
    if HAS_GRAD_ENTROPY:
        g_ent = tl.load(grad_entropy_ptr + row)
        h = tl.load(entropy_ptr + row)

    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid & keep, other=float("-inf")).to(tl.float32)
        logp_v = (x - row_max) * inv_t - log_s  # [BLOCK_V]
        p = tl.exp(logp_v)
        g = tl.where(offs == y, g_logp, 0.0) - g_logp * p
        if HAS_GRAD_ENTROPY:
            g -= g_ent * tl.where(p > 0, p * (logp_v + h), 0.0)  # p = 0 entries: 0 * (-inf) = 0
        g = tl.where(keep, g * inv_t, 0.0)
        tl.store(out_ptr + offs, g.to(grad_logits_ptr.dtype.element_ty), mask=valid)


def _launch_config(logits):
    V = logits.shape[-1]
    cap = _GPU_MAX_BLOCK_V if logits.is_cuda else _INTERPRET_MAX_BLOCK_V
    block_v = min(triton.next_power_of_2(max(V, 1)), cap)
    num_warps = 8 if block_v >= 4096 else 4 if block_v >= 1024 else 2 if block_v >= 256 else 1
    return block_v, num_warps


def _check_logits(logits):
    if logits.dim() != 3:
        raise ValueError(f"logits must be [A, B, V], got shape {tuple(logits.shape)}")
    if logits.stride(-1) != 1:
        raise ValueError("logits must have stride(-1) == 1")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"unsupported logits dtype {logits.dtype}")


def _mask_bytes(mask):
    # A bool tensor viewed as uint8 (no copy): byte loads behave the same on every target.
    return None if mask is None else mask.view(torch.uint8)


def selective_log_softmax_fwd(logits, index, mask, inv_temperature: float, with_entropy: bool):
    """Returns (logp [A*B] fp32, entropy [A*B] fp32 or empty, stats [A*B, 2] fp32)."""
    _check_logits(logits)
    A, B, V = logits.shape
    rows = A * B
    dev = logits.device
    logp = torch.empty(rows, dtype=torch.float32, device=dev)
    entropy = torch.empty(rows if with_entropy else 0, dtype=torch.float32, device=dev)
    stats = torch.empty(rows, 2, dtype=torch.float32, device=dev)
    if rows == 0:
        return logp, entropy, stats
    mask_u8 = _mask_bytes(mask)
    block_v, num_warps = _launch_config(logits)
    _selective_log_softmax_fwd_kernel[(rows,)](
        logits,
        index,
        mask_u8 if mask_u8 is not None else index,  # dummy pointer, never read
        logp,
        entropy if with_entropy else logp,  # dummy pointer, never written
        stats,
        B,
        V,
        logits.stride(0),
        logits.stride(1),
        float(inv_temperature),
        HAS_MASK=mask_u8 is not None,
        WITH_ENTROPY=bool(with_entropy),
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return logp, entropy, stats


def selective_log_softmax_bwd(
    grad_logp, grad_entropy, logits, index, mask, stats, entropy, inv_temperature: float
):
    """Returns a fresh contiguous [A, B, V] gradient of logits.dtype (zeros on masked rows)."""
    _check_logits(logits)
    A, B, V = logits.shape
    rows = A * B
    grad_logits = torch.empty((A, B, V), dtype=logits.dtype, device=logits.device)
    if rows == 0 or V == 0:
        return grad_logits
    if grad_entropy is not None and entropy.numel() != rows:
        raise ValueError("grad_entropy given but the forward's entropy was not computed")
    mask_u8 = _mask_bytes(mask)
    block_v, num_warps = _launch_config(logits)
    _selective_log_softmax_bwd_kernel[(rows,)](
        grad_logits,
        grad_logp if grad_logp is not None else stats,  # dummy pointers, never read
        grad_entropy if grad_entropy is not None else stats,
        logits,
        index,
        mask_u8 if mask_u8 is not None else index,
        stats,
        entropy if grad_entropy is not None else stats,
        B,
        V,
        logits.stride(0),
        logits.stride(1),
        float(inv_temperature),
        HAS_MASK=mask_u8 is not None,
        HAS_GRAD_LOGP=grad_logp is not None,
        HAS_GRAD_ENTROPY=grad_entropy is not None,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return grad_logits
