"""HFTextUnderstander on tiny random Llama / Qwen2 models with a CharTokenizer, against manual forwards."""
import math
import string

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ttrl_fast.monitors import CaptionLikelihood, HFTextUnderstander, RubricVQA, SelfRubric
from ttrl_fast.text import CharTokenizer
from ttrl_fast.tta.types import Prompt

from .conftest import make_rollouts

TOK = CharTokenizer(string.printable)
ITEMS = [("a red cat", "Is it red?"), ("b", "Is there a dog on the mat?"),
         ("a much longer output text, with punctuation!", "Q?"), ("", "Is it empty?"), ("x y z", "ok?")]


def tiny(kind="llama", seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    return model.eval()


def manual_yes_prob(model, critic, output, question):
    ids = torch.tensor([TOK.encode(critic.question_template.format(output=output, question=question), add_bos=True)])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double(), -1)
    return float(probs[critic.yes_id] / (probs[critic.yes_id] + probs[critic.no_id]))


def manual_seq_logprob(model, context, target):
    ctx, tgt = TOK.encode(context, add_bos=True), TOK.encode(target)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + tgt])).logits[0].double(), -1)
    return float(logp[len(ctx) - 1:-1].gather(-1, torch.tensor(tgt)[:, None]).mean())


def manual_greedy(model, prompt, max_tokens):
    ids = TOK.encode(prompt, add_bos=True)
    out = []
    with torch.no_grad():
        for _ in range(max_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == TOK.eos_token_id:
                break
            out.append(nxt)
    return TOK.decode(out)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_yes_prob_matches_unbatched_softmax_on_ragged_inputs(kind, batch_size):
    model = tiny(kind)
    model.train()  # the critic must score in eval mode and restore the flag
    critic = HFTextUnderstander(model, TOK, batch_size=batch_size)
    assert (critic.yes_id, critic.no_id) == (TOK.stoi["y"], TOK.stoi["n"])  # " yes" / " no" share " "
    p = critic.yes_prob(ITEMS)
    assert model.training and p.dtype == torch.float32 and p.shape == (len(ITEMS),)
    assert ((p > 0) & (p < 1)).all()
    model.eval()
    expected = torch.tensor([manual_yes_prob(model, critic, o, q) for o, q in ITEMS], dtype=torch.float32)
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-5)
    assert ((critic.last_yes_no_mass > 0) & (critic.last_yes_no_mass < 1)).all()


def test_sequence_logprob_matches_a_manual_forward():
    model = tiny()
    critic = HFTextUnderstander(model, TOK, batch_size=2)
    contexts, targets = ["a red cat\nPrompt:", "b", "some longer context here"], [" a cat", " x", " red cat on a mat"]
    got = critic.sequence_logprob(contexts, targets)
    expected = torch.tensor([manual_seq_logprob(model, c, t) for c, t in zip(contexts, targets)], dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="targets\\[0\\] encodes to no tokens"):
        critic.sequence_logprob(["a"], [""])


def test_generate_text_greedy_matches_a_manual_loop():
    model = tiny()
    critic = HFTextUnderstander(model, TOK, batch_size=4)
    prompts = ["Hello", "Describe a cat:", "x"]
    texts = critic.generate_text(prompts, max_tokens=12)
    assert all(isinstance(t, str) for t in texts)
    assert texts == [manual_greedy(model, p, 12) for p in prompts]
    sampled = critic.generate_text(prompts, max_tokens=5, temperature=1.0)
    assert len(sampled) == 3 and all(isinstance(t, str) and len(t) <= 5 for t in sampled)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # raised inside peft
def test_use_base_weights_scores_with_the_frozen_initial_weights():
    from peft import LoraConfig, get_peft_model

    model = tiny()
    base_p = HFTextUnderstander(model, TOK).yes_prob(ITEMS)
    base_lp = HFTextUnderstander(model, TOK).sequence_logprob(["a cat"], [" on a mat"])
    base_text = HFTextUnderstander(model, TOK).generate_text(["Hello"], max_tokens=8)
    with pytest.raises(ValueError, match="needs a PEFT model"):
        HFTextUnderstander(model, TOK, use_base_weights=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    peft_model.train()
    live = HFTextUnderstander(peft_model, TOK).yes_prob(ITEMS)
    frozen_critic = HFTextUnderstander(peft_model, TOK, use_base_weights=True)
    frozen = frozen_critic.yes_prob(ITEMS)
    assert (live - base_p).abs().max() > 1e-3  # the adapter changes the answers ...
    torch.testing.assert_close(frozen, base_p, rtol=0, atol=1e-5)  # ... the base weights do not see it
    torch.testing.assert_close(frozen_critic.sequence_logprob(["a cat"], [" on a mat"]), base_lp, rtol=0, atol=1e-5)
    assert frozen_critic.generate_text(["Hello"], max_tokens=8) == base_text
    assert peft_model.training
    torch.testing.assert_close(HFTextUnderstander(peft_model, TOK).yes_prob(ITEMS), live)  # adapter back on


def test_answer_tokens_and_length_validation():
    model = tiny()
    explicit = HFTextUnderstander(model, TOK, yes_token="Y", no_token=TOK.stoi["N"])
    assert (explicit.yes_id, explicit.no_id) == (TOK.stoi["Y"], TOK.stoi["N"])
    with pytest.raises(ValueError, match="must differ"):
        HFTextUnderstander(model, TOK, yes_token="y", no_token="yes")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        HFTextUnderstander(model, TOK, yes_token=10_000, no_token=3)
    with pytest.raises(ValueError, match="question_template"):
        HFTextUnderstander(model, TOK, question_template="{output}")
    short = HFTextUnderstander(model, TOK, max_length=10)
    with pytest.raises(ValueError, match="max_length"):
        short.yes_prob([("a long output", "Is it long?")])
    left = HFTextUnderstander(model, TOK, max_length=10, truncation="left").yes_prob([("a long output", "Is it?")])
    assert 0 < float(left[0]) < 1
    with pytest.raises(TypeError, match="reads text outputs"):
        explicit.yes_prob([(torch.zeros(2), "Is it?")])


def test_monitors_on_a_real_critic_end_to_end():
    critic = HFTextUnderstander(tiny(), TOK, batch_size=8)
    builder = SelfRubric(critic, max_tokens=24)  # a random model writes garbage: the template fallback is used
    monitor = RubricVQA(critic, builder)
    prompts = [Prompt("a", "a red cat"), Prompt("b", "two dogs")]
    monitor.prepare(prompts)
    result = monitor.score(make_rollouts(prompts, ["cat", "red cat", "dog", "dogs dogs"]))
    assert result.rewards.dtype == torch.float32 and ((result.rewards > 0) & (result.rewards < 1)).all()
    assert set(builder.texts) == {"a", "b"}
    caption = CaptionLikelihood(critic).score(make_rollouts(prompts, ["cat", "red cat", "dog", "dogs"]))
    assert ((caption.rewards > 0) & (caption.rewards <= 1)).all()
    assert float(caption.rewards[0]) == pytest.approx(math.exp(manual_seq_logprob(critic.model, "cat\nPrompt:",
                                                                                  " a red cat")), rel=1e-4)
