"""Triton backend of ``sample_tokens`` (raw contract: ``ttrl_fast/kernels/__init__.py``; math, tie
rules and the noise hash: ``ttrl_fast/reference/sampling.py``).

One program per row, looping over the vocabulary in chunks; every per-chunk quantity is a per-lane
state, reduced once per pass. Values are kept relative to a max, so a common offset on the logits
costs no precision and nothing overflows:

    x   = logits (fp32)     s = penalised (HF rule on seen tokens), banned (-inf) x
    z'  = (s - max s) * inv_t  <= 0, the processed logits up to their (irrelevant) shift

    Stats pass  online max / sum exp of x * inv_t (raw) and of s * inv_t (processed). Without
                truncation the exponential race runs in the same pass (each lane against its own
                running max) and the row takes one read.
    Searches    truncation only: top-k and top-p are each one threshold on z', found exactly by a
                search over the order-preserving int32 key of the fp32 z' values (see
                _KEY_NEG_INF): NPIV pivots per pass over the row, the interval snapped to the keys
                present in the row, until no key is left strictly inside (_search):
                    top_k  c_k = max{c : #{v : key_v >= c} >= k}
                    top_p  c_p = max{c : sum_{v : key_v >= c, key_v >= c_k} exp z'_v >= top_p S_k},
                           S_k = sum_{v : key_v >= c_k} exp z'_v (gathered by the top-k search)
                    min_p  c_m = key(log min_p)    (the row max has z' = 0)
                keep v  iff  key_v >= max(c_k, c_p, c_m) and z'_v > -inf. This is exactly the
                spec's set: each rule compares a value only with the count or mass of the values
                strictly above it, so tied values are kept or cut together.
    Race pass   truncation only: sum exp z' over the kept set, and the race over it.

Race: token = first argmax over kept v of z'_v - log(-log u_v), u_v from the spec's counter hash in
uint32 arithmetic (bit-exact with the spec: uniform_noise() below runs the same helpers for the
tests). Greedy: the first argmax of s, inv_t = 1, nothing cut. Rows holding NaN or +inf logits are
poisoned (NaN log-probs; the token is still in [0, V)), like selective_log_softmax.

Self-contained on purpose (torch + triton only): ttrl_fast imports it only when triton imports.
"""

import math

import torch
import triton
import triton.language as tl

# Chunk caps on GPU: the stats / race pass keeps ~9 per-lane [BLOCK_V] states and a search pass four
# [BLOCK_S, NPIV] per-lane accumulators: 8 values per thread each at 8 warps (sm_90 ptxas: 80 to 128
# registers, no spills, so two programs fit per SM).
_GPU_MAX_BLOCK_V = 2048
_GPU_MAX_BLOCK_S = 128
# Under TRITON_INTERPRET=1 (CPU tensors) small chunks keep the multi-chunk paths exercised by tiny
# test shapes.
_INTERPRET_MAX_BLOCK_V = 64
# Pivots per search pass: each pass narrows the key interval at least 16-fold (31 bits in <= 8
# passes), in practice by the number of row values it holds (2 to 7 passes for V = 152k).
_NUM_PIVOTS = 16

_MASK32 = 0xFFFFFFFF
# Order-preserving int32 key of a non-NaN fp32 z: b = bits(z) as int32; key = b ^ 0x7FFFFFFF if b < 0
# else b, and 0 for -0.0 (so -0.0 and +0.0, equal values, share a key); key(a) < key(b) iff a < b.
# Written inline where used. The smallest key, key(-inf):
_KEY_NEG_INF = tl.constexpr(-2139095041)


