"""The GridWorld experiment: Meta-TTRL (self-monitoring with a rubric answered by the model's own
understanding) against the controls, judged by the ground-truth checker the loop never sees.

Methods (each starts from the same pre-trained model of a seed):
    none            no adaptation
    best_of_g       test-time scaling: G samples, serve the one the frozen self-critic scores best, no update
    meta_ttrl       GRPO with RubricVQA by the frozen initial weights (Meta-TTRL Algorithm 1)
    meta_ttrl_live  the same with the live (shared, updated) weights as critic
    random          GRPO on random rewards (control)
    majority        TTRL majority vote over whole images (exact match; methods.md §3.6 explains why it fails)
    oracle          GRPO on the checker's binary reward (E-TTRL-style upper-bound control)
Splits: adapt (the stream: prompts with a rare binding), heldout (other rare-binding prompts: does the
capability transfer?), seen (common bindings: forgetting).
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


from ttrl_fast import monitors as M
from ttrl_fast.demo import grid_model
from ttrl_fast.demo import gridworld as W
from ttrl_fast.demo.grid_policy import GridCritic, GridPolicy, grid_prompt, grid_rubric
from ttrl_fast.grpo import GRPOConfig, GRPOTrainer
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.tta import AdaptConfig, RewardBatch, TestTimeAdapter

METHODS = ("none", "best_of_g", "meta_ttrl", "meta_ttrl_live", "random", "majority", "oracle")
TRAINED = ("meta_ttrl", "meta_ttrl_live", "random", "majority", "oracle")
SPLITS = ("adapt", "heldout", "seen")


@dataclass
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    prompts: int = 48  # per split
    group_size: int = 8
    prompts_per_step: int = 8
    steps: int = 150
    learning_rate: float = 1e-4
    beta: float = 0.05
    eval_samples: int = 16
    pretrain_steps: int | None = None  # None: grid_model.PRETRAIN["steps"]
    vqa_eval: int = 512

    @classmethod
    def quick(cls) -> "Settings":
        return cls(seeds=(0,), steps=60, eval_samples=8)


@dataclass
class SeedResult:
    seed: int
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> split -> accuracy
    vqa_accuracy: dict[str, float] = field(default_factory=dict)  # method -> understanding accuracy
    auroc: dict[str, float] = field(default_factory=dict)  # "before" / "after_meta_ttrl"
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> reward / accuracy
    seconds: dict[str, float] = field(default_factory=dict)


def _oracle_reward(prompt, grid) -> float:
    return float(W.checker(W.Spec.parse(prompt.text), grid))


def monitor_for(method: str, policy: GridPolicy, seed: int):
    if method == "meta_ttrl":
        return M.RubricVQA(policy.critic("frozen_init"), grid_rubric())
    if method == "meta_ttrl_live":
        return M.RubricVQA(policy.critic("live"), grid_rubric())
    if method == "random":
        return M.RandomReward(seed)
    if method == "majority":
        return M.Consensus(lambda grid: grid, mode="majority")
    if method == "oracle":
        return M.Oracle(_oracle_reward)
    raise ValueError(f"method must be one of {TRAINED}, got {method!r}")


class _Measured:
    """Wraps a monitor to record, per step, the checker accuracy of the rollouts (measurement only: the
    reward the loop sees is the wrapped monitor's)."""

    def __init__(self, monitor):
        self.monitor, self.accuracy = monitor, []

    def prepare(self, prompts):
        if hasattr(self.monitor, "prepare"):
            self.monitor.prepare(prompts)

    def score(self, rollouts) -> RewardBatch:
        correct = [_oracle_reward(rollouts.prompt_of(i), out) for i, out in enumerate(rollouts.outputs)]
        self.accuracy.append(sum(correct) / len(correct))
        return self.monitor.score(rollouts)


def evaluate(model, prompts, samples: int, seed: int) -> float:
    """Checker accuracy of `samples` draws per prompt at temperature 1."""
    policy = GridPolicy(model, frozen_copy=False)
    rollouts = policy.generate(prompts, SamplingParams(n=samples, seed=seed))
    return sum(_oracle_reward(rollouts.prompt_of(i), g) for i, g in enumerate(rollouts.outputs)) / len(rollouts)


def best_of_g(model, critic_model, prompts, group: int, repeats: int, seed: int) -> float:
    """Serve the best of G samples by the frozen self-critic's rubric reward (no update)."""
    policy = GridPolicy(model, frozen_copy=False)
    monitor = M.RubricVQA(GridCritic(critic_model), grid_rubric())
    hits = total = 0
    for r in range(repeats):
        rollouts = policy.generate(prompts, SamplingParams(n=group, seed=seed * 7919 + r))
        for row in M.served_index(rollouts, monitor.score(rollouts).rewards):
            hits += _oracle_reward(rollouts.prompt_of(row), rollouts.outputs[row])
            total += 1
    return hits / total


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a correct sample outscores an incorrect one (ties count half)."""
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    if not pos or not neg:
        return float("nan")
    ranked = sorted((s, i < len(pos)) for i, s in enumerate(pos + neg))
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum((i + j + 1) / 2 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def self_reward_auroc(model, critic_model, prompts, seed: int) -> float:
    policy = GridPolicy(model, frozen_copy=False)
    rollouts = policy.generate(prompts, SamplingParams(n=8, seed=seed))
    rewards = M.RubricVQA(GridCritic(critic_model), grid_rubric()).score(rollouts).rewards.tolist()
    labels = [bool(_oracle_reward(rollouts.prompt_of(i), g)) for i, g in enumerate(rollouts.outputs)]
    return auroc(rewards, labels)


def vqa_accuracy(model, n: int, seed: int) -> float:
    import random

    rng = random.Random(50_000 + seed)
    examples = [W.vqa_example(rng) for _ in range(n)]
    probs = GridCritic(model).yes_prob([(g, q) for g, q, _ in examples])
    return sum((float(p) > 0.5) == a for p, (_, _, a) in zip(probs, examples)) / n


def adapt(model0, method: str, prompts, settings: Settings, seed: int, tick: Callable[[], None]):
    """GRPO test-time adaptation of a copy of model0 on `prompts` with `method`'s reward."""
    model = copy.deepcopy(model0).train()
    policy = GridPolicy(model, max_rows=settings.group_size * settings.prompts_per_step)
    monitor = _Measured(monitor_for(method, policy, seed))
    config = GRPOConfig(group_size=settings.group_size, learning_rate=settings.learning_rate, beta=settings.beta,
                        lora=None, max_new_tokens=W.CELLS, seed=seed, max_grad_norm=1.0)
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    episodes = math.ceil(settings.steps * settings.prompts_per_step / len(prompts))
    adapter = TestTimeAdapter(trainer, monitor, on_step=lambda record: tick(),
                              config=AdaptConfig(prompts_per_step=settings.prompts_per_step, episodes=episodes,
                                                 max_steps=settings.steps, shuffle=True, seed=seed))
    report = adapter.run(prompts)
    curves = {"reward": [r["reward_mean"] for r in report.history], "accuracy": monitor.accuracy,
              "kl": [r.get("kl", 0.0) for r in report.history]}
    return model.eval(), curves


def run_seed(seed: int, settings: Settings, checkpoints: Path | None, tick: Callable[[], None],
             scratch: Path | None = None) -> SeedResult:
    result = SeedResult(seed)
    shipped = grid_model.checkpoint_path(grid_model.SHIPPED, seed)
    if settings.pretrain_steps is None and shipped.exists() and checkpoints is None:
        checkpoints = grid_model.SHIPPED  # the checkpoint `python -m ttrl_fast.demo.grid_model` produces
    elif checkpoints is None:
        checkpoints = scratch  # pre-train once, then reuse
    model0, result.seconds["pretrain"] = grid_model.load_or_pretrain(seed, checkpoints,
                                                                     steps=settings.pretrain_steps)
    specs = W.prompt_splits(seed, settings.prompts)
    prompts = {split: [grid_prompt(s, i, split) for i, s in enumerate(specs[split])] for split in SPLITS}
    eval_seed = 1_000_003 * (seed + 1)
    start = time.perf_counter()
    result.accuracy["none"] = {s: evaluate(model0, prompts[s], settings.eval_samples, eval_seed) for s in SPLITS}
    result.accuracy["best_of_g"] = {s: best_of_g(model0, model0, prompts[s], settings.group_size,
                                                 max(1, settings.eval_samples // 4), eval_seed) for s in SPLITS}
    result.vqa_accuracy["none"] = vqa_accuracy(model0, settings.vqa_eval, seed)
    result.auroc["before"] = self_reward_auroc(model0, model0, prompts["adapt"], eval_seed)
    result.seconds["baselines"] = time.perf_counter() - start
    for method in TRAINED:
        start = time.perf_counter()
        model, result.curves[method] = adapt(model0, method, prompts["adapt"], settings, seed,
                                             tick)
        result.accuracy[method] = {s: evaluate(model, prompts[s], settings.eval_samples, eval_seed) for s in SPLITS}
        result.vqa_accuracy[method] = vqa_accuracy(model, settings.vqa_eval, seed)
        if method == "meta_ttrl":
            result.auroc["after_meta_ttrl"] = self_reward_auroc(model, model0, prompts["adapt"], eval_seed)
        result.seconds[method] = time.perf_counter() - start
    return result


def summarise(seeds: list[SeedResult], settings: Settings) -> dict:
    """results[method][split] = mean accuracy over seeds, plus spreads, per-seed values and curves."""
    results: dict = {}
    for method in METHODS:
        results[method] = {s: statistics.mean(r.accuracy[method][s] for r in seeds) for s in SPLITS}
    results["std"] = {m: {s: (statistics.stdev([r.accuracy[m][s] for r in seeds]) if len(seeds) > 1 else 0.0)
                          for s in SPLITS} for m in METHODS}
    results["vqa_accuracy"] = {m: statistics.mean(r.vqa_accuracy[m] for r in seeds) for m in seeds[0].vqa_accuracy}
    results["auroc"] = {k: statistics.mean(r.auroc[k] for r in seeds) for k in seeds[0].auroc}
    results["per_seed"] = [asdict(r) for r in seeds]
    results["settings"] = asdict(settings)
    results["gain_heldout"] = {m: results[m]["heldout"] - results["none"]["heldout"] for m in METHODS}
    results["drop_seen"] = {m: results["none"]["seen"] - results[m]["seen"] for m in METHODS}
    return results


def table(results: dict) -> str:
    lines = [f"{'method':<16}" + "".join(f"{s:>16}" for s in SPLITS)]
    for m in METHODS:
        cells = "".join(f"{results[m][s]:>10.3f} ±{results['std'][m][s]:.3f}" for s in SPLITS)
        lines.append(f"{m:<16}{cells}")
    auc = results["auroc"]
    lines.append(f"self-reward AUROC vs checker: before {auc['before']:.3f}"
                 + (f", after Meta-TTRL {auc['after_meta_ttrl']:.3f}" if "after_meta_ttrl" in auc else ""))
    lines.append("understanding (VQA) accuracy: " + ", ".join(f"{m} {v:.3f}"
                                                            for m, v in results["vqa_accuracy"].items()))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    """Reward and rollout accuracy vs step (mean over seeds) per trained method; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in TRAINED:
        for ax, key in zip(axes, ("reward", "accuracy")):
            runs = [r["curves"][method][key] for r in results["per_seed"]]
            length = min(map(len, runs))
            mean = [statistics.mean(run[i] for run in runs) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=method)
    axes[0].set(title="monitor reward of the rollouts", xlabel="GRPO step", ylabel="mean reward")
    axes[1].set(title="checker accuracy of the rollouts (never seen by the loop)", xlabel="GRPO step",
                ylabel="accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(*, out_dir: str | Path, quick: bool = False, seeds=None, checkpoints: str | Path | None = None,
        progress: bool = True, settings: Settings | None = None) -> dict:
    """The whole GridWorld demo; writes results.json and curves.png into out_dir and returns the results."""
    settings = settings or (Settings.quick() if quick else Settings())
    if seeds is not None:
        settings = Settings(**{**asdict(settings), "seeds": tuple(seeds)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = None if checkpoints is None else Path(checkpoints)
    from tqdm import tqdm

    bar = tqdm(total=len(settings.seeds) * len(TRAINED) * settings.steps, disable=not progress, unit="step",
               desc="GridWorld Meta-TTRL")
    per_seed = []
    for seed in settings.seeds:
        bar.set_postfix(seed=seed)
        per_seed.append(run_seed(seed, settings, checkpoints, lambda: bar.update(1), scratch=out / "checkpoints"))
    bar.close()
    results = summarise(per_seed, settings)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    results["plot"] = str(out / "curves.png") if plot(results, out / "curves.png") else None
    return results
