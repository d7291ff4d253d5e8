"""GridWorld pieces: the world's checker and token rows, the critic's P(yes), and that the toy model runs
through the package's real sampler / policy / trainer paths."""
import random

import pytest
import torch

from ttrl_fast.demo import grid_model
from ttrl_fast.demo import gridworld as W
from ttrl_fast.demo.grid_experiment import auroc
from ttrl_fast.demo.grid_policy import GridCritic, GridPolicy, grid_prompt, grid_rubric
from ttrl_fast.grpo import GRPOConfig, GRPOTrainer
from ttrl_fast.monitors import RubricVQA
from ttrl_fast.sampler.params import SamplingParams


def test_checker_and_target_images():
    rng = random.Random(0)
    for _ in range(200):
        spec = W.random_spec(rng, rare=rng.random() < 0.5)
        image = W.target_image(spec, rng)
        assert W.checker(spec, image)
        assert not W.checker(spec, tuple(0 for _ in image))
        flipped = W.Spec(spec.a, {"left_of": "right_of", "right_of": "left_of", "above": "below",
                                  "below": "above"}[spec.relation], spec.b)
        assert not W.checker(flipped, image)  # one object each: the opposite relation cannot hold
    spec = W.Spec(("red", "circle"), "left_of", ("blue", "square"))
    grid = [0] * 16
    grid[W.SIDE * 2 + 0], grid[W.SIDE * 0 + 3] = W.cell_value(spec.a), W.cell_value(spec.b)
    assert W.checker(spec, tuple(grid)) and W.Spec.parse(spec.text) == spec


def test_splits_are_disjoint_and_rare():
    splits = W.prompt_splits(0, 48)
    sets = {k: set(v) for k, v in splits.items()}
    assert all(len(v) == 48 for v in sets.values())
    assert not (sets["adapt"] & sets["heldout"]) and not (sets["adapt"] & sets["seen"])
    assert all(s.a in W.RARE or s.b in W.RARE for s in splits["adapt"] + splits["heldout"])
    assert all(s.a not in W.RARE and s.b not in W.RARE for s in splits["seen"])


def test_rows_and_rubric():
    spec = W.Spec(("green", "triangle"), "above", ("red", "square"))
    row = W.generation_row(spec)
    assert W.TOKENIZER.decode(row) == "gen green triangle above red square img"
    items = grid_rubric().build(grid_prompt(spec, 0))
    assert [i.question for i in items] == ["exists green triangle", "exists red square",
                                           "rel green triangle above red square"]
    assert all(W.truth(W.target_image(spec, random.Random(1)), i.question) for i in items)


@pytest.fixture(scope="module")
def model():
    return grid_model.pretrain(0, steps=30)


def test_critic_yes_prob_matches_a_manual_softmax(model):
    critic = GridCritic(model)
    rng = random.Random(3)
    items = [(W.random_scene(rng), q) for q in ("exists red circle", "rel blue square left_of green circle")]
    got = critic.yes_prob(items)
    for (grid, question), p in zip(items, got):
        ids = torch.tensor([W.understanding_row(grid, question)])
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        expected = torch.softmax(logits[[W.YES, W.NO]], -1)[0]
        assert abs(float(p) - float(expected)) < 1e-5


def test_policy_draws_grids_through_the_sampler_and_trains(model):
    policy = GridPolicy(model, max_rows=16)
    prompts = [grid_prompt(s, i) for i, s in enumerate(W.prompt_splits(0, 2)["adapt"])]
    rollouts = policy.generate(prompts, SamplingParams(n=4, seed=0, max_tokens=3))  # max_tokens is forced to 16
    assert all(len(g) == W.CELLS for g in rollouts.outputs)
    assert set(rollouts.batch.completion_ids.flatten().tolist()) <= set(W.CELL_IDS)
    logp = policy.token_logprobs(rollouts)
    mask = rollouts.batch.completion_mask
    torch.testing.assert_close(logp[mask], rollouts.batch.logprobs[mask], rtol=0, atol=1e-5)
    monitor = RubricVQA(policy.critic("frozen_init"), grid_rubric())
    trainer = GRPOTrainer(policy, GRPOConfig(group_size=4, learning_rate=1e-3, lora=None, max_new_tokens=16),
                          monitor=monitor)
    metrics = trainer.step(prompts).metrics
    assert 0 < metrics["reward_mean"] < 1 and metrics["kl"] >= 0


def test_auroc():
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
