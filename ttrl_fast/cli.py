"""`ttrl-fast`: command-line entry points.

    ttrl-fast demo [--world gridworld|consensus] [--quick] [--out DIR]

    ttrl-fast adapt --model PATH_OR_ID --prompts FILE.jsonl --monitor rubric|consensus|judge|pairwise|caption
                    --out DIR [--resume] [--critic frozen_init|live] [--lora-r 8 | --full] ...

Prompts JSONL: one object per line with "prompt" (or "text"), optional "id" (default: the line number)
and any other fields kept as the prompt's meta (e.g. "rubric": a static rubric). The run directory gets
metrics.jsonl, served.jsonl (one served output per prompt) and a checkpoint; --resume continues an
interrupted run. Models load with transformers' Auto classes, without trust_remote_code unless asked.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

MONITORS = ("rubric", "consensus", "judge", "pairwise", "caption")


def read_prompts(path: str | Path):
    from ttrl_fast.tta.types import Prompt

    prompts = []
    first_line: dict[str, int] = {}  # prompt id -> its line (ids key served outputs and resume)
    for number, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number + 1}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise SystemExit(f"{path}:{number + 1}: needs a JSON object with a \"prompt\" (or \"text\") string, "
                             f"got {type(item).__name__}")
        text = item.pop("prompt", None) or item.pop("text", None)
        if not isinstance(text, str) or not text:
            raise SystemExit(f"{path}:{number + 1}: needs a non-empty \"prompt\" (or \"text\") string")
        prompt_id = str(item.pop("id", number))
        if prompt_id in first_line:
            raise SystemExit(f"{path}:{number + 1}: duplicate id {prompt_id!r} (first on line {first_line[prompt_id]})")
        first_line[prompt_id] = number + 1
        prompts.append(Prompt(id=prompt_id, text=text, meta=item))
    if not prompts:
        raise SystemExit(f"{path}: no prompts")
    return prompts


def extract_answer(output: str) -> str | None:
    """Final answer of a text output: \\boxed{...} if present, else the last number, else the last line."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", output)
    if boxed:
        return boxed[-1].strip()
    numbers = re.findall(r"-?\d+(?:\.\d+)?", output)
    if numbers:
        return numbers[-1]
    lines = [l.strip() for l in output.strip().splitlines() if l.strip()]
    return lines[-1] if lines else None


def build_monitor(kind: str, critic, prompts):
    from ttrl_fast import monitors as M

    if kind == "rubric":
        static = all("rubric" in p.meta for p in prompts)
        return M.RubricVQA(critic, M.StaticRubric() if static else M.SelfRubric(critic))
    if kind == "consensus":
        return M.Consensus(extract_answer, mode="majority")
    if kind == "judge":
        return M.JudgeScore(critic)
    if kind == "pairwise":  # SEER: beat the initial model's greedy answer
        return M.PairwiseVsBaseline(critic, lambda prompt: critic.generate_text([prompt.text])[0])
    return M.CaptionLikelihood(critic)


def adapt(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttrl_fast.grpo import GRPOConfig, GRPOTrainer, LoraSettings
    from ttrl_fast.policy import HFCausalLMPolicy
    from ttrl_fast.tta import AdaptConfig, DivergenceGuard, TestTimeAdapter

    world = _init_distributed()  # under torchrun: one process per rank, each adapting on its share
    if args.prompts_per_step % world:
        raise SystemExit(f"--prompts-per-step {args.prompts_per_step} must be a multiple of the {world} processes")
    torch.manual_seed(args.seed)
    prompts = read_prompts(args.prompts)
    # every hyperparameter is validated (GRPOConfig, SamplingParams, AdaptConfig) before the model loads
    lora = None if args.full else LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r)
    config = GRPOConfig(group_size=args.group_size, learning_rate=args.lr, beta=args.beta, ppo_epochs=args.ppo_epochs,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        lora=lora, seed=args.seed)
    adapt_config = AdaptConfig(prompts_per_step=args.prompts_per_step, episodes=args.episodes, reset=args.reset,
                               serve="consensus" if args.monitor == "consensus" else "best",
                               max_steps=args.max_steps, plateau_patience=args.plateau_patience, seed=args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code, dtype=dtype)
    policy = HFCausalLMPolicy(model, tokenizer, lora=lora, max_rows=max(args.group_size * args.prompts_per_step // world,
                                                                           1),
                              max_seq_len=args.max_seq_len)
    if args.fsdp:
        from ttrl_fast.distributed import shard_fsdp2

        if lora is not None or world == 1:
            raise SystemExit("--fsdp shards full-weight training (--full) across torchrun processes")
        shard_fsdp2(policy)
    critic = policy.critic(args.critic)
    monitor = build_monitor(args.monitor, critic, prompts)
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    total = len(prompts) * args.episodes // args.prompts_per_step + 1
    bar = _progress(total, args.no_progress)

    def on_step(record):
        bar.update(1)
        bar.set_postfix(reward=f"{record.get('reward_mean', float('nan')):.3f}", kl=f"{record.get('kl', 0.0):.4f}")

    adapter = TestTimeAdapter(trainer, monitor, config=adapt_config, run_dir=args.out,
                              guard=DivergenceGuard() if args.guard else None,
                              extract=extract_answer if args.monitor == "consensus" else None, on_step=on_step)
    report = adapter.run(prompts, resume=args.resume)
    bar.close()
    if dp_rank() == 0:
        print(f"{report.steps} steps ({report.stopped}); {len(report.served)} prompts served -> {args.out}")
    return 0


