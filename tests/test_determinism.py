"""Determinism: the same inputs give bitwise-identical outputs AND gradients on repeated calls, for every
public op (selective_log_softmax, policy_loss, grpo_loss, group_advantages, fused_linear_logprobs,
fused_linear_grpo_loss, sample_tokens) on every backend that runs here (reference and cpp on CPU,
triton under TRITON_INTERPRET=1 without a GPU, cuda and triton on a GPU); the C++ backend also gives
the same bits with 1, 2 and 3 intra-op threads where its kernels are multi-threaded (rows split with
at::parallel_for: selective log-softmax forward / backward, policy loss, sampling; the bf16 GEMM of the
fused head; group_advantages is single-threaded by design); and RolloutSampler with the same seed twice
gives identical tokens and log-probs.

CUDA is deterministic by design; what the kernels do (audit of csrc/ and ttrl_fast/kernels/triton/ for
atomicAdd / atomic_add / tl.atomic_* / any atomic):
  * csrc/cuda/*.cu: no atomics at all. selective_log_softmax, policy_loss, advantages and sampling are
    one CTA per row / sequence / group with fixed-order warp-shuffle + shared-memory block reductions
    whose CTA width depends only on the problem shape (see the comments at the top of each .cu/.cuh).
  * ttrl_fast/kernels/triton/*.py: no tl.atomic_* calls. Reductions are tl.sum within one program; the
    fused LM-head backward writes dW / db per vocabulary block (one program owns its rows: a
    read-modify-write in a fixed token-block order, fused_linear.py), dX per token block.
  * csrc/cpu: std::atomic counters only hand out work items (gemm_bf16_avx512.cpp, the skinny fp32
    GEMM in bindings.cpp); each output element is summed in a fixed order whichever thread computes
    it, so they are not reductions.
  * Outside the kernels, the only atomic-based reductions are in the *reference* backend: scatter_add
    in reference/advantages.py (group sums) and scatter_add_ in reference/logprob.py (one add per row:
    exact). On CUDA tensors the former is nondeterministic in the last bits, but the reference backend
    is never the default on CUDA (cuda -> triton -> reference) and only runs when requested. No default
    path reduces with atomics. The fused head's GEMMs on CUDA are cuBLAS calls (deterministic for a
    given GPU and library version unless a split-K algorithm with atomics is chosen; torch's
    use_deterministic_algorithms governs those).
The cuda parameters run only on a machine with a GPU (skipped here with the reason).
"""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import ttrl_fast
from ttrl_fast import backends

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

HAS_CUDA = torch.cuda.is_available()
OPS = ("selective_log_softmax", "policy_loss", "grpo_loss", "group_advantages", "fused_linear_logprobs",
       "fused_linear_grpo_loss", "sample_tokens")
# The dispatch op whose availability decides each public op's backends.
_DISPATCH = {"grpo_loss": "policy_loss", "fused_linear_logprobs": "selective_log_softmax",
             "fused_linear_grpo_loss": "policy_loss"}


def _device(backend: str) -> torch.device:
    return torch.device("cuda") if backend in ("triton", "cuda") and HAS_CUDA else torch.device("cpu")


def _small(backend: str) -> bool:
    """Tiny shapes for the Triton interpreter (it runs programs one by one in numpy) and the pure
    PyTorch reference (single-threaded by construction; float64 autograd inside is slow)."""
    return backend == "reference" or (backend == "triton" and not HAS_CUDA)


def _params():
    out = []
    for op in OPS:
        for name in backends.BACKENDS:
            reasons = backends.refusal_reasons(_DISPATCH.get(op, op), name, _device(name), torch.float32,
                                               explicit=True)
            marks = pytest.mark.skip(reason="; ".join(reasons)) if reasons else ()
            out.append(pytest.param(op, name, id=f"{op}-{name}", marks=marks))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.dtype != torch.bool else t


def assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, (what, name)
        assert torch.equal(_bits(x), _bits(y)), f"{what}: {name} differs bitwise"


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# One run of each op: fixed inputs (a fixed generator), outputs and gradients.
# ------------------------------------------------------------------------------------------------

