"""RolloutSampler: exact log-probs, HF greedy parity, keyed reproducibility, stop handling, chunking and
compaction, on tiny random Llama and Qwen2 models."""
import pytest
import torch

from ttrl_fast import RolloutSampler, SamplingParams

from .conftest import PROMPTS, VOCAB, tiny_model


def teacher_forced(model, prompt, completion, temperature):
    """log_softmax(logits / T) of each completion token from one full forward of prompt + completion."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].double() / temperature
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1:len(prompt) - 1 + len(completion)]
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_match_a_teacher_forced_forward(model, temperature, top_p):
    sampler = RolloutSampler(model, max_rows=8, max_seq_len=48, eos_token_ids=[3, 4])
    batch = sampler.generate(PROMPTS, SamplingParams(n=3, max_tokens=20, temperature=temperature, top_p=top_p, seed=7))
    assert batch.completion_ids.shape[0] == len(PROMPTS) * 3
    for row, completion in enumerate(batch.completions()):
        prompt = PROMPTS[int(batch.group_index[row])]
        expected = teacher_forced(model, prompt, completion, temperature)
        got = batch.logprobs[row, :len(completion)].double()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert (batch.logprobs[row, len(completion):] == 0).all()


def test_greedy_equals_hf_generate_on_ragged_prompts(model):
    sampler = RolloutSampler(model, max_rows=8, max_seq_len=40, eos_token_ids=[], pad_token_id=0)
    batch = sampler.generate(PROMPTS, SamplingParams(n=2, max_tokens=12, temperature=0.0))
    longest = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in PROMPTS])
    hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                        eos_token_id=None)[:, longest:]
    assert torch.equal(batch.completion_ids, hf.repeat_interleave(2, 0))
    assert batch.finish_reason == ["length"] * 8


def test_same_seed_same_tokens_under_permutation_and_chunking():
    model = tiny_model()
    params = SamplingParams(n=4, max_tokens=10, seed=123, top_k=20)
    whole = RolloutSampler(model, max_rows=16, max_seq_len=32).generate(PROMPTS, params)
    again = RolloutSampler(model, max_rows=16, max_seq_len=32).generate(PROMPTS, params)
    assert torch.equal(whole.completion_ids, again.completion_ids)
    order = [2, 0, 3, 1]
    permuted = RolloutSampler(model, max_rows=16, max_seq_len=32).generate([PROMPTS[i] for i in order], params)
    chunked = RolloutSampler(model, max_rows=4, max_seq_len=32).generate(PROMPTS, params)  # one group per chunk
    for new, old in enumerate(order):
        assert torch.equal(permuted.completion_ids[new * 4:(new + 1) * 4], whole.completion_ids[old * 4:(old + 1) * 4])
    assert torch.equal(chunked.completion_ids, whole.completion_ids)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, rtol=0, atol=1e-5)
    other = RolloutSampler(model, max_rows=16, max_seq_len=32).generate(PROMPTS, SamplingParams(n=4, max_tokens=10,
                                                                                                 seed=124, top_k=20))
    assert not torch.equal(other.completion_ids, whole.completion_ids)


def test_samples_of_a_group_differ():
    batch = RolloutSampler(tiny_model(), max_rows=8, max_seq_len=32).generate(
        PROMPTS[:1], SamplingParams(n=8, max_tokens=8, seed=0))
    assert len({tuple(c) for c in batch.completions()}) > 1


def test_stops_with_pad_equal_to_eos_and_several_eos_ids():
    model = tiny_model()
    eos = list(range(30, 40))  # ~10% stop hazard per step on the random model
    sampler = RolloutSampler(model, max_rows=16, max_seq_len=64, eos_token_ids=eos, pad_token_id=30)
    batch = sampler.generate(PROMPTS, SamplingParams(n=4, max_tokens=40, seed=3))
    lengths = batch.completion_lengths
    assert "stop" in batch.finish_reason and (lengths < 40).any()
    for row, reason in enumerate(batch.finish_reason):
        n = int(lengths[row])
        tokens = batch.completion_ids[row]
        stops_inside = [t in eos for t in tokens[:n - 1].tolist()]
        assert not any(stops_inside), "a row continued past its stop token"
        if reason == "stop":
            assert int(tokens[n - 1]) in eos  # the stop token is kept in the mask
        else:
            assert n == 40
        assert (tokens[n:] == 30).all() and not batch.completion_mask[row, n:].any()


def test_min_tokens_and_ignore_eos():
    model = tiny_model()
    eos = list(range(30, 60))  # ~30% hazard: without min_tokens almost every row stops early
    sampler = RolloutSampler(model, max_rows=16, max_seq_len=64, eos_token_ids=eos)
    batch = sampler.generate(PROMPTS, SamplingParams(n=4, max_tokens=12, min_tokens=6, seed=1))
    assert (batch.completion_lengths >= 6).all()
    assert not any(t in eos for row in batch.completion_ids[:, :5].tolist() for t in row)
    # the raw log-prob ignores the ban (it is what the trainer recomputes)
    row = batch.completions()[0]
    torch.testing.assert_close(batch.logprobs[0, :len(row)].double(), teacher_forced(model, PROMPTS[0], row, 1.0),
                               rtol=0, atol=1e-5)
    free = sampler.generate(PROMPTS, SamplingParams(n=4, max_tokens=12, seed=1, ignore_eos=True))
    assert (free.completion_lengths == 12).all() and free.finish_reason == ["length"] * 16
    stop = sampler.generate(PROMPTS, SamplingParams(n=4, max_tokens=12, seed=1, ignore_eos=True,
                                                    stop_token_ids=[31]))
    assert all(r == "length" or c[-1] == 31 for r, c in zip(stop.finish_reason, stop.completions()))


def test_processed_minus_raw_is_minus_log_kept_mass():
    sampler = RolloutSampler(tiny_model("qwen2"), max_rows=8, max_seq_len=32)
    batch = sampler.generate(PROMPTS[:2], SamplingParams(n=4, max_tokens=8, top_k=10, top_p=0.8, seed=5,
                                                         logprobs="both"))
    mask = batch.completion_mask
    assert batch.processed_logprobs is not None and batch.log_kept_mass is not None
    torch.testing.assert_close((batch.processed_logprobs - batch.logprobs)[mask], -batch.log_kept_mass[mask],
                               rtol=0, atol=1e-5)
    assert (batch.log_kept_mass[mask] < 0).all() and (batch.processed_logprobs[mask] <= 0).all()
    plain = sampler.generate(PROMPTS[:2], SamplingParams(n=4, max_tokens=8, seed=5))
    assert plain.processed_logprobs is None


def test_compaction_does_not_change_the_draws():
    model = tiny_model()
    eos = list(range(30, 45))
    params = SamplingParams(n=4, max_tokens=30, seed=9)
    never = RolloutSampler(model, max_rows=16, max_seq_len=64, eos_token_ids=eos, compact_threshold=0.0)
    always = RolloutSampler(model, max_rows=16, max_seq_len=64, eos_token_ids=eos, compact_threshold=1.0)
    a, b = never.generate(PROMPTS, params), always.generate(PROMPTS, params)
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
    assert a.finish_reason == b.finish_reason


def test_repetition_penalty_greedy_matches_hf():
    model = tiny_model()
    sampler = RolloutSampler(model, max_rows=4, max_seq_len=40, eos_token_ids=[])
    batch = sampler.generate(PROMPTS, SamplingParams(n=1, max_tokens=10, temperature=0.0, repetition_penalty=1.5))
    for b, prompt in enumerate(PROMPTS):  # unbatched: HF would also penalise left-padding ids
        hf = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, repetition_penalty=1.5,
                            eos_token_id=None, pad_token_id=0)
        assert batch.completion_ids[b].tolist() == hf[0, len(prompt):].tolist()


def test_cache_is_reused_across_calls():
    sampler = RolloutSampler(tiny_model(), max_rows=8, max_seq_len=32)
    sampler.generate(PROMPTS, SamplingParams(n=2, max_tokens=4, seed=0))
    pointers = [layer.key_buffer.data_ptr() for layer in sampler.cache.layers]
    sampler.generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=6, seed=0))
    assert pointers == [layer.key_buffer.data_ptr() for layer in sampler.cache.layers]


def test_trl_rollout_contract():
    batch = RolloutSampler(tiny_model(), max_rows=8, max_seq_len=32).generate(
        PROMPTS[:2], SamplingParams(n=2, max_tokens=5, seed=0))
    trl = batch.to_trl()
    assert trl["prompt_ids"] == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    assert [len(x) for x in trl["logprobs"]] == [len(x) for x in trl["completion_ids"]]


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.1), "top_p"), (dict(n=0), "n"), (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.5), "temperature"), (dict(top_k=-3), "top_k"), (dict(min_p=2.0), "min_p"),
    (dict(min_tokens=5, max_tokens=3), "min_tokens"), (dict(logprobs="all"), "logprobs"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(stop_token_ids=[-1]), "stop_token_ids"),
])
def test_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_sampler_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len=10 is too small for prompts\\[0\\] of length 7"):
        RolloutSampler(model, max_rows=4, max_seq_len=10).generate(PROMPTS, SamplingParams(max_tokens=8))
    with pytest.raises(ValueError, match="n=8 exceeds max_rows=4"):
        RolloutSampler(model, max_rows=4, max_seq_len=32).generate(PROMPTS, SamplingParams(n=8))
    with pytest.raises(ValueError, match="outside"):
        RolloutSampler(model, max_rows=4, max_seq_len=32).generate([[VOCAB]], SamplingParams())
    with pytest.raises(ValueError, match="non-empty"):
        RolloutSampler(model, max_rows=4, max_seq_len=32).generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="max_rows"):
        RolloutSampler(model, max_rows=0, max_seq_len=32)


def test_eager_attention_model():
    model = tiny_model(attn="eager")
    batch = RolloutSampler(model, max_rows=8, max_seq_len=40).generate(PROMPTS, SamplingParams(n=2, max_tokens=6,
                                                                                               seed=2))
    for row, completion in enumerate(batch.completions()):
        prompt = PROMPTS[int(batch.group_index[row])]
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(),
                                   teacher_forced(model, prompt, completion, 1.0), rtol=0, atol=1e-5)


def test_equal_length_prompts_run_unmasked_and_exact():
    model = tiny_model("qwen2")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    sampler = RolloutSampler(model, max_rows=8, max_seq_len=24, eos_token_ids=list(range(30, 40)))
    batch = sampler.generate(prompts, SamplingParams(n=4, max_tokens=12, seed=4))
    assert not sampler._masked
    for row, completion in enumerate(batch.completions()):
        prompt = prompts[int(batch.group_index[row])]
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(),
                                   teacher_forced(model, prompt, completion, 1.0), rtol=0, atol=1e-5)
    hf = model.generate(torch.tensor(prompts), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = RolloutSampler(model, max_rows=8, max_seq_len=24, eos_token_ids=[]).generate(
        prompts, SamplingParams(n=1, max_tokens=12, temperature=0))
    assert torch.equal(greedy.completion_ids, hf[:, 4:])


def test_allowed_token_ids_restrict_draws_not_the_raw_logprob():
    model = tiny_model()
    allowed = list(range(40, 53))
    sampler = RolloutSampler(model, max_rows=8, max_seq_len=40, eos_token_ids=[3])
    batch = sampler.generate(PROMPTS[:2], SamplingParams(n=4, max_tokens=16, seed=1, allowed_token_ids=allowed))
    assert set(batch.completion_ids.flatten().tolist()) <= set(allowed)
    assert batch.finish_reason == ["length"] * 8  # eos is not allowed: rows run to max_tokens
    for row, completion in enumerate(batch.completions()):
        prompt = PROMPTS[int(batch.group_index[row])]
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(),
                                   teacher_forced(model, prompt, completion, 1.0), rtol=0, atol=1e-5)
    # the processed distribution renormalises over the allowed ids (a ban is not truncation: log_kept_mass
    # stays 0, as in the spec)
    assert (batch.processed_logprobs > batch.logprobs + 1e-3).all()
    with pytest.raises(ValueError, match="allowed_token_ids"):
        sampler.generate(PROMPTS[:1], SamplingParams(allowed_token_ids=[VOCAB]))
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=[])
