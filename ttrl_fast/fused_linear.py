"""Fused LM head: log-probs (and entropy, and the GRPO loss) from hidden states, without ever holding
the [N, V] logits. Tokens are processed in chunks: per chunk one matmul into an fp32 tile (never
rounded to bf16 before the log-sum-exp), then the selective log-softmax kernels of the chosen
backend. Peak extra memory is O(N + chunk * V + V * H), independent of N * V.

Backward: the tile is recomputed per chunk and dX, dW (fp32 accumulation; bf16 x bf16 GEMMs into the
bf16 gradients on the native bf16 CPU path, see _Head) and db are accumulated in a fixed chunk order,
so results are deterministic. A frozen head (weight.requires_grad False, LoRA)
computes no dW.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ttrl_fast import _validation as v
from ttrl_fast import backends
from ttrl_fast.losses import _as_float_rows, _metrics, check_loss_hyperparameters, policy_loss, policy_loss_params
from ttrl_fast.reference.policy_loss import aggregation_weights

# Default tokens per chunk: an fp32 tile of at most 32 MiB (plus its gradient tile). Bigger chunks
# cost memory; smaller ones re-read and re-write the fp32 dW accumulator once more per chunk.
_TILE_ELEMENTS = 1 << 23


def default_chunk_size(vocab: int, *, half: bool = False) -> int:
    elements = _TILE_ELEMENTS // 2 if half else _TILE_ELEMENTS
    return max(16, min(4096, elements // max(vocab, 1)))


def _native_bf16_gemm(hidden_dtype: torch.dtype, weight: Tensor):
    """The C++ extension when hidden and weight are bf16 CPU tensors and this CPU has the AVX512-BF16
    bf16 x bf16 -> fp32 GEMM; else None."""
    if not (hidden_dtype == weight.dtype == torch.bfloat16 and weight.device.type == "cpu"):
        return None
    from ttrl_fast import _ext

    lib = _ext.extension("cpu")
    return lib if lib is not None and hasattr(lib, "gemm_bf16_nt_f32") and lib.gemm_bf16_has_native() else None


class _Head:
    """The LM head as the chunk loops use it: the fp32 logits tile of a chunk, and the products of a
    tile gradient g [c, V] with the weight (dX) and the chunk's hidden states (dW).

    bf16 hidden and weight on a CPU with AVX512-BF16: the tile comes from our own bf16 x bf16 -> fp32
    GEMM (the logits are never rounded to bf16), dX and dW from torch's bf16 GEMMs on g rounded to
    bf16 (as eager bf16 autograd does), dW accumulated in the bf16 weight gradient itself: no fp32 copy
    of the head or of its gradient. Otherwise the head is upcast to fp32 once (CPU BLAS has no other
    bf16 x bf16 -> fp32 GEMM) and dX, dW accumulate in fp32.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, temperature: float, hidden_dtype: torch.dtype):
        self.gemm = _native_bf16_gemm(hidden_dtype, weight)
        self.weight = weight.detach() if self.gemm is not None else weight.detach().float()  # [V, H]
        if self.gemm is not None and self.weight.stride(-1) != 1:
            self.weight = self.weight.contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()  # [V]
        self.inv_t = 1.0 / temperature
        self.grad_dtype = torch.bfloat16 if self.gemm is not None else torch.float32
        self._buffer: Tensor | None = None  # one tile buffer reused by every chunk (no re-faulting)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def tile(self, hidden: Tensor) -> Tensor:
        """[c, H] -> fp32 logits tile viewed as the kernels' [1, c, V] (valid until the next call)."""
        rows = hidden.shape[0]
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = torch.empty(rows, self.vocab, dtype=torch.float32, device=hidden.device)
        out = self._buffer[:rows]
        if self.gemm is not None:
            x = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
            self.gemm.gemm_bf16_nt_f32(x, self.weight, out, self.bias)
        elif self.bias is not None:
            torch.addmm(self.bias, hidden.float(), self.weight.t(), out=out)
        else:
            torch.mm(hidden.float(), self.weight.t(), out=out)
        return out.unsqueeze(0)

    def new_grad_input(self, hidden: Tensor) -> Tensor:
        return torch.empty_like(hidden, dtype=self.grad_dtype)

    def new_grad_weight(self) -> Tensor:
        return torch.zeros_like(self.weight, dtype=self.grad_dtype)

    def backprop(self, g: Tensor, hidden: Tensor, dx: Tensor | None, dw: Tensor | None) -> None:
        """dx = g @ W (this chunk's rows, written in place); dw += g^T @ hidden, in the fixed chunk order
        (deterministic)."""
        if self.gemm is not None:
            g = g.to(torch.bfloat16)
            if dx is not None:
                torch.mm(g, self.weight, out=dx)
            if dw is not None:
                dw.addmm_(g.t(), hidden)
            return
        if dx is not None:
            torch.mm(g, self.weight, out=dx)
        if dw is not None:
            dw.addmm_(g.t(), hidden.float())


