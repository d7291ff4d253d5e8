"""TestTimeAdapter: serving, resets, plateau stop, the divergence guard, and resume after a crash."""
import json

import pytest
import torch

from ttrl_fast.grpo import GRPOConfig, GRPOTrainer
from ttrl_fast.policy import HFCausalLMPolicy
from ttrl_fast.tta import AdaptConfig, DivergenceGuard, Prompt, RewardBatch, TestTimeAdapter

from .conftest import TOKENIZER, CountLetter, tiny_lm

STREAM = [Prompt(f"q{i}", text) for i, text in enumerate(["abc", "hello", "x", "zz top", "a b", "mno"])]


def trainer(monitor=None, **kw):
    kw = {"group_size": 4, "max_new_tokens": 8, "learning_rate": 1e-2, "lora": None, **kw}
    policy = HFCausalLMPolicy(tiny_lm(), TOKENIZER, max_rows=16, max_seq_len=40)
    return GRPOTrainer(policy, GRPOConfig(**kw), monitor=monitor or CountLetter())


def test_serves_every_prompt_once_best_of_group(tmp_path):
    t = trainer()
    adapter = TestTimeAdapter(t, t.monitor, config=AdaptConfig(prompts_per_step=2, episodes=2), run_dir=tmp_path)
    report = adapter.run(STREAM)
    assert report.steps == 6 and report.stopped == "stream_end"
    assert sorted(s["id"] for s in report.served) == sorted(p.id for p in STREAM)
    for s in report.served:  # best-of-G: the served sample has the group's highest reward
        assert s["reward"] == float(s["output"].count("a"))
    lines = (tmp_path / "served.jsonl").read_text().splitlines()
    assert len(lines) == len(STREAM)
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(6)) and all("kl" in m for m in metrics)
    assert (tmp_path / "checkpoint" / "adapter.safetensors").exists()


class Crash(Exception):
    pass


class CrashingMonitor(CountLetter):
    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def score(self, rollouts):
        self.calls += 1
        if self.calls == self.at:
            raise Crash()
        return super().score(rollouts)


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path):
    config = AdaptConfig(prompts_per_step=2, episodes=2)
    t = trainer(CrashingMonitor(at=3))
    with pytest.raises(Crash):
        TestTimeAdapter(t, t.monitor, config=config, run_dir=tmp_path).run(STREAM)
    assert len((tmp_path / "served.jsonl").read_text().splitlines()) == 4  # steps 0 and 1 served
    weights_at_crash = t.policy.trainable_state()
    t2 = trainer()  # a fresh process: new model, optimizer, monitor
    report = TestTimeAdapter(t2, t2.monitor, config=config, run_dir=tmp_path).run(STREAM, resume=True)
    served = [json.loads(l)["id"] for l in (tmp_path / "served.jsonl").read_text().splitlines()]
    assert sorted(served) == sorted(p.id for p in STREAM) and len(served) == len(set(served))
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6)) and report.steps == 6
    assert t2.step_count == 6
    # the resumed run restarted from the checkpointed weights, not from the fresh model's
    assert any(not torch.equal(weights_at_crash[k], v) for k, v in t2.policy.trainable_state().items())


def test_resume_is_exact_when_a_step_was_half_written(tmp_path):
    config = AdaptConfig(prompts_per_step=3)
    t = trainer()
    TestTimeAdapter(t, t.monitor, config=config, run_dir=tmp_path).run(STREAM)
    # simulate a crash after serving step 1 but before its checkpoint: state says 1 step done
    (tmp_path / "state.json").write_text(json.dumps({"steps_done": 1}))
    t2 = trainer()
    TestTimeAdapter(t2, t2.monitor, config=config, run_dir=tmp_path).run(STREAM, resume=True)
    served = [json.loads(l)["id"] for l in (tmp_path / "served.jsonl").read_text().splitlines()]
    assert sorted(served) == sorted(p.id for p in STREAM)


