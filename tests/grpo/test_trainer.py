"""GRPOTrainer + HFCausalLMPolicy: the loop's log-probs are the sampler's, the LoRA reference is the base
model, a full cycle changes the weights with finite loss and logged KL / clip metrics."""
import math

import pytest
import torch

from ttrl_fast.grpo import GRPOConfig, GRPOTrainer, LoraSettings
from ttrl_fast.grpo.trainer import lr_factor
from ttrl_fast.policy import HFCausalLMPolicy

from .conftest import PROMPTS, TOKENIZER, CountLetter, clone, tiny_lm


def make(lm, lora=LoraSettings(), **kw):
    kw = {"group_size": 4, "max_new_tokens": 10, "learning_rate": 5e-3, **kw}
    config = GRPOConfig(lora=lora, **kw)
    policy = HFCausalLMPolicy(lm, TOKENIZER, lora=lora, max_rows=16, max_seq_len=48)
    return GRPOTrainer(policy, config, monitor=CountLetter()), policy


@pytest.mark.parametrize("lora", [LoraSettings(), None], ids=["lora", "full"])
def test_logprobs_equal_the_samplers_at_the_first_update(lm, lora):
    trainer, policy = make(lm, lora, temperature=0.7)
    rollouts = trainer.rollout(PROMPTS)
    logp = policy.token_logprobs(rollouts)
    mask = rollouts.batch.completion_mask
    torch.testing.assert_close(logp[mask], rollouts.batch.logprobs[mask], rtol=0, atol=1e-5)
    assert (logp[~mask] == 0).all()
    metrics = trainer.update(rollouts, trainer.score(rollouts))
    assert metrics["sampler_logprob_gap"] < 1e-5


def test_lora_reference_is_the_base_model():
    base = tiny_lm()
    untouched = clone(base)
    trainer, policy = make(base, beta=0.1)
    for _ in range(3):
        trainer.step(PROMPTS)
    rollouts = trainer.rollout(PROMPTS)
    ref = policy.token_logprobs(rollouts, reference=True)
    expected = HFCausalLMPolicy(untouched, TOKENIZER, lora=None, frozen_copy=False).token_logprobs(rollouts)
    torch.testing.assert_close(ref, expected.detach(), rtol=0, atol=1e-5)
    live = policy.token_logprobs(rollouts).detach()
    assert (live - ref).abs().max() > 1e-4, "the adapter should have moved the policy"
    assert not ref.requires_grad


@pytest.mark.parametrize("lora", [LoraSettings(), None], ids=["lora", "full"])
def test_full_cycle_changes_weights_and_logs(lm, lora):
    trainer, policy = make(lm, lora, ppo_epochs=2, minibatch_prompts=2, beta=0.04)
    before = policy.trainable_state()
    for _ in range(2):
        result = trainer.step(PROMPTS)
        m = result.metrics
        assert math.isfinite(m["policy_loss"]) and math.isfinite(m["kl"]) and m["kl"] >= 0
        for key in ("clip_ratio/region_mean", "grad_norm", "reward_mean", "frac_zero_std_groups", "lr"):
            assert key in m and math.isfinite(m[key]), key
    after = policy.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.update_count == 2 * 2 * 2  # steps x epochs x minibatches
    policy.load_trainable_state(before)
    assert all(torch.equal(before[k], v) for k, v in policy.trainable_state().items())


def test_learning_improves_a_learnable_reward():
    trainer, _ = make(tiny_lm(), None, beta=0.0, learning_rate=1e-2, group_size=8)
    first = sum(trainer.step(PROMPTS).metrics["reward_mean"] for _ in range(3)) / 3
    for _ in range(10):
        trainer.step(PROMPTS)
    last = sum(trainer.step(PROMPTS).metrics["reward_mean"] for _ in range(3)) / 3
    assert last > first + 0.3, (first, last)


def test_beta_zero_skips_the_reference_forward():
    trainer, policy = make(tiny_lm(), beta=0.0)
    calls = []
    original = policy.token_logprobs
    policy.token_logprobs = lambda *a, **k: calls.append(k.get("reference", False)) or original(*a, **k)
    trainer.step(PROMPTS)
    assert True not in calls


def test_lr_schedules():
    c = GRPOConfig(lr_schedule="cosine", warmup_ratio=0.1, max_steps=100, lora=None)
    assert lr_factor(c, 0) == pytest.approx(0.1)
    assert lr_factor(c, 9) == pytest.approx(1.0)
    assert lr_factor(c, 55) == pytest.approx(0.5, abs=1e-2)
    assert lr_factor(c.replace(lr_schedule="linear"), 100) == pytest.approx(0.0)
    assert lr_factor(c.replace(lr_schedule="constant"), 80) == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(group_size=0), "group_size"), (dict(beta=-1.0), "beta"), (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(loss_type="ppo"), "loss_type"), (dict(advantage_mode="zscore"), "advantage_mode"),
    (dict(lr_schedule="step"), "lr_schedule"), (dict(top_p=0.0), "top_p"), (dict(ppo_epochs=0), "ppo_epochs"),
    (dict(warmup_ratio=1.0), "warmup_ratio"), (dict(lora="yes"), "lora"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


def test_bad_lora_settings():
    with pytest.raises(ValueError, match="LoraSettings.r"):
        LoraSettings(r=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo", "luspo", "cispo"])
def test_backward_in_chunks_is_the_same_update(loss_type):
    """backward_rows accumulates per-chunk gradients scaled to the minibatch's normalisation (chunks of 5
    rows: not aligned with the groups of 4)."""
    results = []
    for chunk in (None, 5):
        torch.manual_seed(0)
        config = GRPOConfig(group_size=4, max_new_tokens=6, learning_rate=1e-2, beta=0.04, lora=None, seed=2,
                            loss_type=loss_type, backward_rows=chunk, epsilon_high=3.0 if loss_type == "cispo"
                            else None)
        policy = HFCausalLMPolicy(tiny_lm(), TOKENIZER, lora=None, max_rows=16, max_seq_len=64)
        trainer = GRPOTrainer(policy, config, monitor=CountLetter("e"))
        rollouts = trainer.rollout(PROMPTS)
        rewards = torch.arange(len(rollouts), dtype=torch.float32) % 3  # a spread in every group
        metrics = trainer.update(rollouts, rewards)
        results.append((metrics, policy.trainable_state()))
    (whole, state_a), (chunked, state_b) = results
    assert whole["grad_norm"] == pytest.approx(chunked["grad_norm"], rel=1e-5)
    assert whole["policy_loss"] == pytest.approx(chunked["policy_loss"], rel=1e-5, abs=1e-6)  # ~0 at ratio 1
    assert whole["kl"] == pytest.approx(chunked["kl"], rel=1e-5, abs=1e-9)
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=0, atol=2e-5)