def _tile_grad(impl, grad_logp, grad_entropy, tile, targets, valid, stats, entropy, inv_t) -> Tensor:
    """d loss / d tile [c, V] fp32. The C++ backend overwrites the scratch tile in place (one tile
    of memory instead of two); other backends return a fresh tensor."""
    if impl.backend == "cpp":
        from ttrl_fast import _ext

        return _ext.extension("cpu").selective_log_softmax_bwd_(grad_logp, grad_entropy, tile, targets, valid, stats,
                                                                 entropy, inv_t)[0]
    return impl.bwd(grad_logp, grad_entropy, tile, targets, valid, stats, entropy, inv_t)[0]


def _triton_fused():
    """The Triton fused matmul + online log-sum-exp kernels (used when the backend is triton)."""
    from ttrl_fast.kernels.triton import fused_linear

    return fused_linear


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def chunked_logprob_forward(head: _Head, hidden: Tensor, targets: Tensor, valid: Tensor, with_entropy: bool,
                            chunk: int, impl) -> tuple[Tensor, Tensor, Tensor]:
    """Phase 1: logp [N], entropy [N] (or empty), stats [N, 2] from the chunked head."""
    n = hidden.shape[0]
    logp = hidden.new_empty(n, dtype=torch.float32)
    entropy = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)
    stats = hidden.new_empty(n, 2, dtype=torch.float32)
    for c0, c1 in _chunks(n, chunk):
        lp, ent, st = impl.fwd(head.tile(hidden[c0:c1]), targets[c0:c1], valid[c0:c1], head.inv_t, with_entropy)
        logp[c0:c1], stats[c0:c1] = lp, st
        if with_entropy:
            entropy[c0:c1] = ent
    return logp, entropy, stats


