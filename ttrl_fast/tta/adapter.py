"""`TestTimeAdapter`: the self-monitoring adaptation cycle over a stream of unlabeled test prompts.

    for each step (episodes over the stream, `prompts_per_step` prompts at a time):
        1 monitoring plan   monitor.prepare(prompts)            e.g. the rubric of each prompt (cached)
        2 generation        G rollouts per prompt
        3 self-monitoring   rewards = monitor.score(rollouts)   the model's own understanding
        4 serve             best-of-G by the monitor, or the consensus answer (once per prompt)
        5 control           GRPO update (μ epochs)
        log the step; the divergence guard may roll back; stop on max_steps or a reward plateau

reset="never" lets capability accumulate over the stream (Meta-TTRL, TTRL); "per_prompt" restores the
initial weights before each prompt (instance-level test-time training, E steps per prompt);
"per_episode" before each pass. With run_dir every step is durable: metrics.jsonl, served.jsonl and a
checkpoint (trainable weights in safetensors, optimizer and counters) are written after each step, and
`run(..., resume=True)` continues after a crash with no prompt lost or served twice.
"""
from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ttrl_fast import distributed as dp
from ttrl_fast.tta.guard import DivergenceGuard
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts

if TYPE_CHECKING:  # the trainer imports the tta types
    from ttrl_fast.grpo.trainer import GRPOTrainer

RESETS = ("never", "per_prompt", "per_episode")
SERVES = ("best", "consensus", "first")


