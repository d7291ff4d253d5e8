"""CFGImageSampler on a tiny random Janus: the guided logits are l_u + w (l_c - l_u) of two plain forwards,
the log-probs follow logprob_mode, draws are keyed (seed, prompt, g, step) whatever the chunking, order or
decode attention, and bad arguments are refused with the argument's name."""
import pytest
import torch
from torch import nn

from ttrl_fast.sampler.cfg import CFGImageSampler, guided_logits, unconditional_prompt
from ttrl_fast.sampler.params import SamplingParams
from tests.policy.test_janus import BOI, BOS, CODEBOOK, PAD, TOKENS, VOCAB, tiny_janus

PROMPTS = [[BOS, 10, 11, 12, 13, BOI], [BOS, 20, BOI], [BOS, 30, 31, 32, BOI]]  # unequal: left padding


@pytest.fixture(scope="module")
def janus():
    return tiny_janus()


def sampler(model, **kwargs):
    options = dict(max_rows=16, max_seq_len=48, pad_token_id=PAD)
    options.update(kwargs)
    return CFGImageSampler(model, **options)


def plain_logits(model, prompt, tokens):
    """Image-token logits after prompt + tokens from one cache-free forward of the language model."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([prompt]))
        if tokens:
            embeds = torch.cat([embeds, model.prepare_embeddings_for_image_generation(torch.tensor([tokens]))], 1)
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[0, -1]
        return model.model.generation_head(hidden).float()


def recording(s):
    steps = {}
    s.step_hook = lambda step, cond, uncond, guided: steps.__setitem__(step, (cond.clone(), uncond.clone(),
                                                                                guided.clone()))
    return steps


def test_unconditional_prompt_keeps_bos_and_image_start():
    assert unconditional_prompt([BOS, 10, 11, BOI], PAD) == [BOS, PAD, PAD, BOI]
    assert unconditional_prompt([BOS, BOI], PAD) == [BOS, BOI]


@pytest.mark.parametrize("decode_attention", ["shared_prefix", "model"])
def test_guided_logits_are_the_cfg_of_two_plain_forwards(janus, decode_attention):
    s = sampler(janus, cfg_weight=3.0, decode_attention=decode_attention)
    steps = recording(s)
    batch = s.generate(PROMPTS[:2], SamplingParams(n=2, seed=5))
    for step in (0, 1, 7, TOKENS - 1):
        cond, uncond, guided = steps[step]
        assert torch.equal(guided, uncond.float() + 3.0 * (cond.float() - uncond.float()))
        assert torch.equal(guided, guided_logits(cond, uncond, 3.0))
        for row in range(4):
            prompt, tokens = PROMPTS[row // 2], batch.completion_ids[row, :step].tolist()
            ref_c = plain_logits(janus, prompt, tokens)
            ref_u = plain_logits(janus, unconditional_prompt(prompt, PAD), tokens)
            assert float((ref_c - ref_u).abs().max()) > 0.1  # the unconditional row really differs
            torch.testing.assert_close(cond[row], ref_c, rtol=0, atol=1e-5)
            torch.testing.assert_close(uncond[row], ref_u, rtol=0, atol=1e-5)
            torch.testing.assert_close(guided[row], ref_u + 3.0 * (ref_c - ref_u), rtol=0, atol=5e-5)


@pytest.mark.parametrize("mode", ["cond", "cfg"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_follow_the_mode(janus, mode, temperature):
    s = sampler(janus, logprob_mode=mode)
    steps = recording(s)
    batch = s.generate(PROMPTS, SamplingParams(n=2, seed=2, temperature=temperature))
    for step, (cond, _, guided) in steps.items():
        logits = guided if mode == "cfg" else cond.float()
        expected = torch.log_softmax(logits / temperature, -1).gather(1, batch.completion_ids[:, step:step + 1])
        torch.testing.assert_close(batch.logprobs[:, step], expected[:, 0], rtol=0, atol=1e-6)


def test_batch_layout(janus):
    batch = sampler(janus, num_image_tokens=6).generate(PROMPTS[:2], SamplingParams(n=3, max_tokens=2, seed=0))
    assert batch.completion_ids.shape == (6, 6)  # max_tokens does not apply: an image is num_image_tokens
    assert bool(batch.completion_mask.all()) and batch.finish_reason == ["length"] * 6
    assert batch.group_index.tolist() == [0, 0, 0, 1, 1, 1] and batch.prompt_lengths.tolist() == [6] * 3 + [3] * 3
    assert batch.processed_logprobs is None and batch.group_size == 3
    assert 0 <= int(batch.completion_ids.min()) and int(batch.completion_ids.max()) < CODEBOOK


def test_same_seed_same_tokens_whatever_the_chunking_order_and_attention(janus):
    params = SamplingParams(n=2, seed=11)
    prompts = PROMPTS + [PROMPTS[1]]  # a repeated prompt gets its own draws
    whole = sampler(janus).generate(prompts, params)
    chunked = sampler(janus, max_rows=4).generate(prompts, params)  # one group per chunk
    forked = sampler(janus, decode_attention="model", max_rows=8).generate(prompts, params)
    for other in (chunked, forked):
        assert torch.equal(other.completion_ids, whole.completion_ids)
        torch.testing.assert_close(other.logprobs, whole.logprobs, rtol=0, atol=1e-5)
    reverse = sampler(janus).generate(prompts[::-1][1:] + prompts[-1:], params)  # [2, 1, 0, 1]
    assert torch.equal(reverse.completion_ids[4:6], whole.completion_ids[0:2])
    assert torch.equal(reverse.completion_ids[0:2], whole.completion_ids[4:6])
    assert not torch.equal(whole.completion_ids[2:4], whole.completion_ids[6:8])
    again = sampler(janus).generate(prompts, params)
    assert torch.equal(again.completion_ids, whole.completion_ids)
    other_seed = sampler(janus).generate(prompts, SamplingParams(n=2, seed=12))
    assert not torch.equal(other_seed.completion_ids, whole.completion_ids)


def test_greedy_and_truncation_act_on_the_guided_logits(janus):
    s = sampler(janus, logprob_mode="cfg")
    steps = recording(s)
    greedy = s.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, seed=1))
    for step, (_, _, guided) in steps.items():
        assert torch.equal(greedy.completion_ids[:, step], guided.argmax(-1))
    top1 = s.generate(PROMPTS, SamplingParams(n=2, top_k=1, seed=4))
    assert torch.equal(top1.completion_ids, greedy.completion_ids)
    top5 = s.generate(PROMPTS, SamplingParams(n=2, top_k=5, seed=4, logprobs="processed"))
    for step, (_, _, guided) in steps.items():
        assert bool((guided.topk(5, -1).indices == top5.completion_ids[:, step:step + 1]).any(-1).all())
    assert bool((top5.logprobs >= top5.processed_logprobs - 1e-6).all())  # processed: renormalised over 5


def test_bad_arguments(janus):
    for kwargs, match in [(dict(cfg_weight=0.5), "cfg_weight"), (dict(cfg_weight=float("nan")), "cfg_weight"),
                          (dict(cfg_weight=True), "cfg_weight"), (dict(logprob_mode="guided"), "logprob_mode"),
                          (dict(max_rows=0), "max_rows"), (dict(max_seq_len=-1), "max_seq_len"),
                          (dict(num_image_tokens=0), "num_image_tokens"), (dict(pad_token_id=VOCAB), "pad_token_id"),
                          (dict(decode_attention="flash"), "decode_attention")]:
        with pytest.raises(ValueError, match=match):
            sampler(janus, **kwargs)
    with pytest.raises(TypeError, match="JanusForConditionalGeneration"):
        CFGImageSampler(nn.Linear(2, 2), max_rows=4, max_seq_len=8)
    s = sampler(janus)
    for prompts, params, match in [
            (PROMPTS, SamplingParams(n=9), "max_rows"), ([], SamplingParams(), "non-empty"),
            ([[BOS, VOCAB]], SamplingParams(), "vocabulary"), ([[BOS] * 40], SamplingParams(), "max_seq_len"),
            (PROMPTS, SamplingParams(repetition_penalty=1.2), "repetition_penalty"),
            (PROMPTS, SamplingParams(allowed_token_ids=[1, 2]), "allowed_token_ids"),
            (PROMPTS, SamplingParams(logprobs="processed"), "logprob_mode='cfg'")]:
        with pytest.raises(ValueError, match=match):
            s.generate(prompts, params)
    with pytest.raises(TypeError, match="SamplingParams"):
        s.generate(PROMPTS, {"n": 2})
