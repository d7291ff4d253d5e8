"""Consensus world: TTRL / TTRV on a task with discrete answers, on 2 CPU cores, nothing downloaded
(methods.md §4, Design B).

The world
* Problems are 2-digit + 2-digit additions written as word tokens, "<bos> 5 7 + 6 8 =", answered by the
  zero-padded 3-digit sum and a stop token: "1 2 5 <eos>" (max_new_tokens = answer length + 1).
* The hard (shifted) part of the distribution is the problems with a carry out of EVERY column (57 + 68).
  The pre-training corpus states their sums unreliably, as a sloppy source would: right with
  probability 0.5, else a classic slip (forgot the units carry -10: 115; forgot the final carry: 025;
  units digit -1 / +1), drawn afresh each time a problem is drawn. Every other problem is stated right.
* The adaptation stream and the held-out set are hard problems that are NOT in the pre-training corpus;
  the "easy" set (fewer carries) is from the corpus and measures forgetting.
* The model is a tiny transformers `LlamaForCausalLM` (hidden 64, 2 layers, vocabulary = the
  WordTokenizer's 15 words) pre-trained on the fly with AdamW (seeded, deterministic; warm-up + cosine).
  It solves easy problems (~95 % at T=1) and, on unseen hard ones, samples the right sum about half the
  time with the slips spread over several wrong answers, so the majority of 16 samples is right far more
  often (maj@16 ~0.8): the precondition TTRL needs. (An early-stopped model on a clean corpus was tried
  first: maj@16 beat pass@1 by only ~0.1-0.2 on the stream, and it sat on such a steep part of its
  learning curve that GRPO steps with any reward, the oracle's included, mostly degraded it.)

The adaptation (the package's real code paths: HFCausalLMPolicy -> RolloutSampler rollouts, fused
log-probs, GRPOTrainer, TestTimeAdapter; every weight trains, lora=None, the reference is a frozen copy)
runs over the unlabeled stream with one of four reward monitors:
    ttrl    Consensus(mode="majority")                       r = 1[answer == majority answer]
    ttrv    Consensus(mode="frequency", entropy_alpha=0.75)  r = p(answer) - 0.75 H_norm; the entropy
            term is constant within a group, so under group-normalised advantages it cancels exactly
            and TTRV here is the frequency reward alone (see Consensus' docstring, methods.md §3.6)
    random  RandomReward (control: any gain it gives is not from the monitor)
    oracle  Oracle(checker) (ground truth, an upper bound; reads labels the loop must never see)
and "none" is the pre-trained model. The exact-answer checker is used only by the oracle control and by
measurement (the per-step label-accuracy probe reads the truth after the reward is computed, never
before, and changes nothing).

Measured, before and after, with the same sampling settings (T=1, n samples per problem): pass@1
(mean correctness of the samples), maj@n (the most common answer is right), exact pass@1 (teacher-forced
probability of the right answer, the quantity pass@1 estimates), on the adaptation stream (transductive)
and on held-out problems of the same shifted distribution; the label accuracy of the majority
pseudo-labels before training and per step during it; the evaluation noise (two sampling seeds).

Settings: GRPO with G=16, 8 prompts per step, 8 episodes over the stream, AdamW lr 1e-4 (constant),
beta 0.01 (k3), clip 0.2, one update per batch, T=1, 4 new tokens; all weights train.

Measured (full mode, seeds 0-2, 1 torch thread; sampled pass@1 / maj@16, mean over seeds; ~170 s):
    method   stream p@1  maj@16   held-out p@1  maj@16   easy p@1 (forgetting)
    none       0.504     0.818      0.492      0.781       0.958
    ttrl       0.921     0.979      0.882      0.971       0.778
    ttrv       0.915     0.974      0.865      0.958       0.760
    random     0.290     0.401      0.286      0.333       0.848
    oracle     0.937     1.000      0.880      0.977       0.774
TTRL's pass@1 rises past the initial maj@16 on the stream and transfers to unseen problems; its
pseudo-labels were right 95-98 % of the time and its binary rewards matched the truth's 98 % of the
time (so it nearly equals the oracle; on a seed where every pseudo-label is right the two runs are
identical). Random reward is a random walk that here mostly hurts. All-weights adaptation on the hard
stream costs ~0.18 on the easy problems (methods.md §3.6: measure forgetting). Quick mode (1 seed,
~30 s) shows the same pattern; tests/demo/test_consensus_world.py lists the per-seed ranges.

    from ttrl_fast.demo.consensus_world import run_consensus_demo
    results = run_consensus_demo(quick=True, seeds=(0,))
    results["ttrl"]["adapt"], results["none"]["adapt"]
"""
from __future__ import annotations

