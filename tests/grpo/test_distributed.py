"""The GRPO loop and TestTimeAdapter on 2 processes (torch.distributed, gloo on CPU): both ranks end with
bitwise-identical parameters, equal to one process adapting on the whole batch (the global token
normalisation of dapo and the per-rank mean of grpo make the averaged gradient the global one), the
metrics are global, and rank 0 alone writes the run dir."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ttrl_fast.grpo import GRPOConfig, GRPOTrainer
from ttrl_fast.policy import HFCausalLMPolicy
from ttrl_fast.tta import AdaptConfig, Prompt, TestTimeAdapter

from ttrl_fast.tta.types import RewardBatch

from .conftest import TOKENIZER, tiny_lm

STREAM = [Prompt(f"p{i}", text) for i, text in enumerate(["abc", "hello", "xy", "banana", "a", "zz", "cat", "q"])]


class CodeSum:
    """A dense deterministic reward (character codes mod 7): every group has a spread to learn from."""

    def score(self, rollouts):
        return RewardBatch(torch.tensor([float(sum(map(ord, str(o))) % 7) for o in rollouts.outputs]))


def adapt(loss_type: str, run_dir=None, lora=None):
    torch.manual_seed(0)
    config = GRPOConfig(group_size=4, max_new_tokens=6, learning_rate=5e-2, beta=0.04, lora=lora, loss_type=loss_type,
                        seed=3)
    policy = HFCausalLMPolicy(tiny_lm(), TOKENIZER, lora=lora, max_rows=16, max_seq_len=64)
    trainer = GRPOTrainer(policy, config, monitor=CodeSum())
    adapter = TestTimeAdapter(trainer, trainer.monitor, run_dir=run_dir,
                              config=AdaptConfig(prompts_per_step=4, episodes=1, serve="best"))
    report = adapter.run(STREAM)
    return policy.trainable_state(), report


def _worker(rank: int, world: int, init: str, out: str, loss_type: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        state, report = adapt(loss_type, run_dir=os.path.join(out, "run"))
        torch.save({"state": state, "history": report.history, "served": report.served},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_two_ranks_match_each_other_and_one_process(tmp_path, loss_type):
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path), loss_type), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single_state, single = adapt(loss_type)
    initial = tiny_lm().state_dict()
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name  # the same update on both ranks
        # AdamW's per-element normalisation turns float32 rounding in near-zero gradients into ~1e-4 of
        # a 0.1 move; the gradients themselves agree to 1e-5 (grad_norm below)
        torch.testing.assert_close(value, single_state[name], rtol=0, atol=2e-4, msg=name)
    assert any(not torch.equal(v, initial[k]) for k, v in ranks[0]["state"].items())
    for mine, other, ref in zip(ranks[0]["history"], ranks[1]["history"], single.history):
        assert mine["prompt_ids"] == other["prompt_ids"] == ref["prompt_ids"]  # the global batch
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)  # the global gradient
        for key in ("reward_mean", "reward_std", "policy_loss", "kl", "completion_length"):
            assert mine[key] == other[key]
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    assert sorted(s["id"] for s in ranks[0]["served"]) == sorted(s["id"] for s in single.served)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(single.history) == 2  # written once (rank 0), one line per step
    assert len((tmp_path / "run" / "served.jsonl").read_text().splitlines()) == len(STREAM)
    assert json.loads(lines[-1])["step"] == 1


def _uneven(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from ttrl_fast.distributed import shard

        with pytest.raises(ValueError, match="cannot be split evenly over 2 ranks"):
            shard([1, 2, 3])
    finally:
        dist.destroy_process_group()


def test_uneven_batches_are_refused(tmp_path):
    mp.spawn(_uneven, args=(2, f"file://{tmp_path / 'store'}"), nprocs=2, join=True)


def _fsdp_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from ttrl_fast.distributed import shard_fsdp2

        torch.manual_seed(0)
        config = GRPOConfig(group_size=4, max_new_tokens=6, learning_rate=5e-2, beta=0.04, lora=None,
                            loss_type="dapo", seed=3)
        policy = HFCausalLMPolicy(tiny_lm(), TOKENIZER, lora=None, max_rows=16, max_seq_len=64)
        shard_fsdp2(policy)
        assert type(policy.model.model.layers[0].self_attn.q_proj.weight).__name__ == "DTensor"
        trainer = GRPOTrainer(policy, config, monitor=CodeSum())
        report = TestTimeAdapter(trainer, trainer.monitor,
                                 config=AdaptConfig(prompts_per_step=4, episodes=1)).run(STREAM)
        torch.save({"state": policy.trainable_state(), "history": report.history}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_ranks_match_one_process(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single_state, single = adapt("dapo")
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
        torch.testing.assert_close(value, single_state[name], rtol=0, atol=2e-4, msg=name)
    for mine, ref in zip(ranks[0]["history"], single.history):
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        assert mine["policy_loss"] == pytest.approx(ref["policy_loss"], rel=1e-4, abs=1e-6)


def test_fsdp2_refuses_tied_embeddings():
    from ttrl_fast.distributed import shard_fsdp2

    model = tiny_lm()
    model.lm_head.weight = model.model.embed_tokens.weight
    policy = HFCausalLMPolicy(model, TOKENIZER, lora=None, frozen_copy=False, max_rows=4, max_seq_len=16)
    with pytest.raises(ValueError, match="ties its input and output embeddings"):
        shard_fsdp2(policy)
