"""RolloutSampler with images (prefill_inputs) on tiny random InternVL and Qwen2.5-VL: exact log-probs against
the model's own full forward (its own image handling and M-RoPE positions), HF greedy parity, one vision
encoding per prompt, clear errors for bad prefill_inputs; every decode attention path (flash through its
CPU stand-in)."""
import pytest
import torch

from ttrl_fast import RolloutSampler, SamplingParams
from ttrl_fast.sampler import flash_decode
from ttrl_fast.sampler import shared_prefix as _shared
from ttrl_fast.sampler.decode_attention import text_config
from ttrl_fast.sampler.padding import left_pad
from ttrl_fast.sampler.positions import batch_prefill

from .test_flash_decode import stand_in_flash_attn_with_kvcache
from ..policy.vlm_models import IMG, MODELS, PAD, VOCAB, count_images, prompts_for, tiny_qwen25vl


def built(kind):
    build, inputs = MODELS[kind]
    pairs = [inputs(p) for p in prompts_for(kind)]
    return build(), [ids for ids, _ in pairs], [extra for _, extra in pairs]


def model_kwargs(kind, ids, extra):
    """What the model's own forward needs for its image handling (Qwen derives M-RoPE from mm_token_type_ids)."""
    kwargs = dict(extra)
    if kind == "qwen2_5_vl":
        kwargs["mm_token_type_ids"] = (ids == IMG).long()
    return kwargs


def teacher_forced(model, kind, prompt, extra, completion, temperature):
    """log_softmax(logits / T) of the completion from one unpadded forward of [prompt ; completion]. The
    completion's image-placeholder ids must not count as placeholders: the test bans them when sampling."""
    ids = torch.tensor([prompt + completion])
    kwargs = model_kwargs(kind, ids, extra)
    if kind == "qwen2_5_vl":
        kwargs["mm_token_type_ids"][:, len(prompt):] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0].double() / temperature
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def worst_gap(model, kind, ids, extras, batch, temperature):
    worst = 0.0
    for row, completion in enumerate(batch.completions()):
        b = int(batch.group_index[row])
        expected = teacher_forced(model, kind, ids[b], extras[b], completion, temperature)
        worst = max(worst, float((batch.logprobs[row, :len(completion)].double() - expected).abs().max()))
        assert (batch.logprobs[row, len(completion):] == 0).all()
    return worst


NOT_IMAGE = [t for t in range(VOCAB) if t != IMG]  # ids the model may sample (the raw log-prob ignores the ban)


@pytest.mark.parametrize("decode_attention", ["shared_prefix", "model", "flash"])
@pytest.mark.parametrize("kind", ["internvl", "qwen2_5_vl"])
def test_logprobs_match_the_models_own_forward_with_the_image(kind, decode_attention, monkeypatch):
    """flash: the CPU stand-in of flash_attn_with_kvcache from test_flash_decode (checks the glue only)."""
    if decode_attention == "flash":
        monkeypatch.setattr(flash_decode, "kernel", lambda: stand_in_flash_attn_with_kvcache)
        monkeypatch.setattr(flash_decode, "unsupported_reason", lambda model: None)
    model, ids, extras = built(kind)
    assert len({len(p) for p in ids}) == 3  # ragged prompts
    # the attention switch flips the config the language model's layers hold, and their layer_idx is set
    layers = model.get_decoder().layers
    assert all(layer.self_attn.config is text_config(model) for layer in layers)
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(len(layers)))
    calls = []
    original = _shared.shared_prefix_attention
    monkeypatch.setattr(_shared, "shared_prefix_attention", lambda module, *a, **k: calls.append(module.layer_idx)
                        or original(module, *a, **k))
    # max_rows 6 = two groups per chunk: the 3 prompts run in 2 chunks; stop ids make rows finish apart
    sampler = RolloutSampler(model, max_rows=6, max_seq_len=64, eos_token_ids=[2, 9, 12],
                             decode_attention=decode_attention)
    assert sampler.decode_attention == decode_attention
    params = SamplingParams(n=3, max_tokens=10, temperature=0.8, seed=5, allowed_token_ids=NOT_IMAGE)
    batch = sampler.generate(ids, params, prefill_inputs=extras)
    assert batch.completion_ids.shape[0] == 9 and len(set(batch.finish_reason)) == 2
    assert worst_gap(model, kind, ids, extras, batch, 0.8) < 1e-5
    assert (len(calls) > 0) == (decode_attention == "shared_prefix")


