"""ttrl_fast's fused ops inside a hand-written GRPO loop (no trainer class): RolloutSampler draws G completions per
prompt with their log-probs, the decoder's hidden states go through fused_linear_logprobs (log-probs straight from
the LM head, the [tokens, vocab] logits never exist), group_advantages normalises the rewards per prompt and
policy_loss is the clipped GRPO objective with a k3 KL to a frozen reference copy.

The task is a toy: a random 2-layer Llama is rewarded for the fraction of even token ids it writes, so the
reward climbs within a few dozen steps on a CPU.

    python examples/custom_loop.py                    # 40 steps, ~20 s on 2 CPU cores
    python examples/custom_loop.py --tiny             # 10 steps (smoke test)
    python examples/custom_loop.py --steps 100 --loss-type grpo --beta 0.0
"""
from __future__ import annotations

import argparse
import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ttrl_fast

PAD, EOS, VOCAB = 0, 1, 64


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS)
    return LlamaForCausalLM(config)


def make_prompts(count: int, length: int = 8, seed: int = 0) -> list[list[int]]:
    """Equal-length random prompts (no padding, so positions are plain 0..T-1 as in the sampler)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (count, length), generator=generator).tolist()


def rewards_of(batch: ttrl_fast.RolloutBatch) -> torch.Tensor:
    """Fraction of even token ids among each completion's tokens (EOS included)."""
    even = (batch.completion_ids % 2 == 0) & batch.completion_mask
    return even.sum(-1).float() / batch.completion_mask.sum(-1).clamp(min=1).float()


def sequence_logprobs(model, batch: ttrl_fast.RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """[rows, N] log-probs of the sampled completion tokens: decoder hidden states -> fused LM head."""
    prompts = torch.tensor(batch.prompt_ids)[batch.group_index]  # [rows, P], the prompt of each row
    ids = torch.cat([prompts, batch.completion_ids], 1)
    mask = torch.cat([torch.ones_like(prompts, dtype=torch.bool), batch.completion_mask], 1)
    hidden = model.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    targets = batch.completion_ids.masked_fill(~batch.completion_mask, -100)  # -100: no vocabulary pass
    return ttrl_fast.fused_linear_logprobs(hidden[:, prompts.shape[1] - 1:-1], model.lm_head.weight, targets,
                                           temperature=temperature)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="few steps (smoke test)")
    p.add_argument("--steps", type=int, default=None, help="default 40 (10 with --tiny)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    steps = args.steps or (10 if args.tiny else 40)
    model = tiny_model(args.seed)
    reference = copy.deepcopy(model).requires_grad_(False)  # pi_ref: the initial weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    prompts = make_prompts(args.prompts, seed=args.seed)
    sampler = ttrl_fast.RolloutSampler(model, max_rows=args.prompts * args.group_size,
                                       max_seq_len=len(prompts[0]) + args.max_tokens, pad_token_id=PAD,
                                       eos_token_ids=[EOS])
    history = []
    for step in range(steps):
        with torch.no_grad():  # 1 rollouts: G per prompt, with the sampler's (old) log-probs
            batch = sampler.generate(prompts, ttrl_fast.SamplingParams(n=args.group_size, max_tokens=args.max_tokens,
                                                                       seed=args.seed * 100_003 + step))
            ref_logp = sequence_logprobs(reference, batch) if args.beta else None
        rewards = rewards_of(batch)  # 2 rewards, 3 group-relative advantages
        advantages, _ = ttrl_fast.group_advantages(rewards, group_size=args.group_size)
        logp = sequence_logprobs(model, batch)  # 4 one policy update (mu = 1)
        loss, metrics = ttrl_fast.policy_loss(logp, batch.logprobs, advantages, batch.completion_mask,
                                              ref_logp=ref_logp, beta=args.beta, loss_type=args.loss_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        gap = float((logp.detach() - batch.logprobs)[batch.completion_mask].abs().max())
        history.append({"step": step, "loss": loss.item(), "reward": rewards.mean().item(),
                        "kl": float(metrics["kl"]) if args.beta else 0.0, "sampler_gap": gap})
        print(f"step {step:3d}  reward {history[-1]['reward']:.3f}  loss {history[-1]['loss']:+.4f}  "
              f"kl {history[-1]['kl']:.4f}  |logp - sampler logp| {gap:.1e}")
    return {"history": history, "backends": ttrl_fast.available_backends("cpu")}


if __name__ == "__main__":
    main()