class Sabotage(CountLetter):
    """An injected bad reward: honest for 3 steps, then collapsing."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, rollouts):
        self.calls += 1
        good = super().score(rollouts).rewards + 2.0
        return RewardBatch(good if self.calls <= 3 else good - 10.0)


def test_divergence_guard_rolls_back_and_lowers_the_lr(tmp_path):
    t = trainer(Sabotage())
    guard = DivergenceGuard(reward_drop=1.0, patience=2, lr_factor=0.5)
    report = TestTimeAdapter(t, t.monitor, config=AdaptConfig(episodes=2), guard=guard, run_dir=tmp_path).run(STREAM)
    events = [r for r in report.history if r.get("guard") == "rollback"]
    assert events and guard.rollbacks == len(events)
    assert t.lr_scale == 0.5 ** len(events)
    assert any(json.loads(l).get("guard") == "rollback" for l in (tmp_path / "metrics.jsonl").read_text().splitlines())


def test_per_prompt_reset_restores_the_initial_weights():
    t = trainer()
    initial = t.policy.trainable_state()
    seen = []
    adapter = TestTimeAdapter(t, t.monitor, config=AdaptConfig(reset="per_prompt", episodes=2),
                              on_step=lambda r: seen.append(r["prompt_ids"][0]))
    original = t.rollout

    def check(batch):
        if len(seen) in (2, 4):  # first step on a new prompt: weights are back to the start
            assert all(torch.equal(initial[k], v) for k, v in t.policy.trainable_state().items())
        return original(batch)

    t.rollout = check
    report = adapter.run(STREAM[:3])
    assert seen == ["q0", "q0", "q1", "q1", "q2", "q2"] and len(report.served) == 3


def test_plateau_and_max_steps_stop():
    t = trainer(CountLetter("€"))  # not in the alphabet, never drawn: constant reward 0 -> plateau
    report = TestTimeAdapter(t, t.monitor, config=AdaptConfig(episodes=3, plateau_patience=2)).run(STREAM)
    assert report.stopped == "plateau" and report.steps == 3  # the first step sets the best, two stale ones follow
    t = trainer()
    report = TestTimeAdapter(t, t.monitor, config=AdaptConfig(max_steps=3)).run(STREAM)
    assert report.stopped == "max_steps" and report.steps == 3


def test_consensus_serving():
    t = trainer()
    adapter = TestTimeAdapter(t, t.monitor, config=AdaptConfig(serve="consensus"), extract=lambda o: len(o) % 2)
    report = adapter.run(STREAM[:2])
    assert len(report.served) == 2
    with pytest.raises(ValueError, match="extract"):
        TestTimeAdapter(t, t.monitor, config=AdaptConfig(serve="consensus"))


@pytest.mark.parametrize("kwargs,match", [(dict(reset="sometimes"), "reset"), (dict(serve="all"), "serve"),
                                          (dict(episodes=0), "episodes"),
                                          (dict(reset="per_prompt", prompts_per_step=2), "per_prompt")])
def test_bad_adapt_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptConfig(**kwargs)


def test_duplicate_prompt_ids_are_refused():
    t = trainer()
    with pytest.raises(ValueError, match="unique"):
        TestTimeAdapter(t, t.monitor).run([Prompt("a", "x"), Prompt("a", "y")])


def test_checkpoint_survives_a_stale_swap_directory(tmp_path):
    """A crash between swapping the new checkpoint in and deleting the old one leaves checkpoint.old
    behind; the next step's checkpoint must still be written."""
    config = AdaptConfig(prompts_per_step=3)
    t = trainer()
    TestTimeAdapter(t, t.monitor, config=config, run_dir=tmp_path).run(STREAM[:3])
    stale = tmp_path / "checkpoint.old"
    stale.mkdir()
    (stale / "adapter.safetensors").write_bytes(b"stale")
    (tmp_path / "state.json").write_text(json.dumps({"steps_done": 0}))
    t2 = trainer()
    TestTimeAdapter(t2, t2.monitor, config=config, run_dir=tmp_path).run(STREAM[:3], resume=True)
    assert not stale.exists() and (tmp_path / "checkpoint" / "adapter.safetensors").stat().st_size > 100
