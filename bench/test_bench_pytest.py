"""pytest-benchmark entry points: small benchmarks of the main ops, one per backend that runs here.

    pytest bench/ --benchmark-only -q                      # seconds; compare runs with --benchmark-autosave
    pytest bench/ --benchmark-only --benchmark-compare     # against the last saved run

Not part of the test suite: pyproject's testpaths is ["tests"], so a plain `pytest` never collects
bench/. Shapes are small on purpose (a 2-core CPU box); bench/bench_*.py measure the real shapes.
On CUDA each call ends with torch.cuda.synchronize(), so the timings include the kernels.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")
ttrl_fast = pytest.importorskip("ttrl_fast")

from ttrl_fast.backends import available_backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Triton on CPU is the interpreter (a debugging tool, not a timing); it is never listed on CPU here
# unless TRITON_INTERPRET=1 is set, and even then left out.
BACKENDS = [b for b in available_backends(DEVICE) if not (DEVICE.type == "cpu" and b == "triton")]
SETTINGS = dict(min_rounds=5, max_time=0.25, warmup=True, warmup_iterations=2)


def _synced(fn):
    if DEVICE.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.benchmark(group="selective_log_softmax", **SETTINGS)
@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_log_softmax(benchmark, backend, mode):
    g = _gen()
    logits = (2 * torch.randn(64, 8192, generator=g)).to(DEVICE)
    index = torch.randint(0, 8192, (64,), generator=g).to(DEVICE)
    if mode == "forward":
        def call():
            with torch.no_grad():
                return ttrl_fast.selective_log_softmax(logits, index, backend=backend)
    else:
        logits.requires_grad_(True)

        def call():
            logits.grad = None
            out = ttrl_fast.selective_log_softmax(logits, index, backend=backend)
            out.sum().backward()
            return out
    out = benchmark(_synced(call))
    assert out.shape == (64,) and bool(torch.isfinite(out).all())


@pytest.mark.benchmark(group="policy_loss", **SETTINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_loss(benchmark, backend):
    g = _gen()
    b, t = 16, 256
    logp = (-torch.rand(b, t, generator=g) * 3).to(DEVICE).requires_grad_(True)
    old = (logp.detach() + 0.1 * torch.randn(b, t, generator=g).to(DEVICE))
    ref = (logp.detach() + 0.1 * torch.randn(b, t, generator=g).to(DEVICE))
    adv = torch.randn(b, generator=g).to(DEVICE)
    mask = (torch.rand(b, t, generator=g) > 0.1).to(DEVICE)

    def call():
        logp.grad = None
        loss, _ = ttrl_fast.policy_loss(logp, old, adv, mask, ref_logp=ref, loss_type="dapo", beta=0.04,
                                        backend=backend)
        loss.backward()
        return loss

    loss = benchmark(_synced(call))
    assert bool(torch.isfinite(loss))


@pytest.mark.benchmark(group="fused_linear_logprobs", **SETTINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_logprobs(benchmark, backend):
    g = _gen()
    n, h, v = 128, 128, 8192
    hidden = (torch.randn(n, h, generator=g) / h ** 0.5).to(DEVICE).requires_grad_(True)
    weight = torch.randn(v, h, generator=g).to(DEVICE).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g).to(DEVICE)

    def call():
        hidden.grad = weight.grad = None
        logp = ttrl_fast.fused_linear_logprobs(hidden, weight, targets, backend=backend)
        logp.sum().backward()
        return logp

    logp = benchmark(_synced(call))
    assert logp.shape == (n,) and bool((logp <= 0).all())


@pytest.mark.benchmark(group="sample_tokens", **SETTINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_tokens(benchmark, backend):
    g = _gen()
    rows, vocab = 32, 8192
    logits = (2 * torch.randn(rows, vocab, generator=g)).to(DEVICE)
    keys = torch.randint(0, 2 ** 32, (rows,), generator=g, dtype=torch.int64).to(DEVICE)
    out = benchmark(_synced(lambda: ttrl_fast.sample_tokens(logits, row_keys=keys, temperature=0.8, top_p=0.9,
                                                            backend=backend)))
    assert out.tokens.shape == (rows,) and bool((out.logprobs <= 0).all())


@pytest.mark.benchmark(group="rollout_sampler", min_rounds=3, max_time=0.5, warmup=True, warmup_iterations=1)
def test_rollout_sampler_generate(benchmark):
    """RolloutSampler.generate on a tiny random Llama: 2 prompts x G=4, 8 new tokens."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval().to(DEVICE)
    prompts = [list(range(5, 21)), list(range(30, 42))]
    sampler = ttrl_fast.RolloutSampler(model, max_rows=8, max_seq_len=32, eos_token_ids=[], pad_token_id=0)
    params = ttrl_fast.SamplingParams(n=4, max_tokens=8, seed=0)
    batch = benchmark(_synced(lambda: sampler.generate(prompts, params)))
    assert tuple(batch.completion_ids.shape) == (8, 8)
