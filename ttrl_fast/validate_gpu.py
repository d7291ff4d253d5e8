"""`python -m ttrl_fast.validate_gpu`: validate a machine in one run, then benchmark it.

Every backend that runs here is checked against a float64 evaluation of the reference for every
public op, on fp32 and bf16 inputs:

    selective_log_softmax, policy_loss[<each loss type>], grpo_loss, group_advantages,
    fused_linear_logprobs, fused_linear_grpo_loss, sample_tokens, sampler_logprobs (the
    RolloutSampler's log-probs against a teacher-forced forward of a tiny random Llama)

For each (device, op, backend, dtype) up to four checks are reported:

    values       max scaled error of the outputs (max |got - want| / max(1, max |want|))
    grads        the same for the gradients of every differentiable input
    exact        outputs that must be identical (sampled tokens): number of mismatches
    determinism  a second call on the same inputs is bitwise equal (outputs and gradients)

Then the benchmarks run (``ttrl_fast.bench_cli``: quick by default with --quick, else full) and ONE
report is printed (a text table) and written to --out as validate_report.json and validate_report.md.
A check that fails or raises is recorded with its message and the run goes on. Exit status: 0 when
everything passed (skips allowed), 1 when a check or a benchmark failed, 2 when the run could not
start (no CUDA without --cpu, bad arguments).

    python -m ttrl_fast.validate_gpu                  # on a CUDA machine: cuda/triton/reference on GPU
                                                      # tensors, cpp/reference on CPU tensors, full benchmarks
    python -m ttrl_fast.validate_gpu --quick          # small check sizes, quick benchmarks
    python -m ttrl_fast.validate_gpu --cpu --quick    # no GPU: the same checks on the CPU backends
    python -m ttrl_fast.validate_gpu --cpu --quick --no-bench --ops selective_log_softmax,grpo_loss
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Default tolerances on the scaled error (see the module docstring) per dtype and check. bf16 inputs
# are rounded before the float64 reference sees them, so the reference and the kernel start from the
# same numbers; kernels compute in fp32, but 16-bit gradients are rounded to bf16 on output (and the
# CPU bf16 LM head accumulates dW in bf16), hence the looser gradient bound.
TOLERANCES = {
    "fp32": {"values": 1e-5, "grads": 1e-5},
    "bf16": {"values": 1e-4, "grads": 1e-2},
}
GROUPS = ("values", "grads", "exact")
PREFIX = {"value": "values", "grad": "grads", "exact": "exact"}  # output key prefix -> check


# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    logits: tuple[int, int, int]  # selective_log_softmax [A, B, V]
    loss: tuple[int, int]  # policy_loss [B, T]
    grpo: tuple[int, int, int]  # grpo_loss logits [B, T, V]
    rewards: tuple[int, int]  # group_advantages: N samples, groups of G
    fused: tuple[int, int, int, int]  # fused linear: B, T, H, V
    fused_chunk: int
    sample: tuple[int, int]  # sample_tokens [R, V]
    sampler: dict = field(default_factory=dict)  # tiny Llama config + generation


QUICK = Sizes(
    logits=(3, 5, 97), loss=(5, 11), grpo=(3, 7, 301), rewards=(24, 4), fused=(3, 9, 16, 101), fused_chunk=7,
    sample=(6, 300),
    sampler=dict(vocab=97, hidden=32, inter=64, layers=2, heads=4, kv_heads=2, n=2, max_tokens=8),
)
FULL = Sizes(
    logits=(4, 33, 50257), loss=(16, 257), grpo=(4, 65, 32000), rewards=(256, 8), fused=(4, 64, 256, 32000),
    fused_chunk=100, sample=(64, 32000),
    sampler=dict(vocab=512, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, n=4, max_tokens=24),
)
SAMPLER_PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19], [20, 21]]


# ------------------------------------------------------------------------------------------ helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rounded(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x in the tested dtype (the kernel's input); the reference reads the same numbers via .double()."""
    return x.to(dtype)


def _leaf(x: Tensor, device: torch.device) -> Tensor:
    return x.detach().to(device).clone().requires_grad_(True)