import copy
import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ttrl_fast.advantages import group_advantages
from ttrl_fast.grpo.config import GRPOConfig
from ttrl_fast.grpo.trainer import GRPOTrainer
from ttrl_fast.monitors import Consensus, Oracle, RandomReward
from ttrl_fast.policy.hf_causal_lm import HFCausalLMPolicy
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.text import WordTokenizer
from ttrl_fast.tta.adapter import AdaptConfig, TestTimeAdapter
from ttrl_fast.tta.types import Prompt

DIGIT_WORDS = tuple(str(d) for d in range(10))
TOKENIZER = WordTokenizer(DIGIT_WORDS + ("+", "="))
METHODS = ("none", "ttrl", "ttrv", "random", "oracle")
SPLITS = ("adapt", "heldout", "easy")


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class WorldConfig:
    """Every knob of the demo. `run_consensus_demo` uses FULL or QUICK."""

    # task and shift
    digits: int = 2
    # the pre-training corpus states the sum of a shifted (every-column-carry) problem correctly with
    # probability slip_probs[0], else with a classic slip: forgot the units carry (-10), forgot the final
    # carry (-10**digits), units digit -1, units digit +1 (drawn afresh every time the problem is drawn)
    slip_probs: tuple[float, ...] = (0.5, 0.25, 0.15, 0.05, 0.05)
    shift_weight: float = 1.0  # pre-training weight of the shifted problems (the others: 1)
    n_adapt: int = 64  # the unlabeled adaptation stream
    n_heldout: int = 128  # same distribution, never adapted on (nor pre-trained on)
    n_easy: int = 128  # problems with fewer carries, from the pre-training corpus (forgetting check)
    # model
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    init_std: float = 0.08  # initializer_range (HF's 0.02 leaves this tiny model on a long plateau)
    # pre-training (AdamW, warm-up then cosine decay to 0)
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 256
    pretrain_steps: int = 800
    warmup_steps: int = 50
    # adaptation (GRPO, all weights)
    group_size: int = 16
    prompts_per_step: int = 8
    episodes: int = 8
    learning_rate: float = 1e-4
    beta: float = 0.01
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    # evaluation
    eval_samples: int = 16

    @property
    def answer_digits(self) -> int:
        return self.digits + 1


FULL = WorldConfig()
QUICK = replace(FULL, pretrain_batch=128, pretrain_steps=800, pretrain_lr=5e-3, n_adapt=32, n_heldout=64,
                n_easy=64)


