"""Shared-prefix decode attention: the same draws and log-probs as G copies of the prompt's KV (and as a
teacher-forced forward), with ragged prompts, GQA, compaction and several chunks; the model's attention
setting is restored; models it cannot serve are refused with the reason."""
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from ttrl_fast import RolloutSampler, SamplingParams
from ttrl_fast.sampler import shared_prefix

from .conftest import PROMPTS, tiny_model
from .test_rollout import teacher_forced

EOS = list(range(30, 40))  # frequent stops: rows finish at different steps and get compacted


def _pair(model, **kwargs):
    return (RolloutSampler(model, decode_attention="shared_prefix", eos_token_ids=EOS, **kwargs),
            RolloutSampler(model, decode_attention="model", eos_token_ids=EOS, **kwargs))


@pytest.mark.parametrize("compact_threshold", [0.0, 1.0])
@pytest.mark.parametrize("max_rows", [20, 5])  # one chunk of all groups / one group per chunk
def test_same_draws_and_logprobs_as_forked_copies(model, compact_threshold, max_rows):
    shared, forked = _pair(model, max_rows=max_rows, max_seq_len=48, compact_threshold=compact_threshold)
    params = SamplingParams(n=5, max_tokens=24, seed=11, top_p=0.95)
    a, b = shared.generate(PROMPTS, params), forked.generate(PROMPTS, params)
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
    assert a.finish_reason == b.finish_reason
    assert len(set(a.completion_lengths.tolist())) > 1  # rows really stopped at different steps


def test_shared_logprobs_match_a_teacher_forced_forward(model):
    sampler = RolloutSampler(model, decode_attention="shared_prefix", max_rows=12, max_seq_len=48, eos_token_ids=EOS,
                             compact_threshold=1.0)
    batch = sampler.generate(PROMPTS, SamplingParams(n=3, max_tokens=20, temperature=0.8, seed=3))
    for row, completion in enumerate(batch.completions()):
        expected = teacher_forced(model, PROMPTS[int(batch.group_index[row])], completion, 0.8)
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(), expected, rtol=0, atol=1e-5)


def test_shared_attention_runs_and_the_setting_is_restored(monkeypatch):
    model = tiny_model()
    calls = []
    original = shared_prefix.shared_prefix_attention

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape[0])
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(shared_prefix, "shared_prefix_attention", spy)
    sampler = RolloutSampler(model, max_rows=8, max_seq_len=32)  # automatic: on for Llama + sdpa
    assert sampler.decode_attention == "shared_prefix"
    sampler.generate(PROMPTS[:2], SamplingParams(n=4, max_tokens=5, seed=0, ignore_eos=True))
    assert calls == [8] * (4 * model.config.num_hidden_layers)  # decode steps after the first token x layers
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="only inside RolloutSampler"):
        original(model.model.layers[0].self_attn, torch.zeros(1, 4, 1, 8), torch.zeros(1, 2, 1, 8),
                 torch.zeros(1, 2, 1, 8), None, 1.0)  # outside a sampler decode step


def test_group_of_one_and_greedy_use_the_plain_path():
    model = tiny_model()
    sampler = RolloutSampler(model, max_rows=4, max_seq_len=32, eos_token_ids=[])
    one = sampler.generate(PROMPTS, SamplingParams(n=1, max_tokens=6, temperature=0.0))
    forked = RolloutSampler(model, decode_attention="model", max_rows=4, max_seq_len=32, eos_token_ids=[])
    assert torch.equal(one.completion_ids, forked.generate(PROMPTS, SamplingParams(n=1, max_tokens=6,
                                                                                   temperature=0.0)).completion_ids)


def test_models_it_cannot_serve_are_refused_with_the_reason():
    config = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4, use_sliding_window=True)
    sliding = MistralForCausalLM(config).eval()
    reason = shared_prefix.unsupported_reason(sliding)
    with pytest.raises(ValueError, match="decode_attention='shared_prefix' cannot serve this model: sliding"):
        RolloutSampler(sliding, decode_attention="shared_prefix", max_rows=4, max_seq_len=32)
    with pytest.raises(ValueError, match="decode_attention='flash' cannot serve this model: the model is on cpu"):
        RolloutSampler(sliding, decode_attention="flash", max_rows=4, max_seq_len=32)
    with pytest.raises(ValueError, match="decode_attention must be"):
        RolloutSampler(sliding, decode_attention="paged", max_rows=4, max_seq_len=32)
    auto = RolloutSampler(sliding, max_rows=4, max_seq_len=32)
    assert reason and auto.decode_attention == "model"
    eager = tiny_model(attn="eager")
    assert shared_prefix.unsupported_reason(eager) is None