def _cpu(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach().cpu()


def _d(x: Tensor | None) -> Tensor | None:
    """float64 leaf on CPU for the reference."""
    return None if x is None else x.detach().double().cpu().requires_grad_(True)


def scaled_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|) (ttrl_fast.testing's measure); NaN when either
    side has a NaN or the shapes differ (so it never passes a tolerance)."""
    if actual.shape != expected.shape:
        return float("nan")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    if bool(torch.isnan(a).any()) or bool(torch.isnan(e).any()):
        return float("nan")
    both_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    diff = torch.where(both_inf, torch.zeros_like(a), (a - e).abs())
    finite = e[torch.isfinite(e)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    return diff.max().item() / scale


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().cpu().reshape(-1).contiguous(), b.detach().cpu().reshape(-1).contiguous()
    if a.numel() == 0:
        return True
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ cases
# A case makes inputs (CPU tensors in the tested dtype), runs one backend on a device and returns its
# outputs as CPU tensors keyed "value:<name>", "grad:<name>", "exact:<name>" or "aux:<name>" (aux is
# compared only for determinism), and evaluates the float64 reference under the same keys.


@dataclass
class Case:
    op: str
    make: Callable[[Sizes, torch.dtype], dict]
    run: Callable[[dict, str, torch.device], dict[str, Tensor]]
    expect: Callable[[dict, dict[str, Tensor]], dict[str, Tensor]]
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> check -> tol


def _slsm_make(s: Sizes, dtype: torch.dtype) -> dict:
    from ttrl_fast.testing import make_index, make_logits

    g = _gen(1)
    logits = make_logits(s.logits, dtype=dtype, neg_inf_fraction=0.05, generator=g)
    index = make_index(logits, generator=g)
    mask = torch.rand(s.logits[:2], generator=g) > 0.2
    up = (torch.randn(s.logits[:2], generator=g, dtype=torch.float64),
          torch.randn(s.logits[:2], generator=g, dtype=torch.float64))
    return dict(logits=logits, index=index, mask=mask, up=up, temperature=0.9)


def _slsm_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    x = _leaf(i["logits"], device)
    logp, ent = ttrl_fast.selective_log_softmax(x, i["index"].to(device), temperature=i["temperature"],
                                                mask=i["mask"].to(device), return_entropy=True, backend=backend)
    (logp.double() * i["up"][0].to(device) + ent.double() * i["up"][1].to(device)).sum().backward()
    return {"value:logp": _cpu(logp), "value:entropy": _cpu(ent), "grad:logits": _cpu(x.grad)}


def _slsm_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast import reference

    x = _d(i["logits"])
    logp, ent = reference.selective_log_softmax(x, i["index"], temperature=i["temperature"], mask=i["mask"],
                                                return_entropy=True)
    (logp * i["up"][0] + ent * i["up"][1]).sum().backward()
    return {"value:logp": logp, "value:entropy": ent, "grad:logits": x.grad}


def _loss_knobs(loss_type: str) -> dict:
    return dict(loss_type=loss_type, importance_sampling_level="token", beta=0.04, use_bias_correction_kl=True,
                entropy_coef=0.01, epsilon_high=5.0 if loss_type == "cispo" else 0.28,
                delta=1.5 if loss_type in ("grpo", "dapo") else None)


def _policy_make(loss_type: str, level: str = "token") -> Callable[[Sizes, torch.dtype], dict]:
    def make(s: Sizes, dtype: torch.dtype) -> dict:
        g = _gen(2)
        b, t = s.loss
        logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
        mask = (torch.rand(b, t, generator=g) > 0.25).long()
        mask[1 % b] = 0  # an empty sequence
        knobs = _loss_knobs(loss_type)
        knobs["importance_sampling_level"] = level
        return dict(
            logp=_rounded(logp, dtype),
            old=_rounded(logp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64), dtype),
            ref=_rounded(logp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64), dtype),
            adv=_rounded(torch.randn(b, generator=g, dtype=torch.float64), dtype),
            ratio=_rounded(torch.rand(b, t, generator=g, dtype=torch.float64) + 0.5, dtype),
            entropy=_rounded(torch.rand(b, t, generator=g, dtype=torch.float64) * 2, dtype),
            mask=mask, knobs=knobs)
    return make


def _policy_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    x, ent = _leaf(i["logp"], device), _leaf(i["entropy"], device)
    loss, metrics = ttrl_fast.policy_loss(x, i["old"].to(device), i["adv"].to(device), i["mask"].to(device),
                                          ref_logp=i["ref"].to(device), rollout_is_ratio=i["ratio"].to(device),
                                          entropy=ent, backend=backend, **i["knobs"])
    loss.backward()
    return {"value:loss": _cpu(loss), "value:kl": torch.as_tensor(float(metrics["kl"])),
            "grad:logp": _cpu(x.grad), "grad:entropy": _cpu(ent.grad)}


def _policy_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast.reference.policy_loss import policy_loss as spec

    x, ent = _d(i["logp"]), _d(i["entropy"])
    loss, parts = spec(x, i["old"].double(), i["adv"].double(), i["mask"].double(), ref_logp=i["ref"].double(),
                       rollout_is_ratio=i["ratio"].double(), entropy=ent, **i["knobs"])
    loss.backward()
    total, count = parts["kl"]
    return {"value:loss": loss.detach(), "value:kl": (total / count).detach(), "grad:logp": x.grad,
            "grad:entropy": ent.grad}


def _grpo_make(s: Sizes, dtype: torch.dtype) -> dict:
    from ttrl_fast import reference
    from ttrl_fast.testing import make_index, make_logits

    g = _gen(3)
    b, t, v = s.grpo
    logits = make_logits((b, t, v), dtype=dtype, neg_inf_fraction=0.05, generator=g)
    ids = make_index(logits, generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    with torch.no_grad():
        base = reference.selective_log_softmax(logits.double(), ids, temperature=0.9)
    old = (base + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).float()
    ref = (base + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).float()
    knobs = _loss_knobs("dapo")
    return dict(logits=logits, ids=ids, mask=mask, old=old, ref=ref, adv=torch.randn(b, generator=g), knobs=knobs)


def _grpo_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    x = _leaf(i["logits"], device)
    loss, metrics = ttrl_fast.grpo_loss(x, i["ids"].to(device), i["adv"].to(device), i["mask"].to(device),
                                        old_logp=i["old"].to(device), ref_logp=i["ref"].to(device), temperature=0.9,
                                        backend=backend, **i["knobs"])
    loss.backward()
    return {"value:loss": _cpu(loss), "value:entropy": torch.as_tensor(float(metrics["entropy"])),
            "grad:logits": _cpu(x.grad)}


def _grpo_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast import reference
    from ttrl_fast.reference.policy_loss import policy_loss as spec

    x = _d(i["logits"])
    logp, ent = reference.selective_log_softmax(x, i["ids"], temperature=0.9, mask=i["mask"], return_entropy=True)
    loss, parts = spec(logp, i["old"].double(), i["adv"].double(), i["mask"].double(), ref_logp=i["ref"].double(),
                       entropy=ent, **i["knobs"])
    loss.backward()
    total, count = parts["entropy"]
    return {"value:loss": loss.detach(), "value:entropy": (total / count).detach(), "grad:logits": x.grad}


def _adv_make(s: Sizes, dtype: torch.dtype) -> dict:
    g = _gen(4)
    n, group = s.rewards
    r = torch.randn(n, generator=g, dtype=torch.float64)
    r[3] = float("nan")  # unscorable
    r[group:2 * group] = 0.5  # a zero-std group
    return dict(rewards=_rounded(r, dtype), group=group)


def _adv_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    out = {}
    for mode in ("group", "rloo"):
        adv, stats = ttrl_fast.group_advantages(i["rewards"].to(device), group_size=i["group"], mode=mode,
                                                backend=backend)
        out[f"value:advantages[{mode}]"] = _cpu(adv)
        if mode == "group":
            out["value:std"] = _cpu(stats["std"])
    return out


def _adv_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast.reference.advantages import group_advantages as spec

    r = i["rewards"].double()
    index = torch.arange(r.numel()) // i["group"]
    groups = int(index.max()) + 1
    out = {}
    for mode in ("group", "rloo"):
        adv, stats = spec(r, index, groups, mode=mode)
        out[f"value:advantages[{mode}]"] = adv
        if mode == "group":
            out["value:std"] = stats[:, 2]
    return out


def _fused_make(s: Sizes, dtype: torch.dtype) -> dict:
    from ttrl_fast import reference

    g = _gen(5)
    b, t, h, v = s.fused
    x = torch.randn(b, t, h, generator=g, dtype=torch.float64) / h ** 0.5 * 4
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.3
    bias = torch.randn(v, generator=g, dtype=torch.float64)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.25
    mask[1 % b] = False
    x, w = _rounded(x, dtype), _rounded(w, dtype)
    bias = None if dtype != torch.float32 else bias  # the bf16 path is the bias-free LM head of real models
    with torch.no_grad():
        logits = x.double() @ w.double().T + (0 if bias is None else bias)
        base = reference.selective_log_softmax(logits, ids)
    return dict(x=x, w=w, bias=bias, ids=ids, mask=mask, chunk=s.fused_chunk, adv=torch.randn(b, generator=g),
                old=(base + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).float(),
                ref=(base + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).float(),
                up=(torch.randn(b, t, generator=g, dtype=torch.float64), torch.randn(b, t, generator=g,
                                                                                     dtype=torch.float64)))


def _fused_leaves(i: dict, device: torch.device):
    return _leaf(i["x"], device), _leaf(i["w"], device), None if i["bias"] is None else _leaf(i["bias"], device)


def _fused_grads(x, w, b) -> dict:
    out = {"grad:hidden": _cpu(x.grad), "grad:weight": _cpu(w.grad)}
    if b is not None:
        out["grad:bias"] = _cpu(b.grad)
    return out


def _fused_logprobs_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    x, w, b = _fused_leaves(i, device)
    targets = i["ids"].masked_fill(~i["mask"], -100).to(device)
    logp, ent = ttrl_fast.fused_linear_logprobs(x, w, targets, bias=b, temperature=0.8, return_entropy=True,
                                                chunk_size=i["chunk"], backend=backend)
    (logp.double() * i["up"][0].to(device) + ent.double() * i["up"][1].to(device)).sum().backward()
    return {"value:logp": _cpu(logp), "value:entropy": _cpu(ent), **_fused_grads(x, w, b)}


def _fused_reference_logits(i: dict):
    x, w, b = _d(i["x"]), _d(i["w"]), _d(i["bias"])
    logits = x @ w.T + (0 if b is None else b)
    return x, w, b, logits


def _fused_logprobs_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast import reference

    x, w, b, logits = _fused_reference_logits(i)
    logp, ent = reference.selective_log_softmax(logits, i["ids"], temperature=0.8, mask=i["mask"],
                                                return_entropy=True)
    (logp * i["up"][0] + ent * i["up"][1]).sum().backward()
    return {"value:logp": logp, "value:entropy": ent, **_fused_grads(x, w, b)}


def _fused_grpo_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    x, w, b = _fused_leaves(i, device)
    loss, metrics = ttrl_fast.fused_linear_grpo_loss(
        x, w, i["ids"].to(device), i["mask"].to(device), i["adv"].to(device), bias=b, old_logp=i["old"].to(device),
        ref_logp=i["ref"].to(device), chunk_size=i["chunk"], log_entropy=True, backend=backend, **_loss_knobs("dapo"))
    loss.backward()
    return {"value:loss": _cpu(loss), "value:kl": torch.as_tensor(float(metrics["kl"])), **_fused_grads(x, w, b)}


def _fused_grpo_expect(i: dict, _out: dict) -> dict:
    from ttrl_fast import reference
    from ttrl_fast.reference.policy_loss import policy_loss as spec

    x, w, b, logits = _fused_reference_logits(i)
    logp, ent = reference.selective_log_softmax(logits, i["ids"], mask=i["mask"], return_entropy=True)
    loss, parts = spec(logp, i["old"].double(), i["adv"].double(), i["mask"].double(), ref_logp=i["ref"].double(),
                       entropy=ent, **_loss_knobs("dapo"))
    loss.backward()
    total, count = parts["kl"]
    return {"value:loss": loss.detach(), "value:kl": (total / count).detach(), **_fused_grads(x, w, b)}


SAMPLE_KW = dict(temperature=0.8, top_p=0.9, min_p=0.02, step=3)


def _sample_make(s: Sizes, dtype: torch.dtype) -> dict:
    g = _gen(6)
    rows, vocab = s.sample
    logits = _rounded(torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2, dtype)
    keys = torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64)
    return dict(logits=logits, keys=keys)


def _sample_run(i: dict, backend: str, device: torch.device) -> dict:
    import ttrl_fast

    out = ttrl_fast.sample_tokens(i["logits"].to(device), row_keys=i["keys"].to(device), backend=backend, **SAMPLE_KW)
    return {"exact:tokens": _cpu(out.tokens), "value:logprobs": _cpu(out.logprobs),
            "value:processed_logprobs": _cpu(out.processed_logprobs), "value:log_kept_mass": _cpu(out.log_kept_mass)}


def _sample_expect(i: dict, out: dict) -> dict:
    import ttrl_fast

    ref = ttrl_fast.sample_tokens(i["logits"], row_keys=i["keys"], backend="reference", **SAMPLE_KW)
    # The raw log-prob of the token this backend drew, in float64 (independent of any token mismatch).
    lsm = torch.log_softmax(i["logits"].double() / SAMPLE_KW["temperature"], -1)
    raw = lsm.gather(-1, out["exact:tokens"].long().unsqueeze(-1)).squeeze(-1)
    return {"exact:tokens": ref.tokens, "value:logprobs": raw, "value:processed_logprobs": ref.processed_logprobs,
            "value:log_kept_mass": ref.log_kept_mass}


_MODELS: dict[tuple, object] = {}


def _tiny_llama(cfg: dict, dtype: torch.dtype, device: torch.device):
    """A tiny random Llama (fixed seed), built once per (config, dtype, device)."""
    key = (tuple(sorted(cfg.items())), dtype, str(device))
    if key not in _MODELS:
        from transformers import LlamaConfig, LlamaForCausalLM

        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            config = LlamaConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["inter"],
                                 num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                                 num_key_value_heads=cfg["kv_heads"], max_position_embeddings=256,
                                 attn_implementation="sdpa")
            _MODELS[key] = LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)
        finally:
            torch.random.set_rng_state(state)
    return _MODELS[key]


def _sampler_make(s: Sizes, dtype: torch.dtype) -> dict:
    return dict(cfg=s.sampler, dtype=dtype, prompts=SAMPLER_PROMPTS, temperature=0.8)


def _sampler_run(i: dict, backend: str, device: torch.device) -> dict:
    from ttrl_fast import RolloutSampler, SamplingParams

    cfg = i["cfg"]
    model = _tiny_llama(cfg, i["dtype"], device)
    sampler = RolloutSampler(model, max_rows=len(i["prompts"]) * cfg["n"], max_seq_len=64, eos_token_ids=[3],
                             backend=backend)
    batch = sampler.generate(i["prompts"], SamplingParams(n=cfg["n"], max_tokens=cfg["max_tokens"],
                                                          temperature=i["temperature"], top_p=0.9, seed=7))
    i.setdefault("_device", device)
    return {"value:logprobs": _cpu(batch.logprobs).float(), "aux:completion_ids": _cpu(batch.completion_ids),
            "aux:completion_mask": _cpu(batch.completion_mask), "aux:group_index": _cpu(batch.group_index)}


def _sampler_expect(i: dict, out: dict) -> dict:
    """Teacher-forced: one full forward of prompt + completion per row, log_softmax(logits / T) in float64."""
    device = i["_device"]
    model = _tiny_llama(i["cfg"], i["dtype"], device)
    want = torch.zeros_like(out["value:logprobs"], dtype=torch.float64)
    lengths = out["aux:completion_mask"].long().sum(-1)
    for row in range(want.shape[0]):
        prompt = i["prompts"][int(out["aux:group_index"][row])]
        completion = out["aux:completion_ids"][row, :int(lengths[row])].tolist()
        if not completion:
            continue
        ids = torch.tensor([prompt + completion], device=device)
        with torch.no_grad():
            logits = model(ids).logits[0].double().cpu() / i["temperature"]
        logp = torch.log_softmax(logits, -1)[len(prompt) - 1:len(prompt) - 1 + len(completion)]
        want[row, :len(completion)] = logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    return {"value:logprobs": want}


def cases() -> list[Case]:
    from ttrl_fast.reference.policy_loss import LOSS_TYPES

    out = [Case("selective_log_softmax", _slsm_make, _slsm_run, _slsm_expect)]
    for loss_type in LOSS_TYPES:
        out.append(Case(f"policy_loss[{loss_type}]", _policy_make(loss_type), _policy_run, _policy_expect))
    out += [
        Case("grpo_loss", _grpo_make, _grpo_run, _grpo_expect),
        Case("group_advantages", _adv_make, _adv_run, _adv_expect),
        Case("fused_linear_logprobs", _fused_make, _fused_logprobs_run, _fused_logprobs_expect),
        Case("fused_linear_grpo_loss", _fused_make, _fused_grpo_run, _fused_grpo_expect),
        Case("sample_tokens", _sample_make, _sample_run, _sample_expect),
        # The model runs in the tested dtype on both sides; incremental decode and a full forward round
        # differently (bf16 activations: about 5e-4 in a log-prob of the quick model on CPU).
        Case("sampler_logprobs", _sampler_make, _sampler_run, _sampler_expect,
             tolerances={"fp32": {"values": 1e-4}, "bf16": {"values": 2e-2}}),
    ]
    return out


def op_names() -> list[str]:
    return [c.op for c in cases()]


# ------------------------------------------------------------------------------------------ running


@dataclass
class Check:
    device: str
    op: str
    backend: str
    dtype: str
    check: str  # values | grads | exact | determinism | run | reference
    status: str  # PASS | FAIL | SKIP
    max_error: float | None
    tolerance: float | None
    ms: float | None  # one warm call (forward + backward where there is one)
    message: str = ""


def _tolerance(case: Case, dtype: str, check: str) -> float:
    return case.tolerances.get(dtype, {}).get(check, TOLERANCES[dtype][check])


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " | ")
    return text[:400]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno})"


def run_case(case: Case, device: torch.device, backend: str, dtype: str, sizes: Sizes) -> list[Check]:
    """Every check of one (op, backend, dtype) on one device; never raises."""
    from ttrl_fast.backends import BackendUnavailableError

    base = dict(device=device.type, op=case.op, backend=backend, dtype=dtype)
    try:
        inputs = case.make(sizes, DTYPES[dtype])
    except Exception as exc:  # noqa: BLE001 - a broken case must not stop the run
        return [Check(**base, check="run", status="FAIL", max_error=None, tolerance=None, ms=None,
                      message=f"making the inputs raised {_one_line(exc)}{_where(exc)}")]
    try:
        first = case.run(inputs, backend, device)
        _sync(device)
        t0 = time.perf_counter()
        second = case.run(inputs, backend, device)
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
    except BackendUnavailableError as exc:
        return [Check(**base, check="run", status="SKIP", max_error=None, tolerance=None, ms=None,
                      message=_one_line(exc))]
    except Exception as exc:  # noqa: BLE001
        return [Check(**base, check="run", status="FAIL", max_error=None, tolerance=None, ms=None,
                      message=f"{backend} raised {_one_line(exc)}{_where(exc)}")]
    try:
        expected = case.expect(inputs, first)
    except Exception as exc:  # noqa: BLE001
        return [Check(**base, check="reference", status="FAIL", max_error=None, tolerance=None, ms=ms,
                      message=f"the float64 reference raised {_one_line(exc)}{_where(exc)}")]

    checks = []
    for prefix, group in PREFIX.items():
        keys = [k for k in first if k.startswith(prefix + ":")]
        if not keys:
            continue
        errors: dict[str, float] = {}
        problems = []
        for key in keys:
            name = key.split(":", 1)[1]
            if key not in expected:
                problems.append(f"{name}: no reference value")
                continue
            if group == "exact":
                got, want = first[key], expected[key].to(first[key].dtype)
                errors[name] = float("nan") if got.shape != want.shape else float((got != want).sum())
            else:
                errors[name] = scaled_error(first[key], expected[key])
        # The worst output (NaN counts as worst).
        worst_key = max(errors, key=lambda k: math.inf if math.isnan(errors[k]) else errors[k], default=None)
        worst = errors[worst_key] if worst_key is not None else float("nan")
        tol = 0.0 if group == "exact" else _tolerance(case, dtype, group)
        ok = not problems and worst <= tol  # NaN never passes
        if problems:
            msg = "; ".join(problems)
        elif ok:
            msg = f"worst: {worst_key}"
        elif group == "exact":
            msg = f"{worst_key}: {worst:g} of {first[f'exact:{worst_key}'].numel()} differ from the reference"
        elif math.isnan(worst):
            msg = f"{worst_key}: NaN or shape mismatch against the float64 reference"
        else:
            msg = f"{worst_key}: scaled error {worst:.3g} > tolerance {tol:g}"
        checks.append(Check(**base, check=group, status="PASS" if ok else "FAIL", max_error=worst, tolerance=tol,
                            ms=ms, message=msg))
    differ = [k.split(":", 1)[1] for k in first if k not in second or not bitwise_equal(first[k], second[k])]
    checks.append(Check(**base, check="determinism", status="FAIL" if differ else "PASS",
                        max_error=float(len(differ)), tolerance=0.0, ms=ms,
                        message=("second call differs in " + ", ".join(differ)) if differ
                        else "two calls bitwise equal"))
    return checks


def backends_for(device: torch.device, requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """(backends to run on this device, {backend: why not} for the others). On CPU Triton runs only
    under TRITON_INTERPRET=1 and only when named in --backends (the interpreter is for debugging)."""
    from ttrl_fast import backends

    run, why = [], {}
    for name in backends.BACKENDS:
        if requested is not None and name not in requested:
            continue
        reasons = backends.refusal_reasons("selective_log_softmax", name, device, torch.float32, explicit=True)
        if not reasons and device.type == "cpu" and name == "triton" and requested is None:
            reasons = ["the Triton interpreter on CPU runs only when named in --backends"]
        if reasons:
            why[name] = "; ".join(reasons)
        else:
            run.append(name)
    return run, why


def run_checks(devices: list[torch.device], sizes: Sizes, *, ops: list[str] | None = None,
               requested: list[str] | None = None, dtypes: list[str] = ("fp32", "bf16"),
               progress: Callable[[str], None] = print) -> tuple[list[Check], dict]:
    """All checks; returns (checks, {device: {"ran": [...], "unavailable": {...}}})."""
    selected = [c for c in cases() if ops is None or c.op in ops or c.op.split("[")[0] in ops]
    checks: list[Check] = []
    plan: dict = {}
    for device in devices:
        names, why = backends_for(device, requested)
        plan[device.type] = {"ran": names, "unavailable": why}
        for name, reason in why.items():
            progress(f"[{device.type}] backend {name} not run: {reason}")
        for case in selected:
            for backend in names:
                for dtype in dtypes:
                    group = run_case(case, device, backend, dtype, sizes)
                    checks.extend(group)
                    progress(_progress_line(group))
    return checks, plan


def _progress_line(group: list[Check]) -> str:
    c0 = group[0]
    status = "FAIL" if any(c.status == "FAIL" for c in group) else ("SKIP" if all(c.status == "SKIP" for c in group)
                                                                    else "PASS")
    parts = []
    for c in group:
        if c.check == "determinism":
            parts.append("deterministic" if c.status == "PASS" else "NOT deterministic")
        elif c.max_error is not None:
            parts.append(f"{c.check} {c.max_error:.2g}")
    ms = f" {c0.ms:.2f} ms" if c0.ms is not None else ""
    line = f"{status} {c0.device:<4} {c0.backend:<9} {c0.dtype:<4} {c0.op:<26} {', '.join(parts)}{ms}"
    for c in group:
        if c.status != "PASS":
            line += f"\n     {c.check}: {c.message}"
    return line


# ------------------------------------------------------------------------------------------ report


def _fmt(v: float | None, spec: str = ".2e") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


CHECK_HEAD = ["device", "op", "backend", "dtype", "check", "max error", "tolerance", "status", "ms", "message"]
SUMMARY_HEAD = ["device", "op", "backend", "dtype", "values err", "tol", "grads err", "tol", "exact", "determ.",
                "status", "ms"]


def _check_rows(checks: list[Check]) -> list[list[str]]:
    """One row per check (the failures table and the JSON's shape)."""
    rows = []
    for c in checks:
        counted = c.check in ("exact", "determinism")
        err = _fmt(c.max_error, "g") if counted else _fmt(c.max_error)
        tol = _fmt(c.tolerance, "g") if counted else _fmt(c.tolerance, ".0e")
        rows.append([c.device, c.op, c.backend, c.dtype, c.check, err, tol, c.status, _fmt(c.ms, ".2f"), c.message])
    return rows


def _summary_rows(checks: list[Check]) -> list[list[str]]:
    """One row per (device, op, backend, dtype): each check's max error and tolerance side by side."""
    groups: dict[tuple, dict[str, Check]] = {}
    for c in checks:
        groups.setdefault((c.device, c.op, c.backend, c.dtype), {})[c.check] = c
    rows = []
    for (device, op, backend, dtype), by in groups.items():
        def err(name: str) -> tuple[str, str]:
            c = by.get(name)
            if c is None:
                return "-", "-"
            return _fmt(c.max_error), _fmt(c.tolerance, ".0e")

        def flag(name: str) -> str:
            c = by.get(name)
            return "-" if c is None else ("ok" if c.status == "PASS" else (
                f"{_fmt(c.max_error, 'g')} differ" if c.max_error is not None else c.status))

        statuses = {c.status for c in by.values()}
        status = "FAIL" if "FAIL" in statuses else ("SKIP" if statuses == {"SKIP"} else "PASS")
        ms = next((c.ms for c in by.values() if c.ms is not None), None)
        rows.append([device, op, backend, dtype, *err("values"), *err("grads"), flag("exact"), flag("determinism"),
                     status, _fmt(ms, ".2f")])
    return rows


BENCH_HEAD = ["op", "provider", "mode", "dtype", "shape", "device", "p50 ms", "p20-p80 ms", "vs baseline"]


def _bench_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        def num(k, spec=".3f"):
            try:
                return _fmt(float(r.get(k, "nan")), spec)
            except (TypeError, ValueError):
                return str(r.get(k, "-"))
        spread = f"{num('p20_ms')}-{num('p80_ms')}" if "nan" not in (num("p20_ms"), num("p80_ms")) else "-"
        dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(r.get("dtype", ""), r.get("dtype", ""))
        out.append([r.get("op", ""), r.get("provider", ""), r.get("mode", ""), dtype, r.get("shape", ""),
                    r.get("device", ""), num("p50_ms"), spread, num("speedup_vs_baseline", ".2f") + "x"])
    return out


def summarize(checks: list[Check], bench: dict | None) -> dict:
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    bench_failed = [b["name"] for b in (bench or {}).get("benchmarks", []) if b.get("status") == "failed"]
    return {**counts, "bench_failed": bench_failed, "ok": counts["FAIL"] == 0 and not bench_failed}


def render(report: dict, markdown: bool) -> str:
    meta, checks = report["meta"], [Check(**c) for c in report["checks"]]
    s = report["summary"]
    title = "# ttrl_fast validation report" if markdown else "== ttrl_fast validation report =="
    lines = [title, ""]
    for k in ("timestamp", "mode", "devices", "device_names", "torch", "cuda", "triton", "ttrl_fast", "git_sha",
              "sizes", "tf32"):
        lines.append(f"{'- ' if markdown else ''}{k}: {meta.get(k)}")
    for dev, p in report["plan"].items():
        lines.append(f"{'- ' if markdown else ''}{dev} backends run: {', '.join(p['ran']) or 'none'}")
        for name, why in p["unavailable"].items():
            lines.append(f"{'  - ' if markdown else '    '}{name} not run: {why}")
    verdict = "PASSED" if s["ok"] else "FAILED"
    lines += ["", f"{'## ' if markdown else ''}Checks: {s['PASS']} passed, {s['FAIL']} failed, {s['SKIP']} skipped"
              f" -> {verdict}", ""]
    lines.append(_table(SUMMARY_HEAD, _summary_rows(checks), markdown))
    problems = [c for c in checks if c.status != "PASS"]
    if problems:
        lines += ["", f"{'## ' if markdown else ''}Failures and skips (each check, with its message)", ""]
        lines.append(_table(CHECK_HEAD, _check_rows(problems), markdown))
    bench = report.get("bench")
    lines += ["", f"{'## ' if markdown else ''}Benchmarks", ""]
    if not bench:
        lines.append("not run (--no-bench)")
    else:
        for b in bench.get("benchmarks", []):
            note = f" ({b['message']})" if b.get("message") else ""
            lines.append(f"{'- ' if markdown else ''}{b['name']}: {b['status']}, {b.get('rows', 0)} rows, "
                         f"{b.get('seconds', 0):.1f} s{note}")
        lines.append("")
        lines.append(_table(BENCH_HEAD, _bench_rows(bench.get("rows", [])), markdown))
        if bench.get("performance_md"):
            lines += ["", f"performance section: {bench['performance_md']}"]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(devices: list[torch.device], quick: bool, sizes: Sizes) -> dict:
    import ttrl_fast

    try:
        import triton  # noqa: PLC0415

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    names = {}
    for d in devices:
        names[d.type] = torch.cuda.get_device_name(d) if d.type == "cuda" else _cpu_name()
    sha = "unknown"
    try:
        import subprocess

        root = Path(ttrl_fast.__file__).resolve().parents[1]
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if proc.returncode == 0:
            sha = proc.stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "devices": [d.type for d in devices],
        "device_names": names,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "ttrl_fast": ttrl_fast.__version__,
        "git_sha": sha,
        "python": platform.python_version(),
        "sizes": "quick" if sizes is QUICK else "full",
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
    }


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "validate_report.json", out / "validate_report.md"

    def clean(o):  # NaN is not JSON
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return str(o)
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    json_path.write_text(json.dumps(clean(report), indent=1) + "\n")
    md_path.write_text(render(report, markdown=True))
    return json_path, md_path


# ------------------------------------------------------------------------------------------ CLI

NO_CUDA = ("CUDA is not available here (torch.cuda.is_available() is False{why}): this validates GPU "
           "backends. Run with --cpu to check the CPU backends (reference, cpp) instead.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttrl_fast.validate_gpu", description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for what each check compares.")
    p.add_argument("--cpu", action="store_true", help="no GPU needed: check the CPU backends on CPU tensors")
    p.add_argument("--quick", action="store_true", help="small check sizes and quick benchmarks")
    p.add_argument("--full-bench", action="store_true", help="full benchmarks even with --quick")
    p.add_argument("--no-bench", action="store_true", help="checks only")
    p.add_argument("--bench-only", default=None, help="comma list of benchmarks to run (see ttrl-fast bench --list)")
    p.add_argument("--ops", default=None, help="comma list of ops to check (policy_loss selects every loss type)")
    p.add_argument("--backends", default=None, help="comma list of backends (default: every one that runs here)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    p.add_argument("--out", type=Path, default=Path("ttrl_fast_validate"),
                   help="folder for validate_report.json / .md (benchmarks: OUT/bench)")
    p.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    return p


def _list(s: str | None) -> list[str] | None:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dtypes = _list(args.dtypes) or []
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        print(f"error: unknown --dtypes {bad}; choose from {list(DTYPES)}", file=sys.stderr)
        return 2
    ops = _list(args.ops)
    if ops is not None:
        known = set(op_names()) | {o.split("[")[0] for o in op_names()}
        unknown = [o for o in ops if o not in known]
        if unknown:
            print(f"error: unknown --ops {unknown}; ops are {sorted(known)}", file=sys.stderr)
            return 2
    requested = _list(args.backends)
    if requested is not None:
        from ttrl_fast.backends import BACKENDS

        unknown = [b for b in requested if b not in BACKENDS]
        if unknown:
            print(f"error: unknown --backends {unknown}; backends are {list(BACKENDS)}", file=sys.stderr)
            return 2
    if args.cpu:
        devices = [torch.device("cpu")]
    elif not torch.cuda.is_available():
        why = ""
        if torch.version.cuda is None:
            why = "; this torch is a CPU-only build"
        elif torch.cuda.device_count() == 0:
            why = f"; torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no device"
        print("error: " + NO_CUDA.format(why=why), file=sys.stderr)
        print(NO_CUDA.format(why=why))
        return 2
    else:
        devices = [torch.device("cuda"), torch.device("cpu")]  # cpp and reference run on CPU tensors
    sizes = QUICK if args.quick else FULL
    say = (lambda _s: None) if args.quiet else (lambda s: print(s, flush=True))
    started = time.perf_counter()
    say(f"validating {', '.join(d.type for d in devices)} ({'quick' if args.quick else 'full'} sizes)")
    checks, plan = run_checks(devices, sizes, ops=ops, requested=requested, dtypes=dtypes, progress=say)
    check_seconds = time.perf_counter() - started

    bench = None
    if not args.no_bench:
        from ttrl_fast import bench_cli

        quick_bench = args.quick and not args.full_bench
        say(f"running the {'quick' if quick_bench else 'full'} benchmarks -> {args.out / 'bench'}")
        try:
            bench = bench_cli.run(names=_list(args.bench_only), quick=quick_bench, out_dir=args.out / "bench",
                                  device="cuda" if devices[0].type == "cuda" else "cpu", echo=not args.quiet)
        except Exception as exc:  # noqa: BLE001 - report it, keep the checks
            bench = {"benchmarks": [{"name": "*", "status": "failed", "rows": 0, "seconds": 0.0,
                                     "message": _one_line(exc)}], "rows": []}
    report = {
        "meta": {**_meta(devices, args.quick, sizes), "check_seconds": round(check_seconds, 2)},
        "plan": plan,
        "checks": [asdict(c) for c in checks],
        "bench": bench,
    }
    report["summary"] = summarize(checks, bench)
    text = render(report, markdown=False)
    print()
    print(text, end="")
    json_path, md_path = write_report(report, args.out)
    print(f"report: {json_path} and {md_path}")
    return 0 if report["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
