"""A stock TRL GRPO script on ttrl_fast's fused kernels: the only change is one import line,

    from trl import GRPOTrainer                      ->      from ttrl_fast.compat.trl import GRPOTrainer

after which TRL's per-token log-probs come from the backbone's hidden states through ttrl_fast's fused LM head
(the [tokens, vocab] logits never exist) and its loss from ttrl_fast.policy_loss (TRL 1.16's formulas, the same
logged metrics). Everything else (GRPOConfig, datasets, reward functions, accelerate, checkpoints) is TRL's.
`--rollout ttrl_fast` additionally hands TRL's generation to ttrl_fast's RolloutSampler through TRL's
`rollout_func` hook (one prefill per prompt shared by its G completions, exact sampling log-probs returned).

    python examples/trl_drop_in.py --model Qwen/Qwen2.5-0.5B-Instruct --max-steps 50 --out runs/trl_drop_in
    python examples/trl_drop_in.py --model Qwen/Qwen2.5-0.5B-Instruct --rollout ttrl_fast --out runs/trl_sampler
    python examples/trl_drop_in.py --model Qwen/Qwen2.5-0.5B-Instruct --stock      # the same run on stock TRL
    python examples/trl_drop_in.py --tiny --out /tmp/trl_tiny                       # offline smoke run

The reward function is a toy (completions close to --target-words words). --tiny saves a random 2-layer Llama
and a word-level tokenizer to OUT/tiny_model and rewards completions made of low-numbered words.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import trl
from datasets import Dataset

from ttrl_fast.compat.trl import GRPOTrainer  # the one changed line (stock TRL: from trl import GRPOTrainer)

HERE = Path(__file__).resolve().parent

PROMPTS = ["Describe the sea in one sentence.", "Name three colours and what they remind you of.",
           "Explain what a prime number is.", "Give a tip for learning a new language.",
           "Why is the sky blue?", "Write a haiku about autumn.",
           "What makes a good cup of tea?", "Summarise the rules of chess briefly."]


def length_reward(target_words: int):
    """A toy reward: 1 - |words - target| / target, clipped at -1 (TRL reward-function signature)."""
    def reward(completions, **kwargs):
        return [max(-1.0, 1.0 - abs(len(str(c).split()) - target_words) / target_words) for c in completions]
    return reward


def tiny_model_and_tokenizer(out: Path):
    """A random Llama (2 x 32) and a word-level tokenizer (<pad> <s> </s> w0..w60), saved under out so that TRL
    can reload the reference model from the path. Returns (model path, tokenizer, prompts, reward)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    path = out / "tiny_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    def low_words(completions, **kwargs):  # prefers completions made of low-numbered words
        return [-sum(int(w[1:]) for w in c.split() if w[0] == "w") / 60 for c in completions]
    return str(path), tokenizer, ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"], low_words


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--tiny", action="store_true", help="random tiny Llama + word tokenizer built offline")
    p.add_argument("--rollout", default="trl", choices=("trl", "ttrl_fast"),
                   help="ttrl_fast: the RolloutSampler as TRL's rollout_func")
    p.add_argument("--stock", action="store_true", help="run stock trl.GRPOTrainer instead (for comparison)")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="per-device completions per step (x num_generations)")
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--target-words", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "runs" / "trl_drop_in"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if args.tiny:
        model_path, tokenizer, prompts, reward = tiny_model_and_tokenizer(out)
    else:
        from transformers import AutoTokenizer

        model_path, prompts, reward = args.model, PROMPTS, length_reward(args.target_words)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token

    config = trl.GRPOConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size,
                            num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                            max_steps=args.max_steps, learning_rate=args.lr, beta=args.beta, loss_type=args.loss_type,
                            temperature=args.temperature, logging_steps=1, report_to="none", save_strategy="no",
                            seed=args.seed, use_cpu=not cuda, bf16=cuda and not args.tiny)
    trainer_cls = trl.GRPOTrainer if args.stock else GRPOTrainer
    model, extra, calls = model_path, {}, []
    if args.rollout == "ttrl_fast":
        from transformers import AutoModelForCausalLM

        from ttrl_fast import RolloutSampler, SamplingParams
        from ttrl_fast.compat.trl import rollout_func

        # the sampler reads the trainer's (live) weights: give TRL the same model object
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if config.bf16 else None)
        longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        sampler = RolloutSampler(model, max_rows=args.batch_size, max_seq_len=longest + args.max_completion_length,
                                 eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
        sample = rollout_func(sampler, SamplingParams(seed=args.seed))
        # n, max_tokens and temperature come from the TRL config (num_generations, max_completion_length, ...)

        def counted(batch_prompts, trainer):  # TRL's rollout_func signature; counts calls for the summary
            calls.append(len(batch_prompts))
            return sample(batch_prompts, trainer)
        extra["rollout_func"] = counted

    trainer = trainer_cls(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), **extra)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [float(entry["loss"]) for entry in logs]
    rewards = [float(entry.get("reward", math.nan)) for entry in logs]
    for entry in logs:
        print(f"step {entry['step']:3d}  loss {entry['loss']:+.5f}  reward {entry.get('reward', math.nan):+.4f}  "
              f"kl {entry.get('kl', 0.0):.5f}")
    summary = {"trainer": f"{trainer_cls.__module__}.{trainer_cls.__name__}", "rollout": args.rollout,
               "losses": losses, "rewards": rewards, "rollout_calls": len(calls),
               "fused_loss": not args.stock and trainer._fused_loss_reason({}) is None}
    if cuda:
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {summary['peak_memory_gib']:.2f} GiB")
    print(f"{summary['trainer']}: {len(losses)} steps, reward {rewards[0]:+.4f} -> {rewards[-1]:+.4f}")
    return summary


if __name__ == "__main__":
    main()
