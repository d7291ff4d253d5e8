"""The GridWorld unified model: one tiny HF Llama over the shared vocabulary, pre-trained so that it
understands every object (VQA on random scenes) but generates the rare bindings poorly (long-tail
generation data). Deterministic given the seed; saved as a small safetensors file."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ttrl_fast.demo import gridworld as W

# 192 understanding rows per step (the prototype's 96 left the critic too weak on near misses: self-reward
# AUROC 0.74-0.90 on the generator's images and Meta-TTRL gains of -18..+19 points; README's demo section)
PRETRAIN = dict(steps=1500, lr=1e-3, vqa_rows=192, gen_rows=64, rare_fraction=0.03)
SHIPPED = Path(__file__).resolve().parent / "checkpoints"  # seeds 0-2, produced by `python -m` this module


SIZE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            tie_word_embeddings=True)


def build_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=W.TOKENIZER.vocab_size, **SIZE,
                         max_position_embeddings=64, attn_implementation="sdpa",
                         bos_token_id=W.TOKENIZER.bos_token_id, eos_token_id=W.TOKENIZER.eos_token_id,
                         pad_token_id=W.TOKENIZER.pad_token_id)
    return LlamaForCausalLM(config)


def _batch(rows: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 outside the supervised positions)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), W.TOKENIZER.pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    labels = torch.full((len(rows), width), -100, dtype=torch.int64)
    for i, (row, target) in enumerate(zip(rows, targets)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        for pos, tok in target:
            labels[i, pos] = tok
    return ids, mask, labels


def training_batch(rng: random.Random, vqa_rows: int, gen_rows: int, rare_fraction: float):
    rows, targets = [], []
    for _ in range(vqa_rows):
        grid, question, answer = W.vqa_example(rng)
        row = W.understanding_row(grid, question)
        targets.append([(len(row), W.YES if answer else W.NO)])  # label at the answer position
        rows.append(row + [W.YES if answer else W.NO])
    for _ in range(gen_rows):
        spec = W.generation_spec(rng, rare_fraction)
        prefix = W.generation_row(spec)
        image = [W.CELL_IDS[v] for v in W.target_image(spec, rng)]
        rows.append(prefix + image)
        targets.append([(len(prefix) + k, tok) for k, tok in enumerate(image)])
    return _batch(rows, targets)


def pretrain(seed: int, *, steps: int | None = None, progress: Callable[[int], None] | None = None
             ) -> LlamaForCausalLM:
    """Pre-train from scratch (AdamW, cosine-free constant lr): next-token loss on image tokens of the
    generation rows and on the answer token of the understanding rows."""
    settings = dict(PRETRAIN, steps=steps or PRETRAIN["steps"])
    model = build_model(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    model.train()
    for step in range(settings["steps"]):
        ids, _, labels = training_batch(rng, settings["vqa_rows"], settings["gen_rows"],
                                           settings["rare_fraction"])
        # right padding after the supervised tokens: causal attention alone keeps them out of every label
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step)
    return model.eval()


def checkpoint_path(directory: str | Path, seed: int) -> Path:
    return Path(directory) / f"gridworld_seed{seed}.safetensors"


def load_or_pretrain(seed: int, directory: str | Path | None, *, steps: int | None = None,
                     progress: Callable[[int], None] | None = None) -> tuple[LlamaForCausalLM, float]:
    """The pre-trained model of `seed` (loaded from `directory` when present, else trained and saved
    there), and the seconds spent pre-training (0 when loaded)."""
    from safetensors.torch import load_file, save_file

    path = None if directory is None else checkpoint_path(directory, seed)
    if steps is not None and path is not None:
        path = path.with_name(path.stem + f"_steps{steps}.safetensors")
    if path is not None and path.exists():
        model = build_model(seed)
        tied = model.config.tie_word_embeddings
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
        if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
            raise ValueError(f"{path} does not match the GridWorld model (missing {missing}, unexpected {unexpected})"
                             f": delete it to pre-train again")
        if tied:
            model.tie_weights()  # a tied lm_head is not stored twice
        return model.eval(), 0.0
    start = time.perf_counter()
    model = pretrain(seed, steps=steps, progress=progress)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tied = model.config.tie_word_embeddings
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        save_file(state, str(path))
    return model, seconds


def main(argv=None) -> None:
    """Re-create the shipped checkpoints: python -m ttrl_fast.demo.grid_model [--seeds 0 1 2] [--out DIR]."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(SHIPPED))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        path = checkpoint_path(args.out, seed)
        if path.exists():
            path.unlink()
        _, seconds = load_or_pretrain(seed, args.out)
        print(f"seed {seed}: {seconds:.0f} s -> {path}")


if __name__ == "__main__":
    main()
