"""Meta-TTRL on Janus-Pro: the model draws images for unlabeled compositional prompts, writes a yes/no rubric for
each prompt, answers the rubric about its own images with its own (frozen, initial) understanding side, and
updates its image generator with GRPO + LoRA on those self-assigned rewards (methods.md §1.1, §1.6).

What it shows: JanusImagePolicy (CFG sampler, w = 5; log-probs "cond" = T2I-R1's conditional row, or "cfg" =
the guided distribution the sampler drew from), RubricVQA with SelfRubric (the critic writes
`dimension | question | yes` lines; unparseable answers fall back to one holistic question) or StaticRubric
(the "rubric" field of the JSONL), GRPOTrainer and TestTimeAdapter with a durable run directory:

    OUT/metrics.jsonl  one line per GRPO step (reward, loss, KL, clip ratio, grad norm, sampler gap, lr)
    OUT/served.jsonl   per prompt: the served sample (best-of-G by the self-reward), its reward
    OUT/images/ID.png  the served image itself (--save-groups: all G samples of that step in OUT/groups/)
    OUT/rubrics.json   each prompt's rubric (self-written or static) and whether the self-written one fell back
    OUT/summary.json   per-step rewards, the critic's yes+no probability mass, peak GPU memory
    OUT/checkpoint/    LoRA weights + optimizer (resume with --resume)

Commands (weights: a hub id or a local directory with config.json, the safetensors and the processor files):

    python examples/meta_ttrl_janus.py --model /models/Janus-Pro-7B --prompts examples/data/t2i_prompts.jsonl \\
        --rubric self --group-size 8 --episodes 2 --logprob-mode cond --out runs/meta_ttrl_janus
    python examples/meta_ttrl_janus.py --model /models/Janus-Pro-7B --rubric static --logprob-mode cfg \\
        --gradient-checkpointing --out runs/meta_ttrl_janus_static
    python examples/meta_ttrl_janus.py --tiny --out /tmp/meta_ttrl_tiny          # offline smoke run, ~10 s on CPU

On CUDA the model runs in bfloat16 (LoRA weights and Adam states stay fp32) and every step prints
torch.cuda.max_memory_allocated(); docs/multimodal.md has the memory estimates. --tiny builds a random
~0.4 M-parameter Janus (32 px images of 16 tokens) with a character-level encoder instead of loading weights:
it checks the plumbing, not image quality (its self-written rubrics are gibberish, so they fall back).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from ttrl_fast import AdaptConfig, GRPOConfig, GRPOTrainer, LoraSettings, TestTimeAdapter
from ttrl_fast import monitors as M
from ttrl_fast.cli import read_prompts
from ttrl_fast.policy import JanusImagePolicy

HERE = Path(__file__).resolve().parent
# the critic writes its rubric inside Janus' chat format (SelfRubric's default instruction as the user turn)
RUBRIC_TEMPLATE = "<|User|>: " + M.SelfRubric.TEMPLATE.rstrip("\n") + "\n\n<|Assistant|>:"


# ---------------------------------------------------------------------------------------------- models
def tiny_janus(seed: int = 0):
    """A random JanusForConditionalGeneration built offline: Llama 2 x 32 over a 128-token text vocabulary,
    SigLIP 1 layer on 32 px (patch 8), VQ codebook 64 x 8 decoding a 4 x 4 token grid to 32 x 32 pixels.
    Returns (model, policy keyword arguments): a character encoder/decoder and the special ids."""
    from torch import nn
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    pad, bos, eos, boi, eoi, img, yes, no = range(8)
    vocab = 128
    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                               patch_size=8, projection_dim=32, mlp_ratio=2.0, num_image_tokens=16)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=32,
                          image_token_embed_dim=32)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=img))
    with torch.no_grad():  # peakier than the default init, so the G samples of a prompt differ visibly
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0, 0.1)

    def encode(text_: str) -> list[int]:  # one id per character, above the special ids
        return [8 + ord(c) % (vocab - 8) for c in text_]

    def decode(ids) -> str:
        return "".join(chr(32 + (i - 8) % 95) for i in ids if i >= 8)

    options = dict(encode=encode, decode=decode, bos_token_id=bos, pad_token_id=pad, image_start_token_id=boi,
                   yes_token=yes, no_token=no,
                   critic_options=dict(image_start_token_id=boi, image_end_token_id=eoi, eos_token_id=eos))
    return model.eval(), options


def load_janus(path: str, dtype: torch.dtype, device: str, yes_token: str, no_token: str):
    """transformers' JanusForConditionalGeneration + JanusProcessor from a hub id or a local directory."""
    from transformers import JanusForConditionalGeneration, JanusProcessor

    processor = JanusProcessor.from_pretrained(path)
    model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = processor.tokenizer
    # the understanding prompt as the processor builds it: <begin_of_image> <image> x 576 <end_of_image>;
    # the critic's free text (rubric writing) stops at the tokenizer's EOS
    critic = dict(image_start_token_id=tok.convert_tokens_to_ids(tok.boi_token),
                  image_end_token_id=tok.convert_tokens_to_ids(tok.eoi_token), eos_token_id=tok.eos_token_id)
    return model, dict(tokenizer=processor, yes_token=yes_token, no_token=no_token, critic_options=critic)