def chunked_logprob_backward(head: _Head, hidden: Tensor, targets: Tensor, valid: Tensor, stats: Tensor,
                             entropy: Tensor, grad_logp: Tensor | None, grad_entropy: Tensor | None, chunk: int,
                             impl, need_dx: bool, need_dw: bool, need_db: bool):
    """Phase 3: recompute each tile, d loss / d tile by the backend kernel, then dX, dW, db."""
    n = hidden.shape[0]
    dx = head.new_grad_input(hidden) if need_dx else None
    dw = head.new_grad_weight() if need_dw else None
    db = torch.zeros(head.weight.shape[0], dtype=torch.float32, device=hidden.device) if need_db else None
    for c0, c1 in _chunks(n, chunk):
        tile = head.tile(hidden[c0:c1])
        g = _tile_grad(impl, None if grad_logp is None else grad_logp[c0:c1].contiguous(),
                       None if grad_entropy is None else grad_entropy[c0:c1].contiguous(), tile, targets[c0:c1],
                       valid[c0:c1], stats[c0:c1].contiguous(),
                       entropy[c0:c1] if grad_entropy is not None else entropy, head.inv_t)  # [c, V] fp32
        head.backprop(g, hidden[c0:c1], dx[c0:c1] if need_dx else None, dw)
        if need_db:
            db += g.sum(0)
    return dx, dw, db


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, valid, temperature, with_entropy, chunk, backend):
        impl = backends.select("selective_log_softmax", hidden.device, torch.float32, backend)
        if impl.backend == "triton":  # one fused matmul + online log-sum-exp kernel
            logp, entropy, stats = _triton_fused().fused_linear_logprob_fwd(
                hidden.contiguous(), weight.detach().contiguous(), None if bias is None else bias.detach(), targets,
                valid, 1.0 / temperature, with_entropy)
        else:
            head = _Head(weight, bias, temperature, hidden.dtype)
            logp, entropy, stats = chunked_logprob_forward(head, hidden, targets, valid, with_entropy, chunk, impl)
        ctx.save_for_backward(hidden, weight, bias, targets, valid, stats, entropy)
        ctx.cfg = (temperature, chunk, backend, with_entropy)
        ctx.mark_non_differentiable(stats)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, valid, stats, entropy = ctx.saved_tensors
        temperature, chunk, backend, with_entropy = ctx.cfg
        impl = backends.select("selective_log_softmax", hidden.device, torch.float32, backend)
        need = ctx.needs_input_grad
        if impl.backend == "triton":
            dx, dw, db = _triton_fused().fused_linear_logprob_bwd(
                None if grad_logp is None else grad_logp.float().contiguous(),
                grad_entropy.float().contiguous() if (with_entropy and grad_entropy is not None) else None,
                hidden.contiguous(), weight.detach().contiguous(), None if bias is None else bias.detach(), targets,
                valid, stats, entropy, 1.0 / temperature, need[0], need[1], bias is not None and need[2])
            return (None if dx is None else dx.to(hidden.dtype), None if dw is None else dw.to(weight.dtype),
                    None if db is None else db.to(bias.dtype), None, None, None, None, None, None)
        head = _Head(weight, bias, temperature, hidden.dtype)
        dx, dw, db = chunked_logprob_backward(
            head, hidden, targets, valid, stats, entropy,
            None if grad_logp is None else grad_logp.float(),
            grad_entropy.float() if (with_entropy and grad_entropy is not None) else None,
            chunk, impl, need[0], need[1], bias is not None and need[2])
        return (None if dx is None else dx.to(hidden.dtype), None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype), None, None, None, None, None, None)