def test_mrope_positions_are_needed_and_given_token_types_are_padded():
    """Control: Qwen2.5-VL with plain cumsum positions is far off; with mm_token_type_ids supplied per
    prompt (as a processor returns them) it is exact again."""
    model, ids, extras = built("qwen2_5_vl")
    params = SamplingParams(n=2, max_tokens=6, seed=1, allowed_token_ids=NOT_IMAGE)
    sampler = RolloutSampler(model, max_rows=6, max_seq_len=64, eos_token_ids=[])
    sampler.positions = None
    assert worst_gap(model, "qwen2_5_vl", ids, extras, sampler.generate(ids, params, prefill_inputs=extras), 1.0) > 1e-3
    typed = [dict(extra, mm_token_type_ids=(torch.tensor(p) == IMG).int()) for p, extra in zip(ids, extras)]
    sampler = RolloutSampler(model, max_rows=6, max_seq_len=64, eos_token_ids=[])
    batch = sampler.generate(ids, params, prefill_inputs=typed)
    assert worst_gap(model, "qwen2_5_vl", ids, extras, batch, 1.0) < 1e-5


@pytest.mark.parametrize("kind", ["internvl", "qwen2_5_vl"])
def test_greedy_equals_hf_generate(kind):
    model, ids, extras = built(kind)
    sampler = RolloutSampler(model, max_rows=6, max_seq_len=64, eos_token_ids=[], pad_token_id=PAD)
    batch = sampler.generate(ids, SamplingParams(n=2, max_tokens=8, temperature=0.0), prefill_inputs=extras)
    padded, mask = left_pad(ids, PAD)
    kwargs = model_kwargs(kind, padded, batch_prefill(extras, [len(p) for p in ids], padded.shape[1], None))
    hf = model.generate(input_ids=padded, attention_mask=mask.long(), **kwargs, max_new_tokens=8, do_sample=False,
                        pad_token_id=PAD, eos_token_id=None)[:, padded.shape[1]:]
    assert torch.equal(batch.completion_ids, hf.repeat_interleave(2, 0))
    assert len({tuple(r) for r in hf.tolist()}) == 3  # the images / questions lead to different answers


@pytest.mark.parametrize("kind", ["internvl", "qwen2_5_vl"])
def test_each_image_is_encoded_once_per_prompt(kind):
    model, ids, extras = built(kind)
    seen = count_images(model)
    RolloutSampler(model, max_rows=12, max_seq_len=64).generate(ids, SamplingParams(n=4, max_tokens=5),
                                                                 prefill_inputs=extras)
    # one prefill forward for 3 prompts x G=4 rows, nothing in decode
    assert seen["calls"] == 1 and seen["images"] == 3


@pytest.mark.parametrize("kind", ["internvl", "qwen2_5_vl"])
def test_a_text_only_prompt_among_image_prompts(kind):
    """An empty dict: the prompt contributes no image to the chunk's batch (and plain positions)."""
    model, ids, extras = built(kind)
    ids[1], extras[1] = [1, 10, 11, 12, 13], {}
    batch = RolloutSampler(model, max_rows=9, max_seq_len=64, eos_token_ids=[]).generate(
        ids, SamplingParams(n=3, max_tokens=6, seed=2, allowed_token_ids=NOT_IMAGE), prefill_inputs=extras)
    assert worst_gap(model, kind, ids, extras, batch, 1.0) < 1e-5


def test_text_only_prompts_on_a_vlm_need_no_prefill_inputs():
    model = tiny_qwen25vl()
    prompts = [[1, 10, 11, 12], [1, 13]]
    batch = RolloutSampler(model, max_rows=4, max_seq_len=32, eos_token_ids=[]).generate(
        prompts, SamplingParams(n=2, max_tokens=5, seed=0))
    for row, completion in enumerate(batch.completions()):
        prompt = prompts[int(batch.group_index[row])]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
        expected = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(completion)[:, None])
        torch.testing.assert_close(batch.logprobs[row, :len(completion)].double(), expected.squeeze(-1), rtol=0,
                                   atol=1e-5)


def test_bad_prefill_inputs_are_named():
    model, ids, extras = built("internvl")
    sampler = RolloutSampler(model, max_rows=6, max_seq_len=64)
    params = SamplingParams(n=2, max_tokens=3)
    cases = [(extras[:2], ValueError, "prefill_inputs has 2 entries for 3 prompts"),
             (extras[0], TypeError, "prefill_inputs must be None or a list"),
             ([extras[0], "pixels", extras[2]], TypeError, r"prefill_inputs\[1\] must be a dict"),
             ([extras[0], dict(extras[1], attention_mask=None), extras[2]], ValueError, r"prefill_inputs\[1\] sets"),
             ([extras[0], extras[1], dict(extras[2], mm_token_type_ids=[0])], ValueError,
              r"prefill_inputs\[2\]\['mm_token_type_ids'\] has 1 entries"),
             ([extras[0], dict(pixel_values=3), extras[2]], TypeError, "mixes tensors")]
    for value, error, match in cases:
        with pytest.raises(error, match=match):
            sampler.generate(ids, params, prefill_inputs=value)
