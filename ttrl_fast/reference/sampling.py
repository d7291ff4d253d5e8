"""Token sampling for rollouts: the spec and the reference backend (raw contract ``sample_tokens`` in
ttrl_fast/kernels/__init__.py). One decode step of R rows over a vocabulary of V tokens:

    x      = logits                                     raw scores, fp32
    s      = repetition_penalty(x, seen)                HF: s = x / p if x > 0 else x * p, on seen tokens
    s[b]   = -inf for the banned ids b                  (min_tokens: stop ids cannot be drawn yet)
    z      = s * inv_temperature                        greedy: inv_temperature is 1 and nothing is cut
    keep   = top_k(z) & top_p(z) & min_p(z)             each applied to what the previous one kept
    token  = argmax_{v in keep} z_v - log(E_v)          exponential race: E_v = -log(u_v) ~ Exp(1),
                                                        i.e. a draw from softmax(z) restricted to keep
    greedy: token = argmax_v s_v (lowest index on ties)

    logp_raw        = log_softmax(x * inv_t)[token]     what the trainer recomputes (full vocabulary,
                                                        no penalty, no truncation); inv_t = 1 when greedy
    log_kept        = log sum_{v in keep} softmax(z)_v  mass the truncation kept (0 when nothing is cut)
    logp_processed  = log_softmax(z)[token] - log_kept  the probability the token was actually drawn with

Poisoned rows: a row holding NaN or +inf logits has no distribution. Such entries are read as -inf
(probability 0), so the max, the sums, the truncation and the race stay defined and the token is drawn
from the row's other entries (always in [0, V); 0 when none is left), and all three log-probs of the
row are NaN (never a plausible number, like selective_log_softmax). Every backend follows this.

Truncation rules (ties are kept or dropped together, so every backend computes the same set):
    top_k:  keep v iff #{u : z_u > z_v} < k                       (k = 0 or k >= V: off)
    top_p:  keep v iff sum_{u kept, z_u > z_v} p_u < top_p * sum_{u kept} p_u   (top_p = 1: off)
    min_p:  keep v iff z_v >= max z + log(min_p)                  (min_p = 0: off)

Noise is a counter-based hash, so a row's draw depends only on (row key, step, token) and not on
which other rows share the batch: the sampler derives the row key from (seed, prompt, sample g).
    mix32(x):     x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16   (mod 2^32)
    step_key    = mix32(row_key ^ mix32(step + 0x9E3779B9))
    h_v         = mix32(step_key ^ ((v * 0x9E3779B9) mod 2^32))
    u_v         = ((h_v >> 9) + 0.5) * 2^-23                       in [2^-24, 1 - 2^-24], exact in fp32
                  (never 1: with 24 bits, u = 1 - 2^-25 would round to 1 and win every race)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

GOLDEN = 0x9E3779B9
MASK32 = 0xFFFFFFFF
# iparams / fparams field order of the raw contract.
IPARAMS = ("greedy", "top_k")
FPARAMS = ("inv_temperature", "top_p", "min_p", "repetition_penalty")


def mix32(x: Tensor) -> Tensor:
    """The 32-bit integer hash of the module docstring, on int64 tensors holding values in [0, 2^32)
    (products wrap in int64 but their low 32 bits are exact, which is all that is kept)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    """mix32 on a Python int (used by the sampler to build row keys)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform_noise(row_keys: Tensor, step: int, vocab: int) -> Tensor:
    """u [R, V] float32 in (0, 1): the uniform of (row key, step, token), exact in fp32."""
    step_key = mix32(row_keys ^ mix32_int(step + GOLDEN))  # [R]
    tokens = (torch.arange(vocab, dtype=torch.int64, device=row_keys.device) * GOLDEN) & MASK32
    h = mix32(step_key[:, None] ^ tokens[None, :])
    return ((h >> 9).to(torch.float64) + 0.5).mul(2.0 ** -23).to(torch.float32)


def repetition_penalty(x: Tensor, seen: Tensor | None, penalty: float) -> Tensor:
    if seen is None or penalty == 1.0:
        return x
    penalised = torch.where(x > 0, x / penalty, x * penalty)
    return torch.where(seen, penalised, x)


def keep_mask(z: Tensor, top_k: int, top_p: float, min_p: float) -> Tensor:
    """[R, V] bool: the tokens that survive top-k, then top-p, then min-p (rules in the docstring)."""
    rows, vocab = z.shape
    keep = z > -math.inf
    if not (0 < top_k < vocab or top_p < 1.0 or min_p > 0.0):
        return keep
    order = torch.argsort(z, dim=-1, descending=True, stable=True)
    zs = torch.gather(z, -1, order)
    if 0 < top_k < vocab:
        # rank among strictly larger values: the first position of each value's run of ties
        starts = torch.searchsorted(-zs, -zs, side="left")
        keep &= torch.zeros_like(keep).scatter_(-1, order, starts < top_k)
    if top_p < 1.0:
        zmax = zs[:, :1]
        p = torch.where(torch.gather(keep, -1, order), torch.exp(zs - zmax), 0.0)
        total = p.sum(-1, keepdim=True)
        # mass strictly above each value: the exclusive prefix sum at the start of its tie run
        exclusive = torch.cumsum(p, -1) - p
        starts = torch.searchsorted(-zs, -zs, side="left")
        above = torch.gather(exclusive, -1, starts)
        keep &= torch.zeros_like(keep).scatter_(-1, order, above < top_p * total)
    if min_p > 0.0:
        zmax = torch.where(keep, z, -math.inf).amax(-1, keepdim=True)
        keep &= z >= zmax + math.log(min_p)
    return keep


def sample_tokens_fwd(logits: Tensor, row_keys: Tensor, step: int, seen: Tensor | None, ban_ids: Tensor | None,
                      iparams: tuple[int, int], fparams: tuple[float, float, float, float]
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference backend: (tokens [R] int64, logp_raw [R], logp_processed [R], log_kept [R]) fp32.
    Computes in float64 so that it also serves as the tests' oracle."""
    greedy, top_k = (int(v) for v in iparams)
    inv_t, top_p, min_p, penalty = (float(v) for v in fparams)
    if greedy:
        inv_t, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
    x = logits.to(torch.float64)
    bad = ~(x < math.inf)  # NaN or +inf: the row is poisoned (module docstring)
    poisoned = bad.any(-1)
    x = x.masked_fill(bad, -math.inf)
    s = repetition_penalty(x, seen, penalty)
    if ban_ids is not None and ban_ids.numel():
        s = s.index_fill(-1, ban_ids, -math.inf)
    z = s * inv_t
    keep = keep_mask(z, top_k, top_p, min_p)
    if greedy:
        tokens = torch.argmax(s, dim=-1)  # first maximum on ties
    else:
        noise = uniform_noise(row_keys, step, logits.shape[-1]).to(torch.float64)
        race = torch.where(keep, z - torch.log(-torch.log(noise)), -math.inf)
        tokens = torch.argmax(race, dim=-1)
    pick = tokens[:, None]
    raw = x * inv_t
    logp_raw = (raw.gather(-1, pick) - torch.logsumexp(raw, -1, keepdim=True)).squeeze(-1)
    lse_all = torch.logsumexp(z, -1)
    lse_kept = torch.logsumexp(torch.where(keep, z, -math.inf), -1)
    logp_processed = z.gather(-1, pick).squeeze(-1) - lse_kept
    log_kept = lse_kept - lse_all
    nan = torch.tensor(math.nan, dtype=torch.float64, device=x.device)
    logp_raw, logp_processed, log_kept = (torch.where(poisoned, nan, t) for t in (logp_raw, logp_processed, log_kept))
    return tokens, logp_raw.float(), logp_processed.float(), log_kept.float()