def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_selective_log_softmax(backend, device, big, dtype=torch.float32):
    rows, vocab = (256, 1024) if big else (5, 70)
    g = _gen(1)
    x = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    x[:, 7] = float("-inf")
    index = torch.randint(8, vocab, (rows,), generator=g)
    mask = torch.rand(rows, generator=g) < 0.8
    up = torch.randn(rows, generator=g), torch.randn(rows, generator=g)
    leaf = x.to(device, copy=True).requires_grad_(True)
    logp, ent = ttrl_fast.selective_log_softmax(leaf, index.to(device), temperature=0.7, mask=mask.to(device),
                                                return_entropy=True, backend=backend)
    (logp * up[0].to(device) + ent * up[1].to(device)).sum().backward()
    return {"logp": logp, "entropy": ent, "grad": leaf.grad}


def _loss_inputs(batch, length, g):
    logp = -torch.rand(batch, length, generator=g) * 3
    old = logp + 0.3 * torch.randn(batch, length, generator=g)
    ref = logp + 0.3 * torch.randn(batch, length, generator=g)
    adv = torch.randn(batch, generator=g)
    mask = torch.rand(batch, length, generator=g) < 0.8
    mask[0] = False
    ratio = 0.5 + torch.rand(batch, length, generator=g)
    entropy = torch.rand(batch, length, generator=g) * 2
    return logp, old, ref, adv, mask, ratio, entropy


_LOSS_CONFIGS = [
    dict(loss_type="dapo", beta=0.04, use_bias_correction_kl=True, delta=1.5, epsilon_high=0.28),
    dict(loss_type="grpo", importance_sampling_level="sequence", beta=0.04, kl_estimator="k2"),
    dict(loss_type="vespo"),
    dict(loss_type="sapo", beta=0.1, kl_estimator="k1"),
    dict(loss_type="cispo", epsilon_high=5.0, entropy_coef=0.01),
]


def run_policy_loss(backend, device, big):
    batch, length = (256, 64) if big else (3, 11)
    out = {}
    for i, knobs in enumerate(_LOSS_CONFIGS):
        logp, old, ref, adv, mask, ratio, entropy = _loss_inputs(batch, length, _gen(10 + i))
        x = logp.to(device).requires_grad_(True)
        ent = entropy.to(device).requires_grad_(True)
        loss, metrics = ttrl_fast.policy_loss(x, old.to(device), adv.to(device), mask.to(device),
                                              ref_logp=ref.to(device), rollout_is_ratio=ratio.to(device), entropy=ent,
                                              backend=backend, **knobs)
        loss.backward()
        out[f"{i}/loss"], out[f"{i}/grad"] = loss, x.grad
        if ent.grad is not None:
            out[f"{i}/grad_entropy"] = ent.grad
        for name in metrics:
            out[f"{i}/{name}"] = torch.as_tensor(metrics[name])
    return out


def run_grpo_loss(backend, device, big, dtype=torch.float32):
    batch, length, vocab = (16, 32, 512) if big else (2, 5, 37)
    g = _gen(20)
    logits = (torch.randn(batch, length, vocab, generator=g) * 2).to(dtype)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.rand(batch, length, generator=g) < 0.8
    old = -torch.rand(batch, length, generator=g) * 5
    ref = -torch.rand(batch, length, generator=g) * 5
    adv = torch.randn(batch, generator=g)
    out = {}
    for level in ("token", "sequence"):
        x = logits.to(device, copy=True).requires_grad_(True)
        loss, metrics = ttrl_fast.grpo_loss(x, ids.to(device), adv.to(device), mask.to(device), old_logp=old.to(device),
                                            ref_logp=ref.to(device), temperature=0.9, beta=0.04, loss_type="dapo",
                                            importance_sampling_level=level, backend=backend)
        loss.backward()
        out[f"{level}/loss"], out[f"{level}/grad"] = loss, x.grad
        out[f"{level}/entropy"] = torch.as_tensor(metrics["entropy"])
    return out


def run_group_advantages(backend, device, big):
    n = 4096 if big else 24
    g = _gen(30)
    rewards = torch.randn(n, generator=g)
    rewards[torch.rand(n, generator=g) < 0.1] = float("nan")
    ids = torch.randint(0, n // 8, (n,), generator=g) * 13 - 50
    out = {}
    for mode in ("group", "batch", "none", "rloo"):
        adv, stats = ttrl_fast.group_advantages(rewards.to(device), group_size=8, mode=mode, backend=backend)
        out[f"{mode}/size"], out[f"{mode}/size_std"] = adv, stats["std"]
        adv, stats = ttrl_fast.group_advantages(rewards.to(device), group_ids=ids.to(device), mode=mode,
                                                backend=backend)
        out[f"{mode}/ids"], out[f"{mode}/ids_mean"] = adv, stats["mean"]
    return out


def _head(big, dtype, g):
    n, hidden, vocab = (300, 64, 1024) if big else (18, 16, 40)
    x = torch.randn(n, hidden, generator=g).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g) * 0.3).to(dtype)
    b = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[::5] = -100
    return x, w, b, targets


