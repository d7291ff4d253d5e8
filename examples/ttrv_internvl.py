"""TTRV on InternVL3: test-time RL on unlabeled multiple-choice image questions. For each question the model
samples G answers; the reward of an answer is the share of the group that gave the same letter minus
0.75 x the normalised entropy of the group's answers (TTRV, methods.md §1.3; with --mode majority it is TTRL's
1[answer == majority]); GRPO + LoRA on the language model updates the policy and the consensus letter is served.

What it shows: VLMAnswerPolicy on transformers' InternVLForConditionalGeneration + AutoProcessor (each image is
encoded once per prompt and its G rows share the prefill; log-probs through the fused LM head), Consensus with a
letter extractor, TestTimeAdapter with serve="consensus", greedy accuracy before and after adaptation (the JSONL's
"answer" labels are read only for that report, never by the loop).

Data: JSONL lines {"id", "image": path relative to the JSONL, "question", "choices": [...], "answer": "B",
"draw": [[shape, colour, [x, y], size], ...]}; when the image file does not exist it is drawn from "draw" with PIL
(examples/data/mcq.jsonl ships 4 such items and no image files).

    python examples/ttrv_internvl.py --model /models/InternVL3-1B-hf --data examples/data/mcq.jsonl \\
        --group-size 8 --episodes 4 --out runs/ttrv_internvl
    python examples/ttrv_internvl.py --model /models/InternVL3-8B-hf --max-tiles 6 --gradient-checkpointing \\
        --out runs/ttrv_8b
    python examples/ttrv_internvl.py --tiny --out /tmp/ttrv_tiny                 # offline smoke run, ~10 s on CPU

Outputs in OUT: metrics.jsonl, served.jsonl (the consensus answer per question), checkpoint/, summary.json
(per-step reward and share of groups without a signal, served answers, greedy accuracy before / after, peak GPU
memory; torch.cuda.max_memory_allocated() is printed every step on CUDA). --tiny builds a random InternVL (28 px images, 4 image tokens, character
tokenizer) offline; a random model cannot answer with a letter, so in that mode the first character of an answer
is mapped onto a choice letter: the groups then disagree and GRPO has a signal (a plumbing check only).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import string
from pathlib import Path

import numpy as np
import torch

from ttrl_fast import AdaptConfig, GRPOConfig, GRPOTrainer, LoraSettings, Prompt, SamplingParams, TestTimeAdapter
from ttrl_fast import monitors as M
from ttrl_fast.policy import VLMAnswerPolicy

HERE = Path(__file__).resolve().parent
LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."


# ---------------------------------------------------------------------------------------------- data
def draw(spec: list, size: int = 224):
    """A white RGB image with the listed shapes: [kind (circle | square | triangle), colour, [x, y], radius]."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    for kind, colour, (x, y), r in spec:
        if kind == "circle":
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == "square":
            pen.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == "triangle":
            pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
        else:
            raise ValueError(f"unknown shape {kind!r}")
    return image