@triton.jit
def _mix32(x):
    """The spec's mix32 on a uint32 tensor (products wrap mod 2^32)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _uniform(step_key, v):
    """u_v in [2^-24, 1 - 2^-24] (fp32) for token ids v (int tensor) under a row's uint32 step key.
    Exact: h >> 9 < 2^23 converts exactly and + 0.5 fits in 24 bits. mix32 is inlined (one jit call
    per chunk, see below)."""
    h = step_key ^ (v.to(tl.uint32) * tl.full((), 0x9E3779B9, tl.uint32))
    h = h ^ (h >> 16)
    h = h * tl.full((), 0x7FEB352D, tl.uint32)
    h = h ^ (h >> 15)
    h = h * tl.full((), 0x846CA68B, tl.uint32)
    h = h ^ (h >> 16)
    return ((h >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2^-23


@triton.jit
def _step_key(ROW_KEYS, row, step):
    """mix32(row_key ^ mix32(step + GOLDEN)), uint32."""
    k = tl.load(ROW_KEYS + row).to(tl.uint32)  # values in [0, 2^32): truncation keeps them
    s = tl.cast(step, tl.int64).to(tl.uint32) + tl.full((), 0x9E3779B9, tl.uint32)
    return _mix32(k ^ _mix32(s))


# The vocabulary loops inline most of their per-chunk code (the key, the penalty): under
# TRITON_INTERPRET=1 every jit-function call re-patches triton.language (about a millisecond).
@triton.jit
def _search(ROW, SEEN_ROW, BAN, V, penalty, s_max, inv_t, lo, hi, target, floor, mass_lo,
            BY_MASS: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_BAN: tl.constexpr,
            BLOCK_S: tl.constexpr, NPIV: tl.constexpr):
    """(c, mass(c)) with c = max{c in [lo, hi) : F(c) >= target}, given F(lo) >= target > F(hi) and F
    non-increasing, where mass(c) = sum_{v : key_v >= c, key_v >= floor} exp z'_v and F is mass
    (BY_MASS) or the count #{v : key_v >= c}; mass_lo is mass(lo) on entry.
    Each pass reads the row once and evaluates F at NPIV pivots spread over [lo + 1, hi). F only
    changes at the keys of the row, so the new lo snaps up to the smallest key >= the last passing
    pivot and the new hi down to (the largest key < the first failing one) + 1: the interval shrinks
    by the number of row values it holds, not by its width (2 to 7 passes for V = 152k, instead
    of the 8 that 31 bits need). Pivot 0 is lo + 1: once F(lo + 1) < target, lo is the answer."""
    j = tl.arange(0, NPIV).to(tl.int64)
    while hi - lo > 1:
        piv = tl.maximum(lo + ((hi - lo) * j) // NPIV, lo + 1)  # [NPIV], non-decreasing, in [lo + 1, hi - 1]
        piv32 = piv.to(tl.int32)
        # [BLOCK_S, NPIV] per-lane accumulators, reduced once per pass.
        mass = tl.zeros([BLOCK_S, NPIV], tl.float32)
        count = tl.zeros([BLOCK_S, NPIV], tl.int32)  # compared in fp32: exact for V < 2^24
        next_key = tl.full([BLOCK_S, NPIV], 2147483647, tl.int32)  # smallest key >= pivot
        prev_key = tl.full([BLOCK_S, NPIV], -2147483648, tl.int32)  # largest key < pivot
        for start in range(0, V, BLOCK_S):
            offs = start + tl.arange(0, BLOCK_S)
            valid = offs < V
            x = tl.load(ROW + offs, mask=valid, other=float("-inf")).to(tl.float32)
            x = tl.where((x != x) | (x == float("inf")), float("-inf"), x)
            s = x
            if HAS_SEEN:
                hit = tl.load(SEEN_ROW + offs, mask=valid, other=0) != 0
                s = tl.where(hit, tl.where(x > 0, tl.math.div_rn(x, penalty), x * penalty), x)
            if HAS_BAN:
                s = tl.where(tl.load(BAN + offs, mask=valid, other=0) != 0, float("-inf"), s)
            z = tl.where(s > float("-inf"), (s - s_max) * inv_t, float("-inf"))
            b = z.to(tl.int32, bitcast=True)  # order-preserving key
            key = tl.where(z == 0.0, 0, tl.where(b < 0, b ^ 0x7FFFFFFF, b))[:, None]
            above = key >= piv32[None, :]  # -inf / padding: below every pivot
            if BY_MASS:
                w = tl.where(key >= floor, tl.exp(z)[:, None], 0.0)
                mass += tl.where(above, w, 0.0)
            else:
                count += above.to(tl.int32)
                mass += tl.where(above, tl.exp(z)[:, None], 0.0)  # floor = key(-inf): no floor
            next_key = tl.where(above, tl.minimum(next_key, key), next_key)
            prev_key = tl.where(above, prev_key, tl.maximum(prev_key, key))
        mass_p = tl.sum(mass, axis=0)  # [NPIV]
        if BY_MASS:
            ok = mass_p >= target  # true on a prefix of the pivots
        else:
            ok = tl.sum(count, axis=0).to(tl.float32) >= target
        mass_lo = tl.where(tl.max(ok.to(tl.int32), axis=0) != 0,
                           tl.min(tl.where(ok, mass_p, float("inf")), axis=0), mass_lo)
        # F(next_key) = F(pivot) for a passing pivot; F(prev_key + 1) = F(pivot) for a failing one.
        new_lo = tl.max(tl.where(ok, tl.min(next_key, axis=0).to(tl.int64), lo), axis=0)
        hi = tl.min(tl.where(ok, hi, tl.max(prev_key, axis=0).to(tl.int64) + 1), axis=0)
        lo = new_lo
    return lo, mass_lo


@triton.jit
def _online_lse_lanes(m, acc, y, inv_t):
    """Per-lane running (max m, sum exp((y - m) * inv_t)) with one exp per element; -inf adds 0."""
    d = (y - m) * inv_t  # NaN when both are -inf; +inf when the lane is still empty
    e = tl.exp(-tl.abs(d))
    up = d > 0
    acc = tl.where(y == float("-inf"), acc, tl.where(up, acc * e + 1.0, acc + e))
    return tl.where(up, y, m), acc


@triton.jit
def _merge_lse_lanes(m, acc, inv_t):
    """(max, sum exp((y - max) * inv_t)) of the row from its per-lane states."""
    m_row = tl.max(m, axis=0)
    acc = tl.where(acc > 0, acc * tl.exp((m - m_row) * inv_t), 0.0)  # empty lanes: m = -inf
    return m_row, tl.sum(acc, axis=0)


# Bytes per row: every pass reads V * (sizeof(logits) [+ 1 seen] [+ 1 ban]) (+ 8, the row key);
# one pass without truncation, else 2 + the search passes (the row stays in L2 meanwhile);
# writes 8 + 3 * 4.
@triton.jit(do_not_specialize=["step", "top_k", "do_top_k", "do_top_p"])
def _sample_tokens_kernel(
    TOKENS,  # [R] int64 out
    LOGP_RAW,  # [R] fp32 out
    LOGP_PROC,  # [R] fp32 out
    LOG_KEPT,  # [R] fp32 out
    LOGITS,  # [R, V] fp32/bf16/fp16, stride(-1) == 1, row stride stride_row
    ROW_KEYS,  # [R] int64
    SEEN,  # [R, V] uint8 (bool viewed as bytes); unused without HAS_SEEN
    BAN,  # [V] uint8 ban mask; unused without HAS_BAN
    V,
    stride_row,
    step,  # runtime scalars: one compiled kernel serves every value
    top_k,
    do_top_k,
    do_top_p,
    inv_t,
    top_p,
    log_min_p,
    penalty,
    GREEDY: tl.constexpr,
    TRUNCATE: tl.constexpr,
    HAS_SEEN: tl.constexpr,
    HAS_BAN: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NPIV: tl.constexpr,
):
    inv_t = tl.cast(inv_t, tl.float32)  # tl.cast: under the interpreter these are Python floats
    penalty = tl.cast(penalty, tl.float32)
    row = tl.program_id(0).to(tl.int64)  # rows * V exceeds 2^31: all offsets in int64
    ROW = LOGITS + row * stride_row
    SEEN_ROW = SEEN + row * V
    step_key = _step_key(ROW_KEYS, row, step)
    RAW_DIFFERS: tl.constexpr = HAS_SEEN or HAS_BAN  # else s == x and one set of sums serves both

    # Every per-chunk quantity is kept per lane ([BLOCK_V] states) and reduced once at the end of a
    # pass: no block-wide reduction inside the vocabulary loops.
    m_x = tl.full([BLOCK_V], float("-inf"), tl.float32)  # raw: max x, sum exp((x - m_x) * inv_t)
    sum_x = tl.zeros([BLOCK_V], tl.float32)
    m_s = tl.full([BLOCK_V], float("-inf"), tl.float32)  # processed: max s, sum exp((s - m_s) * inv_t)
    sum_s = tl.zeros([BLOCK_V], tl.float32)
    sum_kept = tl.zeros([BLOCK_V], tl.float32)  # truncation: sum exp((s - max s) * inv_t) over the kept set
    bad = tl.zeros([BLOCK_V], tl.int1)
    best_idx = tl.zeros([BLOCK_V], tl.int32)  # race: each lane's winner, its s and its noise term
    best_s = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_g = tl.zeros([BLOCK_V], tl.float32)
    s_max = tl.full((), float("-inf"), tl.float32)  # row max of s, once phase 0 is over
    cut = tl.full((), _KEY_NEG_INF, tl.int64)  # keep iff key(z') >= cut (and z' > -inf)
    # Without truncation one pass does everything. With it, phase 0 only gathers the row sums and
    # max, the thresholds are searched, and phase 1 runs the race over the kept set.
    for phase in tl.static_range(TRUNCATE + 1):
        # phase == 0: the stats pass; phase == TRUNCATE: the race pass (constexpr conditions)
        if phase == 1:
            top_p = tl.cast(top_p, tl.float32)
            on_k = tl.cast(do_top_k, tl.int32) != 0
            on_p = tl.cast(do_top_p, tl.int32) != 0
            # top_k: F = count; F(key(-inf)) = V > k, F(1) = 0 < k (max z' = 0 has key 0). Off:
            # an empty interval, c_k = key(-inf). It also returns S_k, top_k's surviving mass.
            hi = tl.where(on_k, 1, cut + 1)
            c_k, mass_k = _search(ROW, SEEN_ROW, BAN, V, penalty, s_max, inv_t, cut, hi,
                                  tl.cast(top_k, tl.float32), cut, sum_s_row,
                                  False, HAS_SEEN, HAS_BAN, BLOCK_S, NPIV)
            # top_p over top_k's survivors: F = mass; F(c_k) = S_k >= top_p S_k > 0 = F(1).
            hi = tl.where(on_p, 1, c_k + 1)
            c_p, _ = _search(ROW, SEEN_ROW, BAN, V, penalty, s_max, inv_t, c_k, hi,
                             top_p * mass_k, c_k, mass_k,
                             True, HAS_SEEN, HAS_BAN, BLOCK_S, NPIV)
            # min_p: z' >= log(min_p) (-inf: off). c_p >= c_k always.
            lmp = tl.cast(log_min_p, tl.float32)
            lmp_bits = lmp.to(tl.int32, bitcast=True)
            c_m = tl.where(lmp == 0.0, 0, tl.where(lmp_bits < 0, lmp_bits ^ 0x7FFFFFFF, lmp_bits))
            cut = tl.maximum(c_p, c_m.to(tl.int64))
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            valid = offs < V
            x = tl.load(ROW + offs, mask=valid, other=float("-inf")).to(tl.float32)
            # NaN / +inf poison the row through `bad`; as -inf they keep the max and sums defined.
            is_bad = (x != x) | (x == float("inf"))
            x = tl.where(is_bad, float("-inf"), x)
            s = x
            if HAS_SEEN:  # HF repetition penalty
                hit = tl.load(SEEN_ROW + offs, mask=valid, other=0) != 0
                s = tl.where(hit, tl.where(x > 0, tl.math.div_rn(x, penalty), x * penalty), x)
            if HAS_BAN:
                s = tl.where(tl.load(BAN + offs, mask=valid, other=0) != 0, float("-inf"), s)

            if phase == 0:
                bad = bad | is_bad
                m_s, sum_s = _online_lse_lanes(m_s, sum_s, s, inv_t)
                if RAW_DIFFERS:
                    m_x, sum_x = _online_lse_lanes(m_x, sum_x, x, inv_t)

            if phase == TRUNCATE:
                # r = (s - m_ref) * inv_t + g, g = -log(-log u) (finite: u < 1).
                # m_ref is the lane's running max in a single pass, else the row max; lanes compare
                # only their own entries here (strict >: the earlier index wins exact ties) and are
                # merged after the loop. Greedy: m_ref = 0, inv_t = 1, g = 0, so r = s exactly.
                if TRUNCATE:
                    z = tl.where(s > float("-inf"), (s - s_max) * inv_t, float("-inf"))
                    b = z.to(tl.int32, bitcast=True)  # order-preserving key
                    key = tl.where(z == 0.0, 0, tl.where(b < 0, b ^ 0x7FFFFFFF, b))
                    keep = (key >= cut) & (z > float("-inf"))
                    sum_kept += tl.where(keep, tl.exp(z), 0.0)
                    m_ref = s_max
                else:
                    keep = s > float("-inf")
                    m_ref = m_s
                if GREEDY:
                    r = tl.where(keep, s, float("-inf"))
                    r_best = best_s
                    g = best_g  # zeros
                else:
                    g = -tl.log(-tl.log(_uniform(step_key, offs)))
                    r = tl.where(keep, (s - m_ref) * inv_t + g, float("-inf"))
                    r_best = tl.where(best_s > float("-inf"), (best_s - m_ref) * inv_t + best_g, float("-inf"))
                take = r > r_best
                best_idx = tl.where(take, offs, best_idx)
                best_s = tl.where(take, s, best_s)
                best_g = tl.where(take, g, best_g)

        if phase == 0:
            s_max, sum_s_row = _merge_lse_lanes(m_s, sum_s, inv_t)

    # The race across lanes, all against the row max: the largest r, lowest index on exact ties
    # (lanes that never took hold r = -inf; with no drawable token at all that gives index 0).
    if GREEDY:
        r = best_s
    else:
        r = tl.where(best_s > float("-inf"), (best_s - s_max) * inv_t + best_g, float("-inf"))
    r_max = tl.max(r, axis=0)
    tok = tl.min(tl.where(r == r_max, best_idx, 2147483647), axis=0).to(tl.int64)

    if RAW_DIFFERS:
        m_x_row, sum_x_row = _merge_lse_lanes(m_x, sum_x, inv_t)
    else:
        m_x_row = s_max
        sum_x_row = sum_s_row
    # The token's x and s, recomputed with the loop's exact operations.
    x_tok = tl.load(ROW + tok).to(tl.float32)  # tok in [0, V) always
    s_tok = x_tok
    if HAS_SEEN:
        pen = tl.where(x_tok > 0, tl.math.div_rn(x_tok, penalty), x_tok * penalty)
        s_tok = tl.where(tl.load(SEEN_ROW + tok) != 0, pen, x_tok)
    if HAS_BAN:
        s_tok = tl.where(tl.load(BAN + tok) != 0, float("-inf"), s_tok)

    log_sum_s = tl.log(sum_s_row)
    if TRUNCATE:
        log_sum_kept = tl.log(tl.sum(sum_kept, axis=0))
        log_kept = log_sum_kept - log_sum_s
        log_kept = tl.where(log_kept > 0, 0.0, log_kept)  # rounding when nothing was cut
    else:
        log_sum_kept = log_sum_s
        log_kept = tl.zeros((), tl.float32)
    logp_raw = (x_tok - m_x_row) * inv_t - tl.log(sum_x_row)
    logp_raw = tl.where(logp_raw > 0, 0.0, logp_raw)  # +1 ulp from rounding; NaN stays NaN
    logp_proc = (s_tok - s_max) * inv_t - log_sum_kept
    logp_proc = tl.where(logp_proc > 0, 0.0, logp_proc)
    poisoned = tl.max(bad.to(tl.int32), axis=0) != 0
    tl.store(TOKENS + row, tok)
    tl.store(LOGP_RAW + row, tl.where(poisoned, float("nan"), logp_raw))
    tl.store(LOGP_PROC + row, tl.where(poisoned, float("nan"), logp_proc))
    tl.store(LOG_KEPT + row, tl.where(poisoned, float("nan"), log_kept))


@triton.jit
def _uniform_noise_kernel(U, ROW_KEYS, V, step, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    step_key = _step_key(ROW_KEYS, row, step)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        tl.store(U + row * V + offs, _uniform(step_key, offs), mask=offs < V)


def uniform_noise(row_keys, step: int, vocab: int):
    """u [R, V] fp32 computed by the kernels' hash (the tests check it bit for bit against
    ttrl_fast.reference.sampling.uniform_noise)."""
    rows = row_keys.shape[0]
    u = torch.empty((rows, vocab), dtype=torch.float32, device=row_keys.device)
    if rows and vocab:
        block_v, num_warps = _launch_config(vocab, row_keys.is_cuda)
        _uniform_noise_kernel[(rows,)](u, row_keys.contiguous(), vocab, int(step) & _MASK32,
                                       BLOCK_V=block_v, num_warps=num_warps)
    return u


def _launch_config(V, is_cuda):
    cap = _GPU_MAX_BLOCK_V if is_cuda else _INTERPRET_MAX_BLOCK_V
    block_v = max(16, min(triton.next_power_of_2(max(V, 1)), cap))
    num_warps = 8 if block_v >= 2048 else 4 if block_v >= 1024 else 2 if block_v >= 256 else 1
    return block_v, num_warps


def _check_inputs(logits, row_keys, step, seen, ban_ids, iparams, fparams):
    if logits.dim() != 2:
        raise ValueError(f"logits must be [R, V], got shape {tuple(logits.shape)}")
    R, V = logits.shape
    if V < 1:
        raise ValueError(f"logits must be [R, V] with V >= 1, got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"unsupported logits dtype {logits.dtype} (float32, bfloat16 or float16)")
    if logits.stride(-1) != 1:
        raise ValueError(f"logits must have stride(-1) == 1, got strides {tuple(logits.stride())}")
    if row_keys.dim() != 1 or row_keys.shape[0] != R or row_keys.dtype != torch.int64:
        raise ValueError(f"row_keys must be [R] = ({R},) int64, got shape {tuple(row_keys.shape)} "
                         f"{row_keys.dtype}")
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if seen is not None and (tuple(seen.shape) != (R, V) or seen.dtype != torch.bool):
        raise ValueError(f"seen must be [R, V] = ({R}, {V}) bool, got shape {tuple(seen.shape)} {seen.dtype}")
    if ban_ids is not None:
        if ban_ids.dim() != 1 or ban_ids.dtype != torch.int64:
            raise ValueError(f"ban_ids must be [S] int64, got shape {tuple(ban_ids.shape)} {ban_ids.dtype}")
        # The range check needs the values: only where reading them costs no device sync.
        if ban_ids.device.type == "cpu" and ban_ids.numel() and (ban_ids.min() < 0 or ban_ids.max() >= V):
            raise ValueError(f"ban_ids must be in [0, V={V}), got values in "
                             f"[{int(ban_ids.min())}, {int(ban_ids.max())}]")
    for name, t in (("row_keys", row_keys), ("seen", seen), ("ban_ids", ban_ids)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits on {logits.device}")
    if len(iparams) != 2 or len(fparams) != 4:
        raise ValueError(f"expected 2 iparams (greedy, top_k) and 4 fparams (inv_temperature, top_p, "
                         f"min_p, repetition_penalty), got {len(iparams)} and {len(fparams)}")
    greedy = int(iparams[0])
    inv_t, top_p, min_p, penalty = (float(v) for v in fparams)
    if greedy not in (0, 1):
        raise ValueError(f"iparams[0] (greedy) must be 0 or 1, got {iparams[0]!r}")
    if not greedy and not (math.isfinite(inv_t) and inv_t > 0):
        raise ValueError(f"fparams[0] (inv_temperature) must be finite and > 0, got {inv_t!r}")
    if not top_p > 0:  # > 1 means off, as in the spec
        raise ValueError(f"fparams[1] (top_p) must be > 0 (1 = off), got {top_p!r}")
    if not 0 <= min_p <= 1:
        raise ValueError(f"fparams[2] (min_p) must be in [0, 1], got {min_p!r}")
    if not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(f"fparams[3] (repetition_penalty) must be finite and > 0, got {penalty!r}")


def sample_tokens_fwd(logits, row_keys, step, seen, ban_ids, iparams, fparams):
    """Returns (tokens [R] int64, logp_raw [R], logp_processed [R], log_kept [R]) fp32."""
    _check_inputs(logits, row_keys, step, seen, ban_ids, iparams, fparams)
    R, V = logits.shape
    greedy, top_k = (int(v) for v in iparams)
    inv_t, top_p, min_p, penalty = (float(v) for v in fparams)
    if greedy:
        inv_t, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
    do_top_k = 0 < top_k < V
    do_top_p = top_p < 1.0
    truncate = do_top_k or do_top_p or min_p > 0.0

    dev = logits.device
    tokens = torch.empty(R, dtype=torch.int64, device=dev)
    logp_raw = torch.empty(R, dtype=torch.float32, device=dev)
    logp_proc = torch.empty(R, dtype=torch.float32, device=dev)
    log_kept = torch.empty(R, dtype=torch.float32, device=dev)
    if R == 0:
        return tokens, logp_raw, logp_proc, log_kept

    row_keys = row_keys.contiguous()
    has_seen = seen is not None and penalty != 1.0
    seen_u8 = seen.contiguous().view(torch.uint8) if has_seen else None
    has_ban = ban_ids is not None and ban_ids.numel() > 0
    ban_u8 = None
    if has_ban:
        ban_u8 = torch.zeros(V, dtype=torch.uint8, device=dev)
        ban_u8.scatter_(0, ban_ids.contiguous(), 1)  # duplicates write the same 1
    block_v, num_warps = _launch_config(V, logits.is_cuda)
    block_s = min(block_v, _GPU_MAX_BLOCK_S) if logits.is_cuda else block_v
    _sample_tokens_kernel[(R,)](
        tokens,
        logp_raw,
        logp_proc,
        log_kept,
        logits,
        row_keys,
        seen_u8 if has_seen else row_keys,  # dummy pointers, never read
        ban_u8 if has_ban else row_keys,
        V,
        logits.stride(0),
        int(step) & _MASK32,
        max(top_k, 0),
        int(do_top_k),
        int(do_top_p),
        inv_t,
        top_p,
        math.log(min_p) if min_p > 0.0 else float("-inf"),
        penalty,
        GREEDY=bool(greedy),
        TRUNCATE=truncate,
        HAS_SEEN=has_seen,
        HAS_BAN=has_ban,
        BLOCK_V=block_v,
        BLOCK_S=block_s,
        NPIV=_NUM_PIVOTS,
        num_warps=num_warps,
    )
    return tokens, logp_raw, logp_proc, log_kept