def run_fused_linear_logprobs(backend, device, big, dtype=torch.float32):
    x, w, b, targets = _head(big, dtype, _gen(40))
    xs, ws, bs = (t.to(device, copy=True).requires_grad_(True) for t in (x, w, b))
    logp, ent = ttrl_fast.fused_linear_logprobs(xs, ws, targets.to(device), bias=bs, temperature=0.8,
                                                return_entropy=True, chunk_size=64 if big else 7, backend=backend)
    up = torch.randn(logp.shape, generator=_gen(41)).to(device)
    (logp * up + ent).sum().backward()
    return {"logp": logp, "entropy": ent, "dx": xs.grad, "dw": ws.grad, "db": bs.grad}


def run_fused_linear_grpo_loss(backend, device, big, dtype=torch.float32):
    x, w, b, targets = _head(big, dtype, _gen(50))
    batch = 10 if big else 3
    length = x.shape[0] // batch
    g = _gen(51)
    mask = targets.view(batch, length) != -100
    ids = targets.clamp(min=0).view(batch, length)
    old = -torch.rand(batch, length, generator=g) * 5
    ref = -torch.rand(batch, length, generator=g) * 5
    adv = torch.randn(batch, generator=g)
    out = {}
    for level, loss_type in (("token", "dapo"), ("sequence", "grpo"), ("token", "vespo")):
        xs, ws, bs = (t.to(device, copy=True).requires_grad_(True) for t in (x, w, b))
        loss, metrics = ttrl_fast.fused_linear_grpo_loss(
            xs.view(batch, length, -1), ws, ids.to(device), mask.to(device), adv.to(device), bias=bs,
            old_logp=old.to(device), ref_logp=ref.to(device), beta=0.04, loss_type=loss_type,
            importance_sampling_level=level, log_entropy=True, chunk_size=64 if big else 7, backend=backend)
        loss.backward()
        key = f"{level}-{loss_type}"
        out.update({f"{key}/loss": loss, f"{key}/dx": xs.grad, f"{key}/dw": ws.grad, f"{key}/db": bs.grad,
                    f"{key}/kl": torch.as_tensor(metrics["kl"])})
    return out


def run_sample_tokens(backend, device, big, dtype=torch.float32):
    rows, vocab = (64, 1024) if big else (4, 70)
    g = _gen(60)
    logits = (torch.randn(rows, vocab, generator=g) * 2).to(dtype)
    keys = torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64)
    seen = torch.rand(rows, vocab, generator=g) < 0.1
    out = {}
    for i, kw in enumerate([dict(), dict(temperature=0.7, top_p=0.9), dict(top_k=20, min_p=0.05, temperature=1.3),
                            dict(temperature=0.0), dict(repetition_penalty=1.3, top_p=0.5)]):
        res = ttrl_fast.sample_tokens(logits.to(device), row_keys=keys.to(device), step=7,
                                      seen=seen.to(device) if "repetition_penalty" in kw else None,
                                      ban_ids=torch.tensor([0, 3], device=device), backend=backend, **kw)
        for name, value in res._asdict().items():
            out[f"{i}/{name}"] = value
    return out


RUNS = {name: globals()[f"run_{name}"] for name in OPS}


@pytest.mark.parametrize("op, backend", _params())
def test_repeated_calls_are_bitwise_identical(op, backend):
    device = _device(backend)
    big = not _small(backend)
    first = RUNS[op](backend, device, big)
    for attempt in range(2):
        assert_bitwise_equal(first, RUNS[op](backend, device, big), f"{op} on {backend}, repeat {attempt + 1}")


_HALF_OPS = ("selective_log_softmax", "grpo_loss", "fused_linear_logprobs", "fused_linear_grpo_loss", "sample_tokens")


