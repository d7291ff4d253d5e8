"""The flash_attn_with_kvcache decode path, driven on CPU by a pure-PyTorch stand-in that follows
flash-attn 2.8's documented contract (k_cache [B, S, H_kv, D] with a contiguous last dim; row b
attends to [cache_leftpad[b], cache_seqlens[b]); int32 contiguous lengths). This checks the sampler's
glue (layout, lengths, left padding, compaction); the CUDA kernel itself cannot run here."""
import pytest
import torch

from ttrl_fast import RolloutSampler, SamplingParams
from ttrl_fast.sampler import flash_decode

from .conftest import PROMPTS, tiny_model
from .test_rollout import teacher_forced

calls = []


def stand_in_flash_attn_with_kvcache(q, k_cache, v_cache, *, cache_seqlens, cache_leftpad, softmax_scale, causal):
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and causal
    for lengths in (cache_seqlens, cache_leftpad):
        assert lengths.dtype == torch.int32 and lengths.is_contiguous() and lengths.shape == (q.shape[0],)
    batch, q_len, heads, _ = q.shape
    assert q_len == 1 and k_cache.shape[0] == batch
    calls.append(batch)
    out = torch.empty_like(q)
    for b in range(batch):
        lo, hi = int(cache_leftpad[b]), int(cache_seqlens[b])
        keys = k_cache[b, lo:hi].repeat_interleave(heads // k_cache.shape[2], 1)  # [L, H, D]
        values = v_cache[b, lo:hi].repeat_interleave(heads // v_cache.shape[2], 1)
        weights = (torch.einsum("hd,lhd->hl", q[b, 0], keys) * softmax_scale).softmax(-1)
        out[b, 0] = torch.einsum("hl,lhd->hd", weights, values)
    return out


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(flash_decode, "kernel", lambda: stand_in_flash_attn_with_kvcache)
    monkeypatch.setattr(flash_decode, "unsupported_reason", lambda model: None)
    calls.clear()


@pytest.mark.parametrize("compact_threshold", [0.0, 1.0])
def test_flash_path_logprobs_match_a_teacher_forced_forward(model, stand_in, compact_threshold):
    sampler = RolloutSampler(model, max_rows=12, max_seq_len=48, eos_token_ids=list(range(30, 40)),
                             compact_threshold=compact_threshold)
    assert sampler.decode_attention == "flash"  # auto prefers it where it can run
    batch = sampler.generate(PROMPTS, SamplingParams(n=3, max_tokens=20, seed=5))
    assert calls and max(calls) == 12
    if compact_threshold == 1.0:
        assert min(calls) < 12  # finished rows were compacted out of the kernel's batch
    for row, completion in enumerate(batch.completions()):
        expected = teacher_forced(model, PROMPTS[int(batch.group_index[row])], completion, 1.0)
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(), expected, rtol=0, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_flash_path_is_refused_on_cpu_with_the_reason():
    reason = flash_decode.unsupported_reason(tiny_model())
    assert "needs CUDA" in reason
    with pytest.raises(ValueError, match="needs CUDA"):
        RolloutSampler(tiny_model(), decode_attention="flash", max_rows=4, max_seq_len=16)
