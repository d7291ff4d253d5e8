"""JanusImagePolicy on a tiny random Janus built offline: teacher-forced log-probs equal the CFG sampler's
in both log-prob modes, decoded images reach the critic (not tokens), the critic's yes/no read-out, LoRA
placement, one full adaptation cycle, and argument errors."""
import math

import pytest
import torch
from torch import nn
from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

from ttrl_fast import monitors as M
from ttrl_fast.grpo import GRPOConfig, GRPOTrainer, LoraSettings
from ttrl_fast.policy.janus import JanusImagePolicy, JanusUnderstander
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.tta import AdaptConfig, Prompt, TestTimeAdapter

PAD, BOS, EOS, BOI, EOI, IMG, YES, NO = range(8)
VOCAB, CODEBOOK, TOKENS, SIZE = 128, 64, 16, 32  # 16 tokens = a 4 x 4 VQ grid -> 32 px (3 upsamplings)


def encode(text):
    """A plain-text encoder without specials: one id per character, above the special ids."""
    return [8 + ord(c) % (VOCAB - 8) for c in text]


def decode(ids):
    return "".join(chr(97 + (i - 8) % 26) for i in ids)


def tiny_janus(seed=0, init_std=0.1):
    """A random JanusForConditionalGeneration (~0.4 M weights, < 0.1 s): Llama 2 x 32, SigLIP 1 layer on
    32 px / patch 8 (16 patches), VQ codebook 64 x 8 with a 4-level decoder. Linear / embedding weights are
    redrawn with init_std so the image-token distributions are far from uniform."""
    torch.manual_seed(seed)
    hidden = 32
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=SIZE,
                               patch_size=8, projection_dim=hidden, mlp_ratio=2.0, num_image_tokens=TOKENS)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=CODEBOOK, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=IMG))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0, init_std)
    return model.eval()


def make_policy(model=None, **kwargs):
    options = dict(encode=encode, decode=decode, lora=LoraSettings(r=4), max_rows=16, max_seq_len=64,
                   image_start_token_id=BOI, template="{prompt}", yes_token=YES, no_token=NO)
    options.update(kwargs)
    return JanusImagePolicy(model if model is not None else tiny_janus(), **options)


PROMPTS = [Prompt("p0", "a red cat"), Prompt("p1", "dog")]