# ---------------------------------------------------------------------------------------------- the task
def _carries(a: int, b: int, digits: int) -> int:
    carry = count = 0
    for i in range(digits):
        carry = int((a // 10 ** i) % 10 + (b // 10 ** i) % 10 + carry >= 10)
        count += carry
    return count


def _spell(value: int, width: int) -> str:
    return " ".join(f"{value:0{width}d}")


def problem_text(a: int, b: int, digits: int = 2) -> str:
    return f"{_spell(a, digits)} + {_spell(b, digits)} ="


def extract_answer(output: Any, answer_digits: int = 3) -> str | None:
    """The final answer of a decoded completion: exactly `answer_digits` digit words -> "085"; else None."""
    if not isinstance(output, str):
        return None
    words = output.split()
    if len(words) != answer_digits or not all(w in DIGIT_WORDS for w in words):
        return None
    return "".join(words)


def check(prompt: Prompt, output: Any) -> float:
    """Ground truth (measurement and the oracle control only)."""
    answer = prompt.meta["answer"]
    return float(extract_answer(output, len(answer)) == answer)


def slips(digits: int) -> tuple[int, ...]:
    """Offsets of the corpus' stated sum from the true one (see WorldConfig.slip_probs)."""
    return (0, -10, -10 ** digits, -1, 1)


@dataclass
class World:
    """The problem sets of one seed and the pre-training corpus."""

    config: WorldConfig
    train_rows: torch.Tensor  # [P, len(slips), L] int64: each problem with each stated sum
    train_shifted: torch.Tensor  # [P] bool
    train_weights: torch.Tensor  # [P]
    adapt: list[Prompt]
    heldout: list[Prompt]
    easy: list[Prompt]

    @property
    def prompt_length(self) -> int:  # <bos> + 2 * digits + "+" + "="
        return 2 * self.config.digits + 3


def _prompt(name: str, a: int, b: int, digits: int) -> Prompt:
    return Prompt(name, problem_text(a, b, digits), meta={"answer": f"{a + b:0{digits + 1}d}"})


def encode_prompt(text: str) -> list[int]:
    return TOKENIZER.encode(text, add_bos=True)


def _row(prompt: Prompt, stated: str | None = None) -> list[int]:
    answer = prompt.meta["answer"] if stated is None else stated
    return encode_prompt(prompt.text) + TOKENIZER.encode(" ".join(answer)) + [TOKENIZER.eos_token_id]


def make_world(config: WorldConfig, seed: int) -> World:
    d = config.digits
    offsets = slips(d)
    if d < 2:
        raise ValueError(f"digits must be >= 2, got {d}")
    if len(config.slip_probs) != len(offsets) or min(config.slip_probs) < 0 or sum(config.slip_probs) <= 0:
        raise ValueError(f"slip_probs must be {len(offsets)} non-negative weights, got {config.slip_probs!r}")
    low, high = 10 ** (d - 1), 10 ** d
    pairs = [(a, b) for a in range(low, high) for b in range(low, high)]
    shifted = [p for p in pairs if _carries(*p, d) == d]
    rng = random.Random(seed)
    rng.shuffle(shifted)
    if config.n_adapt + config.n_heldout > len(shifted):
        raise ValueError(f"only {len(shifted)} shifted problems for {config.n_adapt + config.n_heldout} requested")
    reserved = shifted[:config.n_adapt + config.n_heldout]
    adapt = [_prompt(f"adapt{i}", a, b, d) for i, (a, b) in enumerate(reserved[:config.n_adapt])]
    held = [_prompt(f"held{i}", a, b, d) for i, (a, b) in enumerate(reserved[config.n_adapt:])]
    excluded = set(reserved)
    train = [p for p in pairs if p not in excluded]
    is_shifted = [_carries(a, b, d) == d for a, b in train]
    rows = []
    for (a, b), hard in zip(train, is_shifted):
        prompt = _prompt("t", a, b, d)
        # only the shifted problems are mis-stated (and every slip keeps their sum a valid 3-digit number)
        rows.append([_row(prompt, f"{a + b + (slip if hard else 0):0{d + 1}d}") for slip in offsets])
    easy_pairs = [p for p, hard in zip(train, is_shifted) if not hard]
    easy = [_prompt(f"easy{i}", a, b, d) for i, (a, b) in enumerate(rng.sample(easy_pairs, config.n_easy))]
    return World(config, torch.tensor(rows, dtype=torch.int64), torch.tensor(is_shifted),
                 torch.tensor([config.shift_weight if h else 1.0 for h in is_shifted]), adapt, held, easy)


# ---------------------------------------------------------------------------------------------- the model
def make_model(config: WorldConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llama = LlamaConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=config.hidden,
                        intermediate_size=2 * config.hidden, num_hidden_layers=config.layers,
                        num_attention_heads=config.heads, num_key_value_heads=config.heads,
                        max_position_embeddings=32, bos_token_id=TOKENIZER.bos_token_id,
                        eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id,
                        initializer_range=config.init_std, tie_word_embeddings=False)
    model = LlamaForCausalLM(llama)
    model.generation_config.pad_token_id = TOKENIZER.pad_token_id
    return model


@torch.no_grad()
def exact_pass1(model, prompts: Sequence[Prompt]) -> list[float]:
    """P(the right answer and the stop token | prompt) at T=1 per problem (teacher forcing)."""
    rows = torch.tensor([_row(p) for p in prompts], dtype=torch.int64)
    start = len(encode_prompt(prompts[0].text))
    was_training = model.training
    model.eval()
    logits = model(input_ids=rows[:, :-1]).logits[:, start - 1:].float().log_softmax(-1)
    model.train(was_training)
    return logits.gather(-1, rows[:, start:, None]).squeeze(-1).sum(-1).exp().tolist()


def pretrain(world: World, seed: int, *, progress=None) -> tuple[Any, dict]:
    """AdamW on the noisy corpus (fresh slips every draw), linear warm-up then cosine decay to 0."""
    c = world.config
    model = make_model(c, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.pretrain_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    slip_weights = torch.tensor(c.slip_probs, dtype=torch.float32)
    start = world.prompt_length
    t0 = time.perf_counter()
    model.train()
    for step in range(c.pretrain_steps):
        warm = min(1.0, (step + 1) / max(1, c.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = c.pretrain_lr * warm * 0.5 * (1.0 + math.cos(math.pi * step / c.pretrain_steps))
        index = torch.multinomial(world.train_weights, c.pretrain_batch, replacement=True, generator=generator)
        stated = torch.multinomial(slip_weights, c.pretrain_batch, replacement=True, generator=generator)
        rows = world.train_rows[index, torch.where(world.train_shifted[index], stated, 0)]
        logits = model(input_ids=rows[:, :-1]).logits[:, start - 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, start:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None and step % 100 == 0:
            progress.set_postfix_str(f"seed {seed} pretrain step {step} loss {float(loss.detach()):.3f}")
    model.eval()
    info = {"steps": c.pretrain_steps, "final_loss": float(loss.detach()), "seconds": time.perf_counter() - t0,
            "exact_pass1_shifted": statistics.fmean(exact_pass1(model, world.heldout)),
            "exact_pass1_easy": statistics.fmean(exact_pass1(model, world.easy))}
    return model, info


# ---------------------------------------------------------------------------------------------- measurement
def make_policy(model, config: WorldConfig, *, frozen_copy: bool) -> HFCausalLMPolicy:
    rows = max(config.prompts_per_step * config.group_size, 32 * config.eval_samples)
    return HFCausalLMPolicy(model, TOKENIZER, lora=None, max_rows=rows,
                            max_seq_len=2 * config.digits + 3 + config.answer_digits + 1, encode=encode_prompt,
                            frozen_copy=frozen_copy)


def evaluate(policy: HFCausalLMPolicy, prompts: Sequence[Prompt], config: WorldConfig, seed: int) -> dict:
    """pass@1 (sampled, T=config.temperature), maj@n, exact pass@1, per-problem majority answers."""
    n = config.eval_samples
    params = SamplingParams(n=n, max_tokens=config.answer_digits + 1, temperature=config.temperature, seed=seed)
    rollouts = policy.generate(list(prompts), params)
    pass1, majority_right, majority_share = [], [], []
    for b, prompt in enumerate(prompts):
        answers = [extract_answer(o, config.answer_digits) for o in rollouts.outputs[b * n:(b + 1) * n]]
        truth = prompt.meta["answer"]
        pass1.append(sum(a == truth for a in answers) / n)
        counts = Counter(a for a in answers if a is not None)
        top = counts.most_common(1)[0] if counts else (None, 0)
        majority_right.append(float(top[0] == truth))
        majority_share.append(top[1] / n)
    exact = exact_pass1(policy.model, prompts)
    count = len(prompts)
    return {"pass1": sum(pass1) / count, "maj": sum(majority_right) / count, "exact_pass1": sum(exact) / count,
            "majority_ratio": sum(majority_share) / count,
            # binomial standard error of the sampled pass@1 given the exact per-problem probabilities
            "pass1_se": math.sqrt(sum(p * (1 - p) for p in exact) / n) / count}


class _LabelProbe:
    """Wraps the reward monitor and, AFTER it has scored a batch, measures (for the log only; the rewards
    pass through unchanged) how good the batch's majority pseudo-labels, samples and rewards are:
    label_accuracy (majority answer == truth, per prompt), sample_accuracy (sample == truth),
    reward_accuracy (binary rewards only: reward == the truth's reward, TTRL's "reward accuracy") and,
    for a Consensus monitor with an entropy term, entropy_term_effect: the largest change that removing
    the group entropy term makes to the group-normalised advantages (0 up to rounding: it cancels)."""

    def __init__(self, monitor, answer_digits: int, advantage_eps: float):
        self.monitor, self.answer_digits, self.advantage_eps = monitor, answer_digits, advantage_eps
        self.name, self.intrinsic = getattr(monitor, "name", "monitor"), getattr(monitor, "intrinsic", True)
        self.last: dict = {}

    def prepare(self, prompts):
        if hasattr(self.monitor, "prepare"):
            self.monitor.prepare(prompts)

    def score(self, rollouts):
        batch = self.monitor.score(rollouts)
        group = rollouts.group_size
        labels, correct = 0, []
        for b, prompt in enumerate(rollouts.prompts):
            answers = [extract_answer(o, self.answer_digits) for o in rollouts.outputs[b * group:(b + 1) * group]]
            counts = Counter(a for a in answers if a is not None)
            majority = next((a for a, c in counts.items() if c == max(counts.values())), None) if counts else None
            labels += majority == prompt.meta["answer"]
            correct += [float(a == prompt.meta["answer"]) for a in answers]
        truth = torch.tensor(correct)
        rewards = batch.rewards
        self.last = {"label_accuracy": labels / len(rollouts.prompts), "sample_accuracy": float(truth.mean())}
        if bool(((rewards == 0) | (rewards == 1)).all()):
            self.last["reward_accuracy"] = float((rewards == truth).float().mean())
        alpha = getattr(self.monitor, "entropy_alpha", 0.0)
        if alpha and "entropy" in batch.info and not getattr(self.monitor, "per_sample_entropy", False):
            without = rewards + alpha * batch.info["entropy"].repeat_interleave(group)
            with_term = group_advantages(rewards, group_size=group, eps=self.advantage_eps)[0]
            without_term = group_advantages(without, group_size=group, eps=self.advantage_eps)[0]
            self.last["entropy_term_effect"] = float((with_term - without_term).abs().max())
        return batch

    __call__ = score


def make_monitor(method: str, seed: int, answer_digits: int):
    extract = lambda output: extract_answer(output, answer_digits)  # noqa: E731
    if method == "ttrl":
        return Consensus(extract, mode="majority", name="ttrl")
    if method == "ttrv":
        return Consensus(extract, mode="frequency", entropy_alpha=0.75, name="ttrv")
    if method == "random":
        return RandomReward(seed=seed)
    if method == "oracle":
        return Oracle(check)
    raise ValueError(f"unknown method {method!r}; one of {METHODS[1:]}")


def grpo_config(config: WorldConfig, seed: int) -> GRPOConfig:
    steps = config.episodes * math.ceil(config.n_adapt / config.prompts_per_step)
    return GRPOConfig(group_size=config.group_size, learning_rate=config.learning_rate, beta=config.beta,
                      weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                      temperature=config.temperature, max_new_tokens=config.answer_digits + 1, lora=None,
                      max_steps=steps, seed=seed)


def adapt(pretrained, world: World, method: str, seed: int, *, on_step=None) -> tuple[HFCausalLMPolicy, list[dict]]:
    """A copy of the pre-trained model adapted on the unlabeled stream with `method`'s reward."""
    c = world.config
    torch.manual_seed(seed)
    policy = make_policy(copy.deepcopy(pretrained), c, frozen_copy=c.beta != 0)
    grpo = grpo_config(c, seed)
    probe = _LabelProbe(make_monitor(method, seed, c.answer_digits), c.answer_digits, grpo.advantage_eps)
    trainer = GRPOTrainer(policy, grpo, monitor=probe)

    def step(record: dict) -> None:
        record.update(probe.last)
        if on_step is not None:
            on_step(record)

    adapter = TestTimeAdapter(trainer, probe, config=AdaptConfig(prompts_per_step=c.prompts_per_step,
                                                                 episodes=c.episodes, shuffle=True, seed=seed),
                              on_step=step)
    report = adapter.run(world.adapt)
    keep = ("step", "episode", "reward_mean", "reward_std", "frac_zero_std_groups", "kl", "label_accuracy",
            "sample_accuracy", "reward_accuracy", "entropy_term_effect")
    history = [{k: r[k] for k in keep if k in r} for r in report.history]
    policy.model.eval()
    return policy, history


def _episode_means(history: list[dict], key: str) -> list[float]:
    episodes: dict[int, list[float]] = {}
    for record in history:
        if key in record:
            episodes.setdefault(record["episode"], []).append(record[key])
    return [statistics.fmean(v) for _, v in sorted(episodes.items())]


# ---------------------------------------------------------------------------------------------- the demo
def run_seed(config: WorldConfig, seed: int, *, methods: Sequence[str] = METHODS, bar=None) -> dict:
    t0 = time.perf_counter()
    world = make_world(config, seed)
    model, pre = pretrain(world, seed, progress=bar)
    if bar is not None:
        bar.update(1)
    eval_seed = 10_000 + seed  # the same sampling noise for every method's evaluation
    out: dict = {"seed": seed, "pretrain": pre, "methods": {}, "timings": {"pretrain_s": pre["seconds"]}}
    base = make_policy(model, config, frozen_copy=False)
    t = time.perf_counter()
    out["methods"]["none"] = {split: evaluate(base, getattr(world, split), config, eval_seed) for split in SPLITS}
    # evaluation noise: the same model under a second sampling seed
    again = {split: evaluate(base, getattr(world, split), config, eval_seed + 1) for split in SPLITS}
    out["eval_noise"] = {split: {"pass1_repeat": again[split]["pass1"],
                                 "pass1_diff": again[split]["pass1"] - out["methods"]["none"][split]["pass1"],
                                 "maj_diff": again[split]["maj"] - out["methods"]["none"][split]["maj"],
                                 "pass1_se": out["methods"]["none"][split]["pass1_se"]} for split in SPLITS}
    out["timings"]["eval_none_s"] = time.perf_counter() - t
    if bar is not None:
        bar.update(1)
    for method in methods:
        if method == "none":
            continue
        t = time.perf_counter()

        def tick(record, method=method):
            if bar is not None and record["step"] % 8 == 0:
                bar.set_postfix_str(f"seed {seed} {method} step {record['step']} "
                                    f"reward {record.get('reward_mean', float('nan')):.2f}")

        policy, history = adapt(model, world, method, seed, on_step=tick)
        result = {split: evaluate(policy, getattr(world, split), config, eval_seed) for split in SPLITS}
        result["history"] = history
        result["label_accuracy_per_episode"] = _episode_means(history, "label_accuracy")
        result["sample_accuracy_per_episode"] = _episode_means(history, "sample_accuracy")
        result["final_kl"] = history[-1].get("kl") if history else None
        effects = [r["entropy_term_effect"] for r in history if "entropy_term_effect" in r]
        if effects:
            result["entropy_term_effect_max"] = max(effects)
        rewards_ok = [r["reward_accuracy"] for r in history if "reward_accuracy" in r]
        if rewards_ok:
            result["reward_accuracy_mean"] = statistics.fmean(rewards_ok)
        out["methods"][method] = result
        out["timings"][f"{method}_s"] = time.perf_counter() - t
        if bar is not None:
            bar.update(1)
    out["timings"]["total_s"] = time.perf_counter() - t0
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarise(per_seed: list[dict], config: WorldConfig, *, quick: bool, seconds: float, threads: int) -> dict:
    methods = [m for m in METHODS if all(m in s["methods"] for s in per_seed)]
    results: dict = {}
    for m in methods:
        results[m] = {split: _mean([s["methods"][m][split]["pass1"] for s in per_seed]) for split in SPLITS}
    results["maj_at_n"] = {m: {split: _mean([s["methods"][m][split]["maj"] for s in per_seed]) for split in SPLITS}
                           for m in methods}
    results["exact_pass1"] = {m: {split: _mean([s["methods"][m][split]["exact_pass1"] for s in per_seed])
                                  for split in SPLITS} for m in methods}
    results["gain"] = {m: {split: results[m][split] - results["none"][split] for split in SPLITS}
                       for m in methods if m != "none"}
    results["label_accuracy"] = {
        # majority of eval_samples samples of the initial model == truth, on the adaptation stream
        "before": _mean([s["methods"]["none"]["adapt"]["maj"] for s in per_seed]),
        # in-loop pseudo-labels (majority of the group_size rollouts), first and last episode
        **{m: {"first_episode": _mean([s["methods"][m]["label_accuracy_per_episode"][0] for s in per_seed]),
               "last_episode": _mean([s["methods"][m]["label_accuracy_per_episode"][-1] for s in per_seed])}
           for m in methods if m != "none"},
    }
    # TTRL's reward accuracy (binary rewards: reward == the reward the true label would give)
    results["reward_accuracy"] = {m: _mean([s["methods"][m]["reward_accuracy_mean"] for s in per_seed])
                                  for m in methods if all("reward_accuracy_mean" in s["methods"][m] for s in per_seed)}
    effects = [s["methods"]["ttrv"].get("entropy_term_effect_max") for s in per_seed if "ttrv" in s["methods"]]
    if effects and all(e is not None for e in effects):
        # largest change of any advantage when TTRV's group entropy term is dropped (it cancels)
        results["ttrv_entropy_term_effect"] = max(effects)
    results["eval_noise"] = {
        split: {"mean_abs_pass1_diff": _mean([abs(s["eval_noise"][split]["pass1_diff"]) for s in per_seed]),
                "pass1_se": _mean([s["eval_noise"][split]["pass1_se"] for s in per_seed])} for split in SPLITS}
    results["per_seed"] = per_seed
    results["timings"] = {"total_s": seconds,
                          "pretrain_s": _mean([s["timings"]["pretrain_s"] for s in per_seed]),
                          "per_seed_s": [s["timings"]["total_s"] for s in per_seed]}
    results["settings"] = {"quick": quick, "seeds": [s["seed"] for s in per_seed], "config": asdict(config),
                           "torch_threads": threads}
    results["notes"] = [
        "pass@1 = mean correctness of eval_samples samples per problem at T=1; maj@n = the most common of "
        "them is right; exact_pass1 = teacher-forced probability of the right answer (no sampling noise).",
        "ttrv = Consensus(frequency, entropy_alpha=0.75): the -0.75*H_norm term is the same for every sample "
        "of a prompt, so it cancels in the group-normalised advantage; only the frequency term acts.",
        "The checker is read only by the oracle control and by measurement (evaluation, the label probe).",
    ]
    return results


def run_consensus_demo(*, out_dir: str | Path | None = None, quick: bool = False, seeds: Sequence[int] = (0, 1, 2),
                       progress: bool = True, config: WorldConfig | None = None, threads: int | None = 1) -> dict:
    """Pre-train, adapt with ttrl / ttrv / random / oracle rewards, and measure, for each seed.

    Returns ``results[method][split]`` = mean sampled pass@1 over the seeds (methods none, ttrl, ttrv,
    random, oracle; splits adapt, heldout), plus ``maj_at_n``, ``exact_pass1``, ``gain``,
    ``label_accuracy``, ``eval_noise``, ``per_seed`` (histories included), ``timings``, ``settings``.
    Writes ``consensus_results.json`` into `out_dir` when given. `config` overrides QUICK / FULL.

    `threads`: torch CPU threads while it runs (restored after; None = leave as is). The default 1 is
    deliberate: this model's matrices are tiny, and on a shared 2-core machine 2 OpenMP threads ran
    3-4x SLOWER than 1 (each parallel region waits for a descheduled thread). Results are
    deterministic for a given seed and thread count.
    """
    config = config or (QUICK if quick else FULL)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    seeds = [int(s) for s in seeds]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds) * (len(METHODS) + 1), desc="consensus world", unit="stage")
    t0 = time.perf_counter()
    try:
        per_seed = [run_seed(config, seed, bar=bar) for seed in seeds]
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(previous_threads)
    results = summarise(per_seed, config, quick=quick, seconds=time.perf_counter() - t0,
                        threads=threads or previous_threads)
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "consensus_results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def format_table(results: dict) -> str:
    """A plain-text table: pass@1 and maj@n per method and split."""
    lines = [f"{'method':8s} {'adapt p@1':>9s} {'maj@n':>6s} {'held p@1':>9s} {'maj@n':>6s}"]
    for m in METHODS:
        if m not in results:
            continue
        lines.append(f"{m:8s} {results[m]['adapt']:9.3f} {results['maj_at_n'][m]['adapt']:6.3f} "
                     f"{results[m]['heldout']:9.3f} {results['maj_at_n'][m]['heldout']:6.3f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m ttrl_fast.demo.consensus_world [--quick] [--seeds 0 1 2] [--out DIR]
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    res = run_consensus_demo(out_dir=args.out, quick=args.quick, seeds=args.seeds, threads=args.threads)
    print(format_table(res))
    print("label accuracy", json.dumps(res["label_accuracy"]), "timings", json.dumps(res["timings"]))