@pytest.mark.parametrize("op", _HALF_OPS)
@pytest.mark.parametrize("backend", ["cpp", "triton", "cuda"])
def test_repeated_bf16_calls_are_bitwise_identical(op, backend):
    """bf16 inputs take other paths (the native AVX512-BF16 GEMM of the fused head on CPU)."""
    device = _device(backend)
    reasons = backends.refusal_reasons(_DISPATCH.get(op, op), backend, device, torch.bfloat16, explicit=True)
    if reasons:
        pytest.skip("; ".join(reasons))
    first = RUNS[op](backend, device, True, dtype=torch.bfloat16)
    assert_bitwise_equal(first, RUNS[op](backend, device, True, dtype=torch.bfloat16), f"{op} bf16 on {backend}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("op", OPS)
def test_cpp_results_do_not_depend_on_the_thread_count(op, dtype):
    if backends.refusal_reasons(_DISPATCH.get(op, op), "cpp", torch.device("cpu"), dtype, explicit=True):
        pytest.skip("the cpp backend is not available")
    if dtype == torch.bfloat16 and op not in _HALF_OPS:
        pytest.skip("this op converts its inputs to fp32 first")
    kwargs = {} if dtype == torch.float32 else {"dtype": dtype}
    with _threads(1):
        one = RUNS[op]("cpp", torch.device("cpu"), True, **kwargs)
    for n in (2, 3):
        with _threads(n):
            assert_bitwise_equal(one, RUNS[op]("cpp", torch.device("cpu"), True, **kwargs),
                                 f"{op} ({dtype}) with {n} threads vs 1")


def test_automatic_dispatch_is_deterministic_too():
    """backend=None (cpp on CPU, cuda on GPU) gives the same bits as naming that backend."""
    device = torch.device("cuda") if HAS_CUDA else torch.device("cpu")
    name = backends.select("selective_log_softmax", device, torch.float32).backend
    assert_bitwise_equal(run_selective_log_softmax(None, device, True), run_selective_log_softmax(name, device, True),
                         f"automatic vs {name}")


# ------------------------------------------------------------------------------------------------
# The rollout sampler
# ------------------------------------------------------------------------------------------------

def _tiny_llama(vocab=61, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def _sampler_params():
    out = [pytest.param(None, id="auto"), pytest.param("reference", id="reference")]
    reasons = backends.refusal_reasons("sample_tokens", "triton", torch.device("cpu"), torch.float32, explicit=True)
    if HAS_CUDA:
        reasons = ["the tiny model runs on CPU; Triton on a GPU is covered by the op tests above"]
    marks = pytest.mark.skip(reason="; ".join(reasons)) if reasons else ()
    out.append(pytest.param("triton", id="triton", marks=marks))
    return out


@pytest.mark.parametrize("backend", _sampler_params())
def test_rollout_sampler_same_seed_twice_gives_identical_tokens_and_logprobs(backend):
    model = _tiny_llama()
    prompts = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15, 16]]
    n, steps = 3, 12
    if backend == "triton":  # the interpreter: fewer rows and steps
        prompts, n, steps = prompts[:2], 2, 4
    params = ttrl_fast.SamplingParams(n=n, max_tokens=steps, temperature=0.9, top_p=0.95, top_k=40,
                                      repetition_penalty=1.1, seed=1234, logprobs="both")
    runs = []
    for _ in range(2):
        sampler = ttrl_fast.RolloutSampler(model, max_rows=6, max_seq_len=32, backend=backend)
        batch = sampler.generate(prompts, params)
        runs.append({"ids": batch.completion_ids, "mask": batch.completion_mask, "logprobs": batch.logprobs,
                     "processed": batch.processed_logprobs, "kept": batch.log_kept_mass})
    # One sampler reused (its cache and buffers already written) must not change anything either.
    again = sampler.generate(prompts, params)
    runs.append({"ids": again.completion_ids, "mask": again.completion_mask, "logprobs": again.logprobs,
                 "processed": again.processed_logprobs, "kept": again.log_kept_mass})
    assert_bitwise_equal(runs[0], runs[1], "RolloutSampler, same seed, fresh sampler")
    assert_bitwise_equal(runs[0], runs[2], "RolloutSampler, same seed, reused sampler")
    other = sampler.generate(prompts, dataclasses.replace(params, seed=4321))
    assert not torch.equal(other.completion_ids, runs[0]["ids"]), "another seed should draw other tokens"