@pytest.mark.parametrize("mode", ["cond", "cfg"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_the_samplers(mode, temperature):
    policy = make_policy(logprob_mode=mode, logprob_rows=3)
    rollouts = policy.generate(PROMPTS, SamplingParams(n=3, seed=1, temperature=temperature))
    batch = rollouts.batch
    assert batch.completion_ids.shape == (6, TOKENS) and bool(batch.completion_mask.all())
    assert batch.logprobs.std() > 0.1  # a distribution with some shape, not a uniform one
    live = policy.token_logprobs(rollouts)
    assert live.requires_grad
    torch.testing.assert_close(live.detach(), batch.logprobs, rtol=0, atol=1e-5)
    # the reference (adapter off) is the same model before any update
    torch.testing.assert_close(policy.token_logprobs(rollouts, reference=True), batch.logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(policy.token_logprobs(rollouts, [4, 1]).detach(), batch.logprobs[[4, 1]],
                               rtol=0, atol=1e-5)


def test_full_weights_policy_with_frozen_copy():
    policy = make_policy(lora=None, logprob_mode="cfg")
    assert len(policy.trainable_parameters()) == len(list(policy.model.parameters()))
    rollouts = policy.generate(PROMPTS, SamplingParams(n=2, seed=3))
    torch.testing.assert_close(policy.token_logprobs(rollouts, reference=True), rollouts.batch.logprobs,
                               rtol=0, atol=1e-5)


def test_prompt_format_and_lora_on_the_language_model_only():
    policy = make_policy(template="<U>{prompt}<A>")
    prompt = Prompt("x", "cat")
    assert policy.prompt_tokens(prompt) == [BOS] + encode("<U>cat<A>") + [BOI]
    lora = [name for name, _ in policy.model.named_modules() if name.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(".language_model." in name for name in lora)
    assert all("lora_" in name for name, _ in policy._trainable_named())


def test_decoded_images_have_the_configured_size():
    policy = make_policy()
    rollouts = policy.generate(PROMPTS[:1], SamplingParams(n=2, seed=0))
    assert len(rollouts.outputs) == 2
    for image, tokens in zip(rollouts.outputs, rollouts.batch.completion_ids):
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        with torch.no_grad():
            expected = (policy.janus.decode_image_tokens(tokens[None])[0].clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(image, expected)


def test_the_critic_reads_the_decoded_image(monkeypatch):
    policy = make_policy()
    janus = policy.janus

    def fake_decode(tokens):  # a recognisable image per row: a ramp scaled by the first token
        ramp = torch.linspace(-1, 1, SIZE)[None, :, None, None].expand(tokens.shape[0], SIZE, SIZE, 3)
        return ramp * (tokens[:, :1, None, None].float() + 1) / CODEBOOK

    monkeypatch.setattr(janus, "decode_image_tokens", fake_decode)
    rollouts = policy.generate(PROMPTS[:1], SamplingParams(n=2, seed=0))
    seen = []
    hook = janus.model.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["pixel_values"]).clone()),
        with_kwargs=True)
    try:
        critic = policy.critic("frozen_init")
        p = critic.yes_prob([(rollouts.outputs[0], "red?"), (rollouts.outputs[1], "cat?")])
    finally:
        hook.remove()
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())
    expected = torch.stack([(fake_decode(rollouts.batch.completion_ids[r:r + 1])[0].clamp(-1, 1) + 1) / 2
                            for r in range(2)])
    torch.testing.assert_close(seen[0], (expected * 2 - 1).permute(0, 3, 1, 2))  # mean = std = 0.5
    with pytest.raises(TypeError, match="decoded images"):
        critic.yes_prob([(rollouts.batch.completion_ids[0], "red?")])  # tokens are not an image


def test_critic_yes_prob_is_the_renormalised_answer_and_resizes():
    policy = make_policy()
    critic = policy.critic("live")
    image = torch.rand(16, 16, 3)
    small = (image * 255).round().to(torch.uint8)
    p = critic.yes_prob([(small, "is it red?")])
    pixels = critic.pixel_values(small)
    assert pixels.shape == (3, SIZE, SIZE) and float(pixels.min()) >= -1 and float(pixels.max()) <= 1
    ids = [BOS] + encode("<|User|>: ") + [IMG] * TOKENS + encode("\nis it red?\n\n<|Assistant|>:")
    with torch.no_grad():
        logits = policy.janus(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits[0, -1]
    expected = torch.softmax(logits[[YES, NO]], -1)[0]
    torch.testing.assert_close(p[0], expected, rtol=0, atol=1e-6)


def test_frozen_critic_keeps_the_initial_weights():
    policy = make_policy()
    image = torch.rand(SIZE, SIZE, 3)
    frozen, live = policy.critic("frozen_init"), policy.critic("live")
    before = frozen.yes_prob([(image, "cat?")])
    torch.testing.assert_close(live.yes_prob([(image, "cat?")]), before)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    assert not torch.allclose(live.yes_prob([(image, "cat?")]), before)
    torch.testing.assert_close(frozen.yes_prob([(image, "cat?")]), before)


def test_critic_text_generation_and_caption_likelihood():
    critic = make_policy().critic("frozen_init")
    texts = critic.generate_text(["describe a cat", "x"], max_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) and len(t) <= 5 for t in texts)
    logp = critic.sequence_logprob([torch.rand(SIZE, SIZE, 3)] * 2, ["a cat", "dog"])
    assert logp.shape == (2,) and bool((logp < 0).all())


RUBRIC = ["object | is there a cat? | yes", "attribute | is the cat red? | yes", "count | are there two cats? | no"]


def test_one_adaptation_cycle():
    config = GRPOConfig(group_size=4, max_new_tokens=8, learning_rate=1e-2, beta=0.04, lora=LoraSettings(r=4))
    policy = make_policy(lora=config.lora, logprob_mode="cfg")
    monitor = M.RubricVQA(policy.critic("frozen_init"), M.StaticRubric())
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    before = policy.trainable_state()
    stream = [Prompt("p0", "a red cat", meta={"rubric": RUBRIC}), Prompt("p1", "two dogs", meta={"rubric": RUBRIC})]
    report = TestTimeAdapter(trainer, monitor, config=AdaptConfig(prompts_per_step=2, episodes=2)).run(stream)
    assert report.steps == 2 and len(report.served) == 2
    for record in report.history:
        assert math.isfinite(record["policy_loss"]), record
        assert record["sampler_logprob_gap"] < 1e-5
        assert math.isfinite(record["reward_mean"]) and record["frac_zero_std_groups"] < 1
    after = policy.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the LoRA weights must move"


def test_bad_arguments():
    model = tiny_janus()
    with pytest.raises(ValueError, match="cfg_weight"):
        make_policy(model, cfg_weight=0.5)
    with pytest.raises(ValueError, match="logprob_mode"):
        make_policy(model, logprob_mode="guided")
    with pytest.raises(ValueError, match="num_image_tokens=9"):
        make_policy(model, num_image_tokens=9)
    with pytest.raises(ValueError, match="template"):
        make_policy(model, template="no slot")
    with pytest.raises(TypeError, match="JanusForConditionalGeneration"):
        JanusImagePolicy(nn.Linear(2, 2))
    policy = make_policy(model, encode=None, decode=None, lora=None, frozen_copy=False)
    with pytest.raises(ValueError, match="encode"):
        policy.prompt_tokens(Prompt("x", "cat"))
    with pytest.raises(ValueError, match="encode"):
        policy.critic("frozen_init")
    policy = make_policy(model, lora=None, frozen_copy=False)
    with pytest.raises(ValueError, match="no frozen initial weights"):
        policy.critic("frozen_init")
    with pytest.raises(ValueError, match="no reference policy"):
        policy.token_logprobs(policy.generate(PROMPTS[:1], SamplingParams(n=1, seed=0)), reference=True)
    with pytest.raises(ValueError, match="critic mode"):
        policy.critic("external")
    with pytest.raises(ValueError, match="pad_token_id must differ"):
        JanusUnderstander(model, encode, bos_token_id=BOS, pad_token_id=IMG, yes_token=YES, no_token=NO)
    with pytest.raises(ValueError, match="yes_token"):
        JanusUnderstander(model, encode, bos_token_id=BOS, pad_token_id=PAD, yes_token=VOCAB, no_token=NO)
    with pytest.raises(ValueError, match="same id"):
        JanusUnderstander(model, encode, bos_token_id=BOS, pad_token_id=PAD, yes_token=YES, no_token=YES)
    with pytest.raises(ValueError, match="use_base_weights"):
        JanusUnderstander(model, encode, bos_token_id=BOS, pad_token_id=PAD, yes_token=YES, no_token=NO,
                          use_base_weights=True)
    with pytest.raises(ValueError, match=r"\(image, question\) pair"):
        policy.critic("live").yes_prob([torch.rand(SIZE, SIZE, 3)])