def read_mcq(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Prompts whose text is the question + lettered choices + the answer instruction; meta: image, letters, answer."""
    from PIL import Image

    path = Path(path)
    prompts = []
    for line in path.read_text().splitlines()[:limit]:
        if not line.strip():
            continue
        item = json.loads(line)
        file = path.parent / item["image"]
        image = Image.open(file).convert("RGB") if file.exists() else draw(item["draw"])
        letters = LETTERS[:len(item["choices"])]
        text = "\n".join([item["question"]] + [f"{l}. {c}" for l, c in zip(letters, item["choices"])] + [INSTRUCTION])
        prompts.append(Prompt(id=str(item["id"]), text=text,
                              meta={"image": image, "letters": letters, "answer": item.get("answer")}))
    return prompts


def letter_extractor(letters: str):
    """output -> the chosen letter or None: "B", "(B)", "B. red", "B)", "Answer: B" or "The answer is B"."""
    pattern = re.compile(rf"^\s*\(?([{letters}])(?![A-Za-z])|\b(?i:answer|option)(?: is)?:?\s*\(?([{letters}])\b")

    def extract(output: str):
        match = pattern.search(output if isinstance(output, str) else "")
        return (match.group(1) or match.group(2)) if match else None
    return extract


# ---------------------------------------------------------------------------------------------- models
def tiny_internvl(seed: int = 0):
    """A random InternVLForConditionalGeneration (Qwen2 2 x 32, InternViT 1 layer on 28 px, patch 7 -> 16
    patches -> pixel shuffle -> 4 image tokens) and a character tokenizer. Returns (model, policy kwargs)."""
    import torch.nn.functional as F
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from ttrl_fast.text import CharTokenizer

    tok = CharTokenizer(string.ascii_letters + string.digits + string.punctuation + " \n",
                        specials=("<pad>", "<bos>", "<eos>", "<img>", "<img_start>", "<img_end>"))
    pad, bos, eos, img, start, end = range(6)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=[28, 28], patch_size=[7, 7]),
        text_config=dict(model_type="qwen2", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, initializer_range=0.2),
        image_token_id=img, downsample_ratio=0.5)).eval()

    def build_inputs(prompt: Prompt):
        """[bos, <img_start>, <img> x 4, <img_end>, question]; pixel_values [1, 3, 28, 28] in [-1, 1]."""
        pixels = torch.from_numpy(np.asarray(prompt.meta["image"].convert("RGB"))).permute(2, 0, 1)[None] / 255
        pixels = F.interpolate(pixels, size=(28, 28), mode="bilinear", antialias=True) * 2 - 1
        return [bos, start] + [img] * 4 + [end] + tok.encode(prompt.text), {"pixel_values": pixels}
    return model, dict(tokenizer=tok, build_inputs=build_inputs)


def load_internvl(path: str, dtype: torch.dtype, device: str, max_tiles: int):
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    processor.image_processor.max_patches = max_tiles  # 448 px tiles of 256 tokens each (+1 thumbnail if > 1)
    model = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, dict(processor=processor)


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


def greedy_accuracy(policy, prompts, extract, max_tokens: int) -> tuple[float, list]:
    """One greedy answer per question (T = 0), scored against the labels the adaptation never reads."""
    outputs = policy.generate(prompts, SamplingParams(n=1, max_tokens=max_tokens, temperature=0.0)).outputs
    answers = [extract(o) for o in outputs]
    labelled = [(a, p.meta["answer"]) for a, p in zip(answers, prompts) if p.meta.get("answer")]
    return (sum(a == t for a, t in labelled) / len(labelled) if labelled else math.nan), answers


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="OpenGVLab/InternVL3-1B-hf", help="hub id or local directory (-hf format)")
    p.add_argument("--tiny", action="store_true", help="random tiny InternVL built offline (smoke run)")
    p.add_argument("--data", default=str(HERE / "data" / "mcq.jsonl"))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--mode", default="frequency", choices=("frequency", "majority"),
                   help="frequency: TTRV (with --alpha); majority: TTRL")
    p.add_argument("--alpha", type=float, default=0.75, help="TTRV entropy weight (normalised entropy)")
    p.add_argument("--per-sample-entropy", action="store_true",
                   help="the per-sample entropy variant (the group term cancels in group-normalised advantages)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.001, help="KL coefficient (TTRV / verl default 0.001)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--max-tiles", type=int, default=12, help="InternVL dynamic tiles per image (processor default 12)")
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute decoder activations in the backward (much less memory, ~1/3 more time)")
    p.add_argument("--logprob-rows", type=int, default=None,
                   help="rows per log-prob forward of the no-gradient reference pass")
    p.add_argument("--backward-rows", type=int, default=None,
                   help="rows per forward/backward of the update (same update, fewer activations alive)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "runs" / "ttrv_internvl"))
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    dtype = {"auto": torch.bfloat16 if args.device.startswith("cuda") else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    prompts = read_mcq(args.data, args.limit)
    letters = "".join(sorted(set("".join(p.meta["letters"] for p in prompts))))
    if args.tiny:
        model, options = tiny_internvl(args.seed)
        model = model.to(device=args.device, dtype=dtype)
        # a random model writes random characters: read the first one as a choice (plumbing check only)
        extract = lambda out: letters[ord(out[0]) % len(letters)] if out else None  # noqa: E731
        max_seq_len = 256
    else:
        model, options = load_internvl(args.model, dtype, args.device, args.max_tiles)
        extract, max_seq_len = letter_extractor(letters), args.max_seq_len

    G, pps = args.group_size, args.prompts_per_step
    lora = LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r)
    config = GRPOConfig(group_size=G, backward_rows=args.backward_rows, learning_rate=args.lr, beta=args.beta,
                        temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, lora=lora, seed=args.seed)
    policy = VLMAnswerPolicy(model, lora=lora, max_rows=G * pps, max_seq_len=max_seq_len,
                             logprob_rows=args.logprob_rows, **options)
    if args.gradient_checkpointing:
        checkpoint_decoder(policy, policy.model.get_decoder())
    monitor = M.Consensus(extract, mode=args.mode, entropy_alpha=args.alpha if args.mode == "frequency" else 0.0,
                          per_sample_entropy=args.per_sample_entropy)
    trainer = GRPOTrainer(policy, config, monitor=monitor)
    before, answers_before = greedy_accuracy(policy, prompts, extract, args.max_new_tokens)
    print(f"greedy accuracy before adaptation: {before:.3f}  answers {answers_before}")
    steps = []

    def on_step(record: dict) -> None:
        peak = peak_memory_gib(args.device)
        steps.append({"step": record["step"], "prompt_ids": record["prompt_ids"], "reward_mean": record["reward_mean"],
                      "policy_loss": record["policy_loss"], "frac_zero_std_groups": record["frac_zero_std_groups"],
                      "sampler_logprob_gap": record.get("sampler_logprob_gap"), "peak_memory_gib": peak})
        print(f"step {record['step']:3d} {','.join(record['prompt_ids']):>10}  reward {record['reward_mean']:+.3f}  "
              f"loss {record['policy_loss']:+.4f}  zero-std groups {record['frac_zero_std_groups']:.2f}"
              + ("" if peak is None else f"  peak {peak:.2f} GiB"), flush=True)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    adapter = TestTimeAdapter(trainer, monitor, run_dir=out, extract=extract, on_step=on_step,
                              config=AdaptConfig(prompts_per_step=pps, episodes=args.episodes, max_steps=args.max_steps,
                                                 serve="consensus", seed=args.seed))
    report = adapter.run(prompts, resume=args.resume)
    after, answers_after = greedy_accuracy(policy, prompts, extract, args.max_new_tokens)
    served = {s["id"]: extract(s["output"]) for s in report.served}
    truth = {p.id: p.meta["answer"] for p in prompts if p.meta.get("answer")}
    summary = {"steps": report.steps, "stopped": report.stopped, "history": steps,
               "served_answers": served,
               "served_accuracy": (sum(served.get(k) == v for k, v in truth.items()) / len(truth)) if truth else None,
               "greedy_accuracy_before": before, "greedy_accuracy_after": after,
               "greedy_answers_before": answers_before, "greedy_answers_after": answers_after,
               "peak_memory_gib": peak_memory_gib(args.device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{report.steps} steps ({report.stopped}); greedy accuracy {before:.3f} -> {after:.3f}; "
          f"served (consensus) accuracy {summary['served_accuracy']}")
    return summary


if __name__ == "__main__":
    main()
