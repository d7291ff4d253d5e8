"""VLMAnswerPolicy on tiny random InternVL and Qwen2.5-VL: log-probs equal the sampler's, one vision forward per
prompt, LoRA on the language model only, and one TTRV / TTRL adaptation cycle with Consensus rewards."""
import math

import numpy
import pytest
import torch

from ttrl_fast import SamplingParams
from ttrl_fast import monitors as M
from ttrl_fast.grpo import GRPOConfig, GRPOTrainer, LoraSettings
from ttrl_fast.policy import VLMAnswerPolicy, processor_inputs
from ttrl_fast.tta import AdaptConfig, Prompt, TestTimeAdapter

from .vlm_models import IMG, MODELS, TOKENIZER, count_images, prompts_for, qwen_inputs, tiny_qwen25vl

KINDS = ["internvl", "qwen2_5_vl"]


def policy_for(kind, lora=LoraSettings(r=4), **kwargs):
    build, inputs = MODELS[kind]
    return VLMAnswerPolicy(build(), TOKENIZER, build_inputs=inputs, lora=lora, max_rows=12, max_seq_len=64, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_logprobs_equal_the_samplers_and_train_the_language_lora_only(kind):
    policy = policy_for(kind, decode_attention="shared_prefix")
    names = [n for n, _ in policy.model.named_parameters() if _.requires_grad]
    assert names and all("language_model" in n and "lora_" in n for n in names)
    rollouts = policy.generate(prompts_for(kind), SamplingParams(n=3, max_tokens=8, temperature=0.7, seed=4))
    assert len(rollouts) == 9 and all(isinstance(o, str) for o in rollouts.outputs)
    logp = policy.token_logprobs(rollouts)
    old = rollouts.batch.logprobs
    assert float((logp.detach() - old).abs().max()) < 1e-5
    assert float((policy.token_logprobs(rollouts, reference=True) - old).abs().max()) < 1e-5  # adapter starts at 0
    subset = policy.token_logprobs(rollouts, [7, 1]).detach()  # other prompts, other padding: same values
    torch.testing.assert_close(subset, logp.detach()[[7, 1]], rtol=0, atol=1e-5)
    logp.sum().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())


def test_full_finetune_keeps_a_frozen_reference():
    policy = policy_for("qwen2_5_vl", lora=None, logprob_rows=4)
    rollouts = policy.generate(prompts_for("qwen2_5_vl"), SamplingParams(n=2, max_tokens=6, seed=0))
    logp = policy.token_logprobs(rollouts)
    assert float((logp.detach() - rollouts.batch.logprobs).abs().max()) < 1e-5
    logp.sum().backward()
    assert policy.model.model.visual.patch_embed.proj.weight.grad is not None  # the image path is differentiable
    torch.testing.assert_close(policy.token_logprobs(rollouts, reference=True), logp.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_logprob_forward_encodes_each_image_once(kind):
    policy = policy_for(kind)
    rollouts = policy.generate(prompts_for(kind), SamplingParams(n=4, max_tokens=5, seed=1))
    seen = count_images(policy.model)
    policy.token_logprobs(rollouts)  # 12 rows of 3 prompts
    policy.token_logprobs(rollouts, reference=True)
    assert seen["calls"] == 2 and seen["images"] == 6  # one forward per call with the 3 images, not 12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["frequency", "majority"])
def test_one_adaptation_cycle(kind, mode):
    config = GRPOConfig(group_size=4, max_new_tokens=6, learning_rate=1e-2, beta=0.04, lora=LoraSettings(r=4))
    build, inputs = MODELS[kind]
    policy = VLMAnswerPolicy(build(), TOKENIZER, build_inputs=inputs, lora=config.lora, max_rows=8, max_seq_len=48)
    alpha = 0.75 if mode == "frequency" else 0.0  # TTRV: frequency - 0.75 * normalised entropy; TTRL: majority
    # a 3-way multiple-choice answer read off the first character (few answers: groups carry a signal)
    monitor = M.Consensus(lambda out: "ABC"[ord(out[0]) % 3] if out else None, mode=mode, entropy_alpha=alpha)
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    before = policy.trainable_state()
    report = TestTimeAdapter(trainer, monitor, config=AdaptConfig(prompts_per_step=2, episodes=2)).run(
        prompts_for(kind)[:2])
    assert report.steps == 2 and len(report.served) == 2
    for record in report.history:
        assert math.isfinite(record["policy_loss"]), record
        assert record["sampler_logprob_gap"] < 1e-5
    after = policy.trainable_state()
    zero_signal = all(r["frac_zero_std_groups"] == 1.0 for r in report.history)
    assert zero_signal or any(not torch.equal(before[k], after[k]) for k in before)
    assert not zero_signal  # random answers disagree: there is a signal to learn from


def test_critic_points_to_consensus():
    with pytest.raises(NotImplementedError, match="Consensus"):
        policy_for("internvl").critic("live")


class FakeProcessor:
    """The HF processor surface processor_inputs uses (chat template + __call__), Qwen2.5-VL style."""

    tokenizer = TOKENIZER

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert messages[0]["content"][0] == {"type": "image"} and add_generation_prompt and not tokenize
        return messages[0]["content"][1]["text"]

    def __call__(self, text, images, return_tensors):
        pixels = torch.from_numpy(numpy.array(images[0])).float()  # [H, W, 3] uint8 -> float
        ids, extras = qwen_inputs(Prompt("x", text[0], meta={"image": pixels / 255}))
        ids = torch.tensor([ids])
        return dict(extras, input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == IMG).int())


def test_processor_inputs_feed_the_sampler_and_the_logprob_forward():
    policy = VLMAnswerPolicy(tiny_qwen25vl(), processor=FakeProcessor(), lora=LoraSettings(r=2), max_rows=6,
                             max_seq_len=64)
    ids, extras = processor_inputs(FakeProcessor())(prompts_for("qwen2_5_vl")[1])
    assert sorted(extras) == ["image_grid_thw", "mm_token_type_ids", "pixel_values"]
    assert extras["mm_token_type_ids"].shape == (len(ids),)  # per token, unbatched
    rollouts = policy.generate(prompts_for("qwen2_5_vl"), SamplingParams(n=2, max_tokens=6, seed=3))
    assert float((policy.token_logprobs(rollouts).detach() - rollouts.batch.logprobs).abs().max()) < 1e-5


def test_bad_build_inputs_and_missing_builder():
    with pytest.raises(ValueError, match="build_inputs"):
        VLMAnswerPolicy(tiny_qwen25vl(), TOKENIZER, lora=None)
    policy = VLMAnswerPolicy(tiny_qwen25vl(), TOKENIZER, build_inputs=lambda p: [1, 2, 3], lora=None, frozen_copy=False)
    with pytest.raises(TypeError, match="build_inputs"):
        policy.generate(prompts_for("qwen2_5_vl"), SamplingParams(n=2, max_tokens=2))
