"""ttrl_fast.compat.trl.GRPOTrainer against stock trl.GRPOTrainer 1.16, side by side from the same tiny
model, data and seed: the same loss at every step (1e-5) and the same parameters after the steps, for
several loss types with KL; plus the RolloutSampler as TRL's rollout_func. SGD, not Adam: Adam's
per-element normalisation turns float32 rounding differences in near-zero gradients into visible
parameter differences, SGD keeps the comparison as tight as the gradients themselves."""
import math

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from ttrl_fast import RolloutSampler, SamplingParams  # noqa: E402
from ttrl_fast.compat import trl as compat  # noqa: E402

WORDS = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]


def tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def reward(completions, **kwargs):  # prefers completions with many low word ids
    return [-sum(int(w[1:]) for w in c.split() if w[0] == "w") / 60 for c in completions]


def run(trainer_cls, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
                    max_steps=3, learning_rate=0.5, optim="sgd", logging_steps=1, report_to="none", use_cpu=True, seed=7,
                    beta=0.04, save_strategy="no", temperature=0.9, bf16=False)
    settings.update(overrides)
    data = datasets.Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]})
    path = tmp_path / "model"  # a path: TRL loads its reference model from it when beta != 0
    tiny_model().save_pretrained(path)
    trainer = trainer_cls(model=str(path), reward_funcs=reward, args=trl.GRPOConfig(**settings), train_dataset=data,
                          processing_class=tokenizer())
    losses = []
    original = trainer._compute_loss

    def recording(model, inputs):
        loss = original(model, inputs)
        losses.append(float(loss))
        return loss

    trainer._compute_loss = recording
    trainer.train()
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, trainer


@pytest.mark.parametrize("loss_type,extra", [("dapo", {}), ("grpo", {}), ("bnpo", {"gradient_accumulation_steps": 2}),
                                             ("dr_grpo", {}), ("cispo", {"epsilon_high": 5.0}),
                                             ("sapo", {"beta": 0.0}),
                                             ("grpo", {"importance_sampling_level": "sequence", "num_iterations": 2})])
def test_same_losses_and_parameters_as_stock_trl(tmp_path, loss_type, extra):
    stock_losses, stock_params, stock = run(trl.GRPOTrainer, tmp_path / "a", loss_type=loss_type, **extra)
    ours_losses, ours_params, ours = run(compat.GRPOTrainer, tmp_path / "b", loss_type=loss_type, **extra)
    assert len(ours_losses) == len(stock_losses) >= 3
    for a, b in zip(stock_losses, ours_losses):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (stock_losses, ours_losses)
    assert any(abs(x) > 1e-6 for x in ours_losses)  # non-trivial losses
    for name, value in stock_params.items():
        torch.testing.assert_close(ours_params[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours_params["model.embed_tokens.weight"], tiny_model().state_dict()["model.embed_tokens.weight"])
    for key in ("entropy", "clip_ratio/region_mean", "kl"):
        if key in stock._metrics["train"]:
            got, want = ours._metrics["train"][key], stock._metrics["train"][key]
            assert len(got) == len(want) and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
                                                 for x, y in zip(got, want)), key


def test_features_it_does_not_fuse_fall_back_to_trl(tmp_path):
    _, _, trainer = run(compat.GRPOTrainer, tmp_path, max_steps=1, top_entropy_quantile=0.5)
    assert trainer._fused_loss_reason({}) == "top_entropy_quantile < 1"


def test_rollout_sampler_as_trl_rollout_func(tmp_path):
    model = tiny_model()
    sampler = RolloutSampler(model, max_rows=16, max_seq_len=16, eos_token_ids=[2], pad_token_id=0)
    calls = []

    def spy(prompts, trainer):
        out = compat.rollout_func(sampler, SamplingParams(seed=3, max_tokens=6))(prompts, trainer)
        expected = []
        for prompt, completion in zip(out["prompt_ids"], out["completion_ids"]):
            with torch.no_grad():  # the sampler's log-probs are the current model's (T = 1)
                logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].double()
            expected.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1))
        calls.append((list(prompts), out, expected))
        return out

    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=6, max_steps=2, learning_rate=1e-2, report_to="none", use_cpu=True,
                    save_strategy="no", bf16=False)
    data = datasets.Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5"]})
    trainer = compat.GRPOTrainer(model=model, reward_funcs=reward, args=trl.GRPOConfig(**settings),
                                 train_dataset=data, processing_class=tokenizer(), rollout_func=spy)
    trainer.train()
    assert len(calls) == 2
    for prompts, out, expected in calls:
        assert len(out["completion_ids"]) == len(prompts) == 4  # one prompt x 4 generations per process batch
        assert out["prompt_ids"][0] == tokenizer()(prompts[0], add_special_tokens=False)["input_ids"]
        for logps, want in zip(out["logprobs"], expected):
            torch.testing.assert_close(torch.tensor(logps, dtype=torch.float64), want, rtol=0, atol=1e-5)