def dp_rank() -> int:
    from ttrl_fast.distributed import rank_and_world

    return rank_and_world()[0]


def _init_distributed() -> int:
    """torchrun sets WORLD_SIZE / RANK / MASTER_ADDR: start the process group (nccl on GPU, else gloo)."""
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return world


def _progress(total: int, disabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, disable=disabled, unit="step")
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        class _Null:
            def update(self, n): ...
            def set_postfix(self, **kw): ...
            def close(self): ...

        return _Null()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttrl-fast", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("adapt", help="self-monitoring test-time RL on a stream of prompts")
    a.add_argument("--model", required=True, help="local path or hub id of a causal LM")
    a.add_argument("--prompts", required=True, help="JSONL file, one {\"prompt\": ...} per line")
    # --reward is the same option: torchrun's own parser mistakes --monitor for its --monitor-interval
    a.add_argument("--monitor", "--reward", dest="monitor", required=True, choices=MONITORS)
    a.add_argument("--out", required=True, help="run directory (metrics, served outputs, checkpoint)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a.add_argument("--critic", default="frozen_init", choices=("frozen_init", "live"))
    a.add_argument("--group-size", type=int, default=8)
    a.add_argument("--prompts-per-step", type=int, default=1)
    a.add_argument("--episodes", type=int, default=1)
    a.add_argument("--reset", default="never", choices=("never", "per_prompt", "per_episode"))
    a.add_argument("--max-steps", type=int, default=None)
    a.add_argument("--plateau-patience", type=int, default=None)
    a.add_argument("--lr", type=float, default=1e-5)
    a.add_argument("--beta", type=float, default=0.04)
    a.add_argument("--ppo-epochs", type=int, default=1)
    a.add_argument("--max-new-tokens", type=int, default=256)
    a.add_argument("--max-seq-len", type=int, default=2048)
    a.add_argument("--temperature", type=float, default=1.0)
    a.add_argument("--top-p", type=float, default=1.0)
    a.add_argument("--lora-r", type=int, default=8)
    a.add_argument("--full", action="store_true", help="train every weight (default: a LoRA adapter)")
    a.add_argument("--fsdp", action="store_true", help="under torchrun with --full: shard the model (FSDP2)")
    a.add_argument("--guard", action="store_true", help="roll back and lower the lr when the reward collapses")
    a.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--trust-remote-code", action="store_true")
    a.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("demo", help="the embedded demo: a tiny unified model improves itself on CPU")
    d.add_argument("--world", default="gridworld", choices=("gridworld", "consensus"),
                   help="gridworld: Meta-TTRL self-VQA rubric rewards; consensus: TTRL / TTRV vote rewards")
    d.add_argument("--quick", action="store_true", help="one seed, fewer steps (CI)")
    d.add_argument("--seeds", type=int, nargs="+", default=None)
    d.add_argument("--out", default="ttrl_fast_demo", help="output folder (results.json, curves.png)")
    d.add_argument("--checkpoints", default=None, help="pre-trained toy models (default: OUT/checkpoints)")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--no-progress", action="store_true")
    from ttrl_fast import bench_cli

    bench_cli.add_arguments(sub.add_parser("bench", help="run every benchmark: CSVs, plots, performance.md",
                                           description=bench_cli.__doc__.split("\n\n")[0]))
    return p


def demo(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.world == "gridworld":
        from ttrl_fast.demo import grid_experiment as E

        results = E.run(out_dir=out, quick=args.quick, seeds=args.seeds, checkpoints=args.checkpoints,
                        progress=not args.no_progress)
        print(E.table(results))
        print(f"results: {out / 'results.json'}" + (f"; plot: {results['plot']}" if results.get("plot") else ""))
        return 0
    from ttrl_fast.demo.consensus_world import run_consensus_demo

    kwargs = {} if args.seeds is None else {"seeds": tuple(args.seeds)}
    results = run_consensus_demo(out_dir=out, quick=args.quick, progress=not args.no_progress, **kwargs)
    splits = list(results["none"])
    print(f"{'pass@1':<10}" + "".join(f"{s:>10}" for s in splits) + f"{'maj@n adapt':>14}")
    for method in ("none", "ttrl", "ttrv", "random", "oracle"):
        print(f"{method:<10}" + "".join(f"{results[method][s]:>10.3f}" for s in splits)
              + f"{results['maj_at_n'][method]['adapt']:>14.3f}")
    print(f"pseudo-label accuracy before adaptation: {results['label_accuracy']['before']:.3f}")
    print(f"results: {out / 'consensus_results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "adapt":
        return adapt(args)
    if args.command == "demo":
        return demo(args)
    if args.command == "bench":
        from ttrl_fast.bench_cli import main_from_args

        return main_from_args(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