@dataclass(frozen=True)
class AdaptConfig:
    """How the stream is walked. See the module docstring."""

    prompts_per_step: int = 1
    episodes: int = 1
    reset: str = "never"
    serve: str = "best"
    max_steps: int | None = None
    plateau_patience: int | None = None
    plateau_delta: float = 0.01
    shuffle: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("prompts_per_step", "episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdaptConfig.{name} must be a positive int, got {value!r}")
        for name in ("max_steps", "plateau_patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"AdaptConfig.{name} must be a positive int or None, got {value!r}")
        if self.reset not in RESETS:
            raise ValueError(f"AdaptConfig.reset must be one of {RESETS}, got {self.reset!r}")
        if self.serve not in SERVES:
            raise ValueError(f"AdaptConfig.serve must be one of {SERVES}, got {self.serve!r}")
        if self.reset == "per_prompt" and self.prompts_per_step != 1:
            raise ValueError("AdaptConfig.reset='per_prompt' adapts on one prompt at a time: prompts_per_step must be 1")


@dataclass
class AdaptReport:
    steps: int = 0
    served: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    stopped: str = "stream_end"


def _remove_dir(path: Path) -> None:
    if path.exists():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def _plan(prompts: Sequence[Prompt], config: AdaptConfig) -> list[tuple[int, list[int], bool]]:
    """(episode, prompt indices, serve?) per step, in stream order (deterministic given the seed)."""
    steps = []
    n = len(prompts)
    if config.reset == "per_prompt":
        for i in range(n):
            for episode in range(config.episodes):
                steps.append((episode, [i], episode == 0))
        return steps
    rng = random.Random(config.seed)
    for episode in range(config.episodes):
        order = list(range(n))
        if config.shuffle:
            rng.shuffle(order)
        for first in range(0, n, config.prompts_per_step):
            steps.append((episode, order[first:first + config.prompts_per_step], episode == 0))
    return steps


class TestTimeAdapter:
    """Runs the cycle with a GRPOTrainer (its policy and config) and a monitor.

    Args:
        trainer: the GRPO trainer (policy, config, optimizer).
        monitor: reward source with score(rollouts) -> RewardBatch (and optionally prepare(prompts)).
        config: AdaptConfig.
        guard: a DivergenceGuard, or None.
        run_dir: directory for metrics.jsonl, served.jsonl and the checkpoint (None: nothing written).
        extract: answer extractor for serve="consensus" (output -> hashable answer or None).
        on_step: callback(record) after each step (progress bars, custom logging).
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, trainer: "GRPOTrainer", monitor, *, config: AdaptConfig | None = None,
                 guard: DivergenceGuard | None = None, run_dir: str | os.PathLike | None = None,
                 extract: Callable | None = None, on_step: Callable[[dict], None] | None = None):
        self.trainer, self.monitor = trainer, monitor
        self.config = config or AdaptConfig()
        if self.config.serve == "consensus" and extract is None:
            raise ValueError("serve='consensus' needs extract= (output -> answer)")
        self.guard, self.extract, self.on_step = guard, extract, on_step
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._initial = None

    # ------------------------------------------------------------------ the cycle
    def run(self, prompts: Sequence[Prompt], *, resume: bool = False) -> AdaptReport:
        prompts = list(prompts)
        ids = [p.id for p in prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("prompt ids must be unique (served outputs and resume are keyed by id)")
        plan = _plan(prompts, self.config)
        report = AdaptReport()
        self._initial = (self.trainer.policy.trainable_state(), self.trainer.optimizer.state_dict())
        start = self._resume(report, ids) if resume else self._fresh()
        best, stale = -math.inf, 0
        for record in report.history:
            best, stale = self._plateau(record.get("reward_mean", float("nan")), best, stale)
        for index in range(start, len(plan)):
            if self.config.max_steps is not None and index >= self.config.max_steps:
                report.stopped = "max_steps"
                break
            if self.config.plateau_patience is not None and stale >= self.config.plateau_patience:
                report.stopped = "plateau"
                break
            episode, members, serve = plan[index]
            self._maybe_reset(plan, index)
            step_prompts = [prompts[i] for i in members]
            batch = dp.shard(step_prompts)  # under torchrun: this rank's share (all of it on one process)
            if hasattr(self.monitor, "prepare"):
                self.monitor.prepare(batch)  # 1 monitoring plan (rubrics, cached per prompt)
            rollouts = self.trainer.rollout(batch)  # 2 generation
            rewards = self.monitor.score(rollouts)  # 3 self-monitoring
            served = dp.gather_objects(self._serve(rollouts, rewards, episode) if serve else [])  # 4 serve
            metrics = self.trainer.update(rollouts, rewards)  # 5 control (global metrics)
            event = self.guard.observe(self.trainer, metrics) if self.guard is not None else None
            record = {**metrics, "step": index, "episode": episode, "prompt_ids": [p.id for p in step_prompts]}
            if event:
                record["guard"] = event
            report.history.append(record)
            report.served.extend(served)
            report.steps = index + 1
            self._persist(index + 1, record, served)
            best, stale = self._plateau(metrics.get("reward_mean", float("nan")), best, stale)
            if self.on_step is not None:
                self.on_step(record)
        return report

    def _plateau(self, reward: float, best: float, stale: int) -> tuple[float, int]:
        if math.isfinite(reward) and reward > best + self.config.plateau_delta:
            return reward, 0
        return best, stale + 1

    def _maybe_reset(self, plan, index: int) -> None:
        reset = self.config.reset
        if index == 0 or reset == "never":
            return
        previous, current = plan[index - 1], plan[index]
        if (reset == "per_prompt" and previous[1] != current[1]) or (reset == "per_episode"
                                                                      and previous[0] != current[0]):
            weights, optimizer = self._initial
            self.trainer.policy.load_trainable_state(weights)
            self.trainer.optimizer.load_state_dict(optimizer)
            self.trainer.lr_scale = 1.0

    # ------------------------------------------------------------------ serving
    def _serve(self, rollouts: Rollouts, rewards: RewardBatch, episode: int) -> list[dict]:
        group = rollouts.group_size
        values = rewards.rewards
        served = []
        for b, prompt in enumerate(rollouts.prompts):
            rows = list(range(b * group, (b + 1) * group))
            if self.config.serve == "first":
                pick = rows[0]
            elif self.config.serve == "best":
                scores = [(-math.inf if math.isnan(float(values[r])) else float(values[r])) for r in rows]
                pick = rows[max(range(group), key=lambda g: (scores[g], -g))]
            else:
                answers = [self.extract(rollouts.outputs[r]) for r in rows]
                counts = Counter(a for a in answers if a is not None)
                if counts:
                    top = max(counts.values())
                    winner = next(a for a in answers if a is not None and counts[a] == top)
                    pick = rows[answers.index(winner)]
                else:
                    pick = rows[0]
            output = rollouts.outputs[pick]
            served.append({"id": prompt.id, "output": output if isinstance(output, (str, int, float, list)) else
                           repr(output), "reward": float(values[pick]), "sample": pick - rows[0],
                           "episode": episode})
        return served

    # ------------------------------------------------------------------ durability
    def _writer(self) -> bool:
        """Whether this process writes the run dir (rank 0; every rank holds the same state)."""
        return self.run_dir is not None and dp.rank_and_world()[0] == 0

    def _fresh(self) -> int:
        if self._writer():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "served.jsonl", "state.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        dp.barrier()
        return 0

    def _persist(self, steps_done: int, record: dict, served: list[dict]) -> None:
        if self.run_dir is None:
            return
        # every rank gathers the weights (FSDP2 shards need a collective); rank 0 alone writes
        weights = {k: v.detach().cpu().contiguous() for k, v in self.trainer.policy.trainable_state().items()}
        if not self._writer():
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.run_dir / "served.jsonl", "a") as f:
            for item in served:
                f.write(json.dumps(item) + "\n")
        self._checkpoint(steps_done, weights)

    def _checkpoint(self, steps_done: int, weights: dict) -> None:
        from safetensors.torch import save_file

        tmp = self.run_dir / "checkpoint.tmp"
        tmp.mkdir(exist_ok=True)
        save_file(weights, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": self.trainer.optimizer.state_dict(), "step_count": self.trainer.step_count,
                    "update_count": self.trainer.update_count, "lr_scale": self.trainer.lr_scale,
                    "guard": None if self.guard is None else self.guard.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "trainer.pt")
        final, old = self.run_dir / "checkpoint", self.run_dir / "checkpoint.old"
        if final.exists():
            _remove_dir(old)  # left by a crash after the swap below: final is the newer one
            final.rename(old)
            tmp.rename(final)
            _remove_dir(old)
        else:
            tmp.rename(final)
        state = {"steps_done": steps_done}
        with open(self.run_dir / "state.json.tmp", "w") as f:
            json.dump(state, f)
        os.replace(self.run_dir / "state.json.tmp", self.run_dir / "state.json")

    def _resume(self, report: AdaptReport, ids: list[str]) -> int:
        if self.run_dir is None:
            raise ValueError("resume=True needs run_dir")
        state_path = self.run_dir / "state.json"
        if not state_path.exists():
            dp.barrier()  # no rank may start wiping files while another is still checking
            return self._fresh()
        # Read and check every file first: a corrupt run dir raises a ValueError naming the file before
        # any weight, optimizer state or counter is touched.
        state = _read_json(state_path, self.run_dir)
        steps_done = state.get("steps_done") if isinstance(state, dict) else None
        if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
            raise ValueError(f"{state_path} (run_dir {self.run_dir}) is corrupt: it needs \"steps_done\", a count "
                             f">= 0, got {state!r}")
        checkpoint = self.run_dir / "checkpoint"
        if not checkpoint.exists() and (self.run_dir / "checkpoint.old").exists():
            (self.run_dir / "checkpoint.old").rename(checkpoint)  # crashed between the two renames
        weights = _read_weights(checkpoint / "adapter.safetensors", self.run_dir)
        saved = _read_trainer_state(checkpoint / "trainer.pt", self.run_dir)
        # keep only what the checkpoint covers: lines written after it are redone, never duplicated
        history = _read_jsonl(self.run_dir / "metrics.jsonl", self.run_dir, ("step", "episode", "prompt_ids"))
        history = [r for r in history if r["step"] < steps_done]
        done_steps = {r["step"] for r in history}
        served = []
        served_path = self.run_dir / "served.jsonl"
        if served_path.exists():
            served = _read_jsonl(served_path, self.run_dir, ("id",))
        step_of = {pid: r["step"] for r in history for pid in r["prompt_ids"] if r["episode"] == 0}
        served = [s for s in served if s["id"] in step_of and step_of[s["id"]] in done_steps]
        unknown = {s["id"] for s in served} - set(ids)
        if unknown:
            raise ValueError(f"run_dir {self.run_dir} was made with other prompts (e.g. {sorted(unknown)[:3]})")
        # Then restore. load_trainable_state checks every tensor before copying any; the optimizer's
        # load_state_dict checks its groups before changing anything, and if it refuses, the weights
        # loaded just before are put back.
        try:
            self.trainer.policy.load_trainable_state(weights)
        except ValueError as exc:
            raise ValueError(f"{checkpoint / 'adapter.safetensors'} (run_dir {self.run_dir}) does not fit the "
                             f"model: {exc}") from exc
        try:
            self.trainer.optimizer.load_state_dict(saved["optimizer"])
        except Exception as exc:  # noqa: BLE001 - whatever torch raises on a state of another optimizer
            self.trainer.policy.load_trainable_state(self._initial[0])
            raise ValueError(f"{checkpoint / 'trainer.pt'} (run_dir {self.run_dir}): the optimizer state does not "
                             f"fit this optimizer ({type(exc).__name__}: {exc})") from exc
        self.trainer.step_count, self.trainer.update_count = saved["step_count"], saved["update_count"]
        self.trainer.lr_scale = saved["lr_scale"]
        if self.guard is not None and saved.get("guard") is not None:
            self.guard.load_state_dict(saved["guard"])
        torch.set_rng_state(saved["torch_rng"])
        dp.barrier()  # every rank has read the files before rank 0 trims them
        if self._writer():
            (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
            served_path.write_text("".join(json.dumps(s) + "\n" for s in served))
        report.history, report.served, report.steps = history, served, steps_done
        return steps_done


# ---------------------------------------------------------------------------------------------- run dir files
# Readers for _resume: a missing file keeps its FileNotFoundError; a corrupt one gives a ValueError that
# names the file and says what is wrong (never a raw SafetensorError / UnpicklingError / KeyError).

def _corrupt(path: Path, run_dir: Path, what: str) -> ValueError:
    return ValueError(f"{path} (run_dir {run_dir}) is corrupt: {what}")


def _read_json(path: Path, run_dir: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, run_dir, f"not JSON ({exc})") from exc


def _read_jsonl(path: Path, run_dir: Path, keys: tuple[str, ...]) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _corrupt(path, run_dir, f"line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or any(k not in record for k in keys):
            raise _corrupt(path, run_dir, f"line {number} is not an object with {list(keys)}")
        records.append(record)
    return records


def _read_weights(path: Path, run_dir: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:  # truncated, empty, garbage
        raise _corrupt(path, run_dir, f"not a safetensors file ({exc})") from exc


_TRAINER_KEYS = ("optimizer", "step_count", "update_count", "lr_scale", "torch_rng")


def _read_trainer_state(path: Path, run_dir: Path) -> dict:
    try:
        saved = torch.load(path, weights_only=False)
    except OSError:  # missing, unreadable: as it is
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling garbage raises anything (UnpicklingError, EOFError, ...)
        raise _corrupt(path, run_dir, f"not a trainer checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in _TRAINER_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise _corrupt(path, run_dir, f"it lacks {missing}")
    if not isinstance(saved["torch_rng"], torch.Tensor) or saved["torch_rng"].dtype != torch.uint8:
        raise _corrupt(path, run_dir, "torch_rng is not a torch RNG state")
    return saved