def prepare(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, temperature: float,
            ignore_index: int, chunk_size: int | None):
    """Validates and flattens: (hidden2d [N, H], targets [N] int64 clamped, valid [N], chunk, leading shape)."""
    v.check_tensor("hidden", hidden, allowed=v.FLOAT_DTYPES, kind="float32, bfloat16 or float16")
    v.check_tensor("weight", weight, allowed=v.FLOAT_DTYPES, kind="float32, bfloat16 or float16")
    v.check_integer("targets", targets)
    if weight.dim() != 2:
        raise ValueError(f"weight must be [V, H], got shape {tuple(weight.shape)}")
    if hidden.dim() not in (2, 3) or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, H] or [B, T, H] with H = weight.shape[1] = {weight.shape[1]}, "
                         f"got {tuple(hidden.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])} (hidden {tuple(hidden.shape)}), "
                         f"got {tuple(targets.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (weight.shape[0],)):
        raise ValueError(f"bias must be [V] = ({weight.shape[0]},), got "
                         f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    v.check_positive_finite("temperature", temperature)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    v.check_same_device(hidden=hidden, weight=weight, targets=targets, bias=bias)
    flat_targets = targets.reshape(-1).long()
    valid = flat_targets != ignore_index
    v.check_index_range(flat_targets, valid, weight.shape[0], name="targets")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    # the native bf16 path also holds each tile's gradient in bf16: half the fp32 tile keeps the total
    native_bf16 = _native_bf16_gemm(hidden.dtype, weight) is not None
    chunk = chunk_size or default_chunk_size(weight.shape[0], half=native_bf16)
    return hidden2d, flat_targets.clamp(min=0).contiguous(), valid.contiguous(), chunk, targets.shape


def fused_linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """log_softmax((hidden @ weight.T + bias) / temperature)[targets] without materialising the logits.

    Args:
        hidden: [N, H] or [B, T, H] (fp32/bf16/fp16). weight: [V, H]. bias: [V] or None.
        targets: [N] or [B, T] token ids; positions equal to ignore_index give 0 and no gradient.
        chunk_size: tokens per chunk (default: an fp32 tile of <= 16 MiB).
        backend: the selective log-softmax backend for the tiles (None: automatic).
    Returns:
        logp [N] or [B, T] float32 (and entropy of the same shape with return_entropy), differentiable
        w.r.t. hidden, weight and bias; no weight gradient is computed when weight.requires_grad is False.
    """
    hidden2d, flat, valid, chunk, shape = prepare(hidden, weight, targets, bias, temperature, ignore_index,
                                                  chunk_size)
    logp, entropy = _FusedLinearLogprobs.apply(hidden2d, weight, bias, flat, valid, float(temperature),
                                               bool(return_entropy), chunk, backends.requested_backend(backend))
    if return_entropy:
        return logp.view(shape), entropy.view(shape)
    return logp.view(shape)


# ------------------------------------------------------------------------------------------------
# The GRPO loss straight from hidden states
# ------------------------------------------------------------------------------------------------

def _per_token_rows(x: Tensor | None, batch: int, length: int) -> Tensor | None:
    """[B], [B, 1] or [B, T] -> [B * T, 1] contiguous fp32 (one "sequence" per token)."""
    if x is None:
        return None
    x = x.detach().float()
    if x.dim() == 1:
        x = x.unsqueeze(-1)
    return x.expand(batch, length).reshape(-1, 1).contiguous()


class _FusedLinearGRPO(torch.autograd.Function):
    """Forward computes the loss *and* its gradients (the loss is a scalar); backward only scales.

    Token-level ratios (all loss types but vespo): the per-token loss and its derivative depend on
    that token alone (plus normalisers known up front), so each chunk goes tile -> log-probs ->
    per-token loss gradient -> tile gradient -> dX, dW in one pass: no recomputed matmul.
    Sequence-level ratios and vespo need every log-prob of a sequence first: log-probs in a first
    pass, the loss kernel on [B, T], then a second pass recomputing each tile.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, valid, mask_f, inputs, cfg):
        batch, length, temperature, chunk, backend, iparams, fparams, loss_type, knobs, out = cfg
        old, adv, ref, ratio = inputs
        sls = backends.select("selective_log_softmax", hidden.device, torch.float32, backend)
        pl = backends.select("policy_loss", hidden.device, torch.float32, backend)
        head = _Head(weight, bias, temperature, hidden.dtype)
        n = hidden.shape[0]
        coef = knobs["entropy_coef"]
        need_entropy = knobs["log_entropy"] or coef != 0.0
        tokens = mask_f.sum().clamp(min=1.0)
        grad_entropy = (-coef * mask_f.reshape(-1) / tokens).contiguous() if coef != 0.0 else None
        need = ctx.needs_input_grad
        need_dx, need_dw, need_db = need[0], need[1], bias is not None and need[2]
        fused = sls.backend == "triton"  # Triton: fused matmul + log-sum-exp kernels, two phases
        one_pass = iparams[3] == 0 and loss_type != "vespo" and not fused

        if one_pass:
            weights = aggregation_weights(mask_f, loss_type, knobs["max_completion_length"],
                                          knobs["num_items_in_batch"]).reshape(-1)  # [N]
            tok_i = list(iparams)
            tok_i[1] = 1  # every token its own sequence, summed with weight 1: w_t applied here
            tok_f = list(fparams)
            tok_f[10] = 1.0
            rows = [_per_token_rows(t, batch, length) for t in (old, adv, ref, ratio)]
            ones = torch.ones(n, 1, device=hidden.device)
            token_stats = hidden.new_empty(n, 18, dtype=torch.float32)
            entropy = hidden.new_empty(n if need_entropy else 0, dtype=torch.float32)
            dx = head.new_grad_input(hidden) if need_dx else None
            dw = head.new_grad_weight() if need_dw else None
            db = torch.zeros(head.weight.shape[0], device=hidden.device) if need_db else None
            loss = torch.zeros((), dtype=torch.float64, device=hidden.device)
            for c0, c1 in _chunks(n, chunk):
                tile = head.tile(hidden[c0:c1])
                lp, ent, st = sls.fwd(tile, targets[c0:c1], valid[c0:c1], head.inv_t, need_entropy)
                sl = slice(c0, c1)
                old_c, adv_c, ref_c, ratio_c = (None if r is None else r[sl] for r in rows)
                g_tok, tok = pl.fwd(lp.view(-1, 1), old_c, adv_c, ones[sl], ref_c, ratio_c, None, tok_i, tok_f)
                g_logp = (g_tok.view(-1) * weights[sl]).contiguous()
                loss += (tok[:, 0].double() * weights[sl]).sum()
                token_stats[sl] = tok
                if need_entropy:
                    entropy[sl] = ent
                g = _tile_grad(sls, g_logp, None if grad_entropy is None else grad_entropy[sl], tile, targets[sl],
                               valid[sl], st, ent, head.inv_t)
                head.backprop(g, hidden[sl], dx[sl] if need_dx else None, dw)
                if need_db:
                    db += g.sum(0)
            seq_stats = _sequence_stats(token_stats, mask_f, entropy, batch, length)
            policy = loss.float()
        else:
            if fused:
                tk = _triton_fused()
                args = (hidden.contiguous(), weight.detach().contiguous(), None if bias is None else bias.detach())
                logp, entropy, stats = tk.fused_linear_logprob_fwd(*args, targets, valid, head.inv_t, need_entropy)
            else:
                logp, entropy, stats = chunked_logprob_forward(head, hidden, targets, valid, need_entropy, chunk, sls)
            grad_logp, seq_stats = pl.fwd(logp.view(batch, length), old, adv, mask_f, ref, ratio,
                                          entropy.view(batch, length) if need_entropy else None, iparams, fparams)
            policy = seq_stats[:, 0].sum()
            if fused:
                dx, dw, db = tk.fused_linear_logprob_bwd(grad_logp.reshape(-1).contiguous(), grad_entropy, *args,
                                                         targets, valid, stats, entropy, head.inv_t, need_dx, need_dw,
                                                         need_db)
            else:
                dx, dw, db = chunked_logprob_backward(head, hidden, targets, valid, stats, entropy,
                                                      grad_logp.reshape(-1).contiguous(), grad_entropy, chunk, sls,
                                                      need_dx, need_dw, need_db)
        total = policy
        if coef != 0.0:
            total = policy - coef * (entropy.view(batch, length) * mask_f).sum() / tokens
        out["metrics"] = _metrics(seq_stats, policy, loss_type, iparams, adv.shape[1], fparams[3] if iparams[2] else 0.0,
                               need_entropy)
        ctx.save_for_backward(*(t for t in (dx, dw, db) if t is not None))
        ctx.which = (dx is not None, dw is not None, db is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total.detach()

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) if present else None for present in ctx.which]
        # The usual upstream gradient is exactly 1 (loss.backward()): hand the saved gradients over
        # as they are instead of copying a [V, H] tensor.
        unit = grad_out.numel() == 1 and float(grad_out) == 1.0
        out = [None if g is None else (g if unit else g * grad_out).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return out[0], out[1], out[2], None, None, None, None, None


def _sequence_stats(token_stats: Tensor, mask_f: Tensor, entropy: Tensor, batch: int, length: int) -> Tensor:
    """Per-sequence statistics ([B, 18], kernels/__init__.py) from one-token-per-row statistics."""
    tok = token_stats.view(batch, length, 18)
    m = mask_f
    out = torch.zeros(batch, 18, device=token_stats.device)
    out[:, 1] = m.sum(-1)
    for col in (2, 4, 5, 6, 10, 12, 14):
        out[:, col] = (tok[..., col] * m).sum(-1)
    if entropy.numel():
        out[:, 3] = (entropy.view(batch, length) * m).sum(-1)
    r = tok[..., 14]
    inf = torch.tensor(float("inf"), device=r.device)
    out[:, 15] = torch.where(m > 0, r, inf).amin(-1)
    out[:, 16] = torch.where(m > 0, r, -inf).amax(-1)
    out[:, 17] = 1.0
    return out


# policy_loss's hyperparameters and their defaults (its tensor inputs and backend are passed apart).
_LOSS_DEFAULTS = {name: p.default for name, p in inspect.signature(policy_loss).parameters.items()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY
                  and name not in ("ref_logp", "rollout_is_ratio", "entropy", "backend")}


def fused_linear_grpo_loss(
    hidden: Tensor,
    weight: Tensor,
    completion_ids: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    bias: Tensor | None = None,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    rollout_is_ratio: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    log_entropy: bool = False,
    backend: str | None = None,
    **loss_kwargs,
):
    """ttrl_fast.policy_loss of the log-probs of hidden [B, T, H] @ weight [V, H].T (+ bias), computed
    chunk by chunk: the [B, T, V] logits never exist. Returns (loss, Metrics). loss_kwargs: the
    policy_loss keywords (loss_type, beta, epsilon_*, delta, importance_sampling_level,
    use_bias_correction_kl, kl_estimator, entropy_coef, max_completion_length, num_items_in_batch,
    sapo_*, vespo_*)."""
    v.check_tensor("hidden", hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {tuple(hidden.shape)}")
    batch, length = hidden.shape[:2]
    shape = (batch, length)
    v.check_tensor("mask", mask)
    if mask.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {tuple(mask.shape)}")
    v.check_integer("completion_ids", completion_ids)
    if completion_ids.shape != shape:
        raise ValueError(f"completion_ids must have shape {shape}, got {tuple(completion_ids.shape)}")
    knobs = dict(_LOSS_DEFAULTS)
    unknown = set(loss_kwargs) - set(knobs)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    knobs.update(loss_kwargs)
    knobs["epsilon_low"], knobs["epsilon_high"], knobs["beta"] = check_loss_hyperparameters(
        **{k: knobs[k] for k in ("loss_type", "importance_sampling_level", "kl_estimator", "epsilon_low",
                                 "epsilon_high", "delta", "beta", "max_completion_length")})
    if knobs["beta"] != 0.0 and ref_logp is None:
        raise ValueError("ref_logp [B, T] is required when beta != 0")
    adv = _as_float_rows("advantages", advantages, shape, allow_cols_one=True)
    old = _as_float_rows("old_logp", old_logp, shape)
    ref = _as_float_rows("ref_logp", ref_logp, shape) if knobs["beta"] != 0.0 else None
    ratio = _as_float_rows("rollout_is_ratio", rollout_is_ratio, shape, allow_cols_one=True)
    # before any kernel runs (the compiled kernels only guard their inputs' devices with a RuntimeError)
    v.check_same_device(hidden=hidden, completion_ids=completion_ids, mask=mask, advantages=advantages,
                        old_logp=old_logp, ref_logp=ref_logp, rollout_is_ratio=rollout_is_ratio)
    mask_f = mask.detach().float().contiguous()
    targets = torch.where(mask != 0, completion_ids, torch.full_like(completion_ids, -100))
    hidden2d, flat, valid, chunk, _ = prepare(hidden, weight, targets, bias, temperature, -100, chunk_size)
    iparams, fparams = policy_loss_params(
        shape, mask_f, on_policy=old is None,
        **{k: knobs[k] for k in ("loss_type", "importance_sampling_level", "epsilon_low", "epsilon_high", "delta",
                                 "beta", "kl_estimator", "use_bias_correction_kl", "max_completion_length",
                                 "num_items_in_batch", "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos",
                                 "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")})
    knobs["log_entropy"] = log_entropy
    out: dict = {}  # filled by the forward with the Metrics
    cfg = (batch, length, float(temperature), chunk, backends.requested_backend(backend), iparams, fparams,
           knobs["loss_type"], knobs, out)
    loss = _FusedLinearGRPO.apply(hidden2d, weight, bias, flat, valid, mask_f, (old, adv, ref, ratio), cfg)
    return loss, out["metrics"]


class FusedLinearHead(torch.nn.Linear):
    """An LM head that is still an nn.Linear (same parameters, same state-dict keys, same forward for the
    model's own logits) but can also return fused log-probs: head(x, targets=..., temperature=...).

    Calling the head as a module matters under FSDP2: its sharded weight is gathered by the module's own
    pre-forward hook and its gradient reduce-scattered after backward, which reading `head.weight`
    directly would bypass. ttrl_fast.distributed.shard_fsdp2 turns a model's head into one."""

    def forward(self, input: Tensor, targets: Tensor | None = None, temperature: float = 1.0):
        if targets is None:
            return super().forward(input)
        return fused_linear_logprobs(input, self.weight, targets, bias=self.bias, temperature=temperature)