# ---------------------------------------------------------------------------------------------- helpers
class Recorder:
    """Wraps the monitor and keeps the last scored rollouts, so the served images can be written to disk."""

    def __init__(self, monitor, critic):
        self.monitor, self.critic = monitor, critic
        self.rollouts = self.rewards = None
        self.yes_no_mass = math.nan

    def prepare(self, prompts):
        self.monitor.prepare(prompts)

    def score(self, rollouts):
        self.rollouts, self.rewards = rollouts, self.monitor.score(rollouts)
        mass = getattr(self.critic, "last_yes_no_mass", None)  # P(yes) + P(no): low = wrong answer tokens
        self.yes_no_mass = float(mass.mean()) if mass is not None and mass.numel() else math.nan
        return self.rewards


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)


def checkpoint_decoder(policy, decoder) -> None:
    """--gradient-checkpointing: the decoder recomputes each layer in the backward instead of keeping its activations
    (saved: ~2 x hidden bytes per token and layer instead of ~40 x hidden + 10 x intermediate, docs/multimodal.md).
    transformers checkpoints only in train mode, and in train mode it would also drop the sampler's KV cache, so the
    decoder is in train mode only inside the policy's differentiable log-prob forward (its dropout is 0)."""
    decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    forward = policy.token_logprobs

    def token_logprobs(rollouts, rows=None, *, reference=False):
        if reference:
            return forward(rollouts, rows, reference=True)
        decoder.train()
        try:
            return forward(rollouts, rows)
        finally:
            decoder.eval()
    policy.token_logprobs = token_logprobs


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="deepseek-community/Janus-Pro-7B", help="hub id or local directory")
    p.add_argument("--tiny", action="store_true", help="random tiny Janus built offline (smoke run)")
    p.add_argument("--prompts", default=str(HERE / "data" / "t2i_prompts.jsonl"),
                   help='JSONL, one {"prompt": ..., "id": ..., "rubric": [...]} per line')
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument("--rubric", default="self", choices=("self", "static"),
                   help="self: the frozen critic writes each rubric; static: the JSONL's rubric field")
    p.add_argument("--critic", default="frozen_init", choices=("frozen_init", "live"))
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.01, help="KL coefficient (T2I-R1: 0.01)")
    p.add_argument("--cfg-weight", type=float, default=5.0)
    p.add_argument("--logprob-mode", default="cond", choices=("cond", "cfg"))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute decoder activations in the backward (much less memory, ~1/3 more time)")
    p.add_argument("--logprob-rows", type=int, default=None,
                   help="rows per log-prob forward of the no-gradient reference pass")
    p.add_argument("--backward-rows", type=int, default=None,
                   help="rows per forward/backward of the update (same update, fewer activations alive)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="sampler KV-cache positions per row (default 576 + 256; prompt + 576 image tokens must fit)")
    p.add_argument("--rubric-max-tokens", type=int, default=None, help="default 256 (24 with --tiny)")
    p.add_argument("--yes-token", default=" Yes", help="the critic's answer tokens (first token of each string)")
    p.add_argument("--no-token", default=" No")
    p.add_argument("--save-groups", action="store_true", help="also save all G images of each served step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "runs" / "meta_ttrl_janus"))
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    dtype = {"auto": torch.bfloat16 if args.device.startswith("cuda") else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    prompts = read_prompts(args.prompts)[:args.limit]
    if args.tiny:
        model, options = tiny_janus(args.seed)
        model = model.to(device=args.device, dtype=dtype)
    else:
        model, options = load_janus(args.model, dtype, args.device, args.yes_token, args.no_token)

    G, pps = args.group_size, args.prompts_per_step
    lora = LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r)
    config = GRPOConfig(group_size=G, backward_rows=args.backward_rows, learning_rate=args.lr, beta=args.beta,
                        temperature=args.temperature,
                        lora=lora, seed=args.seed)
    policy = JanusImagePolicy(model, lora=lora, cfg_weight=args.cfg_weight, logprob_mode=args.logprob_mode,
                              max_rows=2 * G * pps, max_seq_len=args.max_seq_len, logprob_rows=args.logprob_rows,
                              **options)
    if args.gradient_checkpointing:
        checkpoint_decoder(policy, policy.janus.model.language_model)
    critic = policy.critic(args.critic)
    if args.rubric == "static":
        builder = M.StaticRubric()
    else:
        builder = M.SelfRubric(critic, template=RUBRIC_TEMPLATE,
                               max_tokens=args.rubric_max_tokens or (24 if args.tiny else 256))
    monitor = Recorder(M.RubricVQA(critic, builder), critic)
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    steps = []

    def on_step(record: dict) -> None:
        rollouts, rewards = monitor.rollouts, monitor.rewards
        if record["episode"] == 0:  # the adapter serves each prompt once, best-of-G by the self-reward
            for b, row in enumerate(M.served_index(rollouts, rewards)):
                save_png(rollouts.outputs[row], out / "images" / f"{rollouts.prompts[b].id}.png")
                if args.save_groups:
                    for g in range(G):
                        r = b * G + g
                        save_png(rollouts.outputs[r], out / "groups" /
                                 f"{rollouts.prompts[b].id}_g{g}_r{float(rewards.rewards[r]):.3f}.png")
        peak = peak_memory_gib(args.device)
        steps.append({"step": record["step"], "prompt_ids": record["prompt_ids"], "reward_mean": record["reward_mean"],
                      "policy_loss": record["policy_loss"], "kl": record.get("kl"),
                      "critic_yes_no_mass": monitor.yes_no_mass, "peak_memory_gib": peak})
        print(f"step {record['step']:3d} {','.join(record['prompt_ids']):>16}  reward {record['reward_mean']:.3f}  "
              f"loss {record['policy_loss']:+.4f}  kl {record.get('kl', 0.0):.4f}  "
              f"P(yes)+P(no) {monitor.yes_no_mass:.2f}" + ("" if peak is None else f"  peak {peak:.2f} GiB"),
              flush=True)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    adapter = TestTimeAdapter(trainer, monitor, run_dir=out, on_step=on_step,
                              config=AdaptConfig(prompts_per_step=pps, episodes=args.episodes, max_steps=args.max_steps,
                                                 serve="best", seed=args.seed))
    report = adapter.run(prompts, resume=args.resume)

    visited = {pid for record in report.history for pid in record["prompt_ids"]}
    rubrics = {p.id: {"prompt": p.text, "items": [[i.dim, i.question, i.target] for i in builder.build(p)],
                      "fell_back": p.id in getattr(builder, "fallback_ids", ()),
                      "critic_text": getattr(builder, "texts", {}).get(p.id)} for p in prompts if p.id in visited}
    (out / "rubrics.json").write_text(json.dumps(rubrics, indent=1))
    summary = {"steps": report.steps, "stopped": report.stopped, "served": len(report.served),
               "image_size": list(np.asarray(monitor.rollouts.outputs[0]).shape) if monitor.rollouts else None,
               "peak_memory_gib": peak_memory_gib(args.device), "history": steps,
               "self_rubric_fallbacks": sorted(getattr(builder, "fallback_ids", ()))}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    first, last = steps[0]["reward_mean"] if steps else math.nan, steps[-1]["reward_mean"] if steps else math.nan
    print(f"{report.steps} steps ({report.stopped}); self-reward {first:.3f} -> {last:.3f}; "
          f"{len(report.served)} images served in {out / 'images'}")
    return summary


if __name__ == "__main__":
    main()
