"""Benchmark: GRPO rollouts, ttrl_fast.RolloutSampler against HF generate (sampler.md §4 protocol).

Model: a random LlamaForCausalLM, hidden 256, 4 layers, 8 / 4 heads, vocab 8192 (about 7 M params),
fp32, SDPA, one thread (with 2 threads on a shared box OpenMP oversubscription swamps the signal).
Providers, interleaved round-robin in one process, medians of the rounds:

* ``A``    HF ``generate(num_return_sequences=G, do_sample=True, top_k=0)``: prefills every prompt G
           times, returns no log-probs
* ``A+B``  A plus the teacher-forced scoring forward over B*G*(P+N) tokens that GRPO then needs for
           the old log-probs (TRL's transformers path)
* ``ours`` ``RolloutSampler.generate``: one prefill per prompt, decode with log-probs, the G rows of
           a prompt reading its KV once per group (shared-prefix attention)
* ``ours-copies`` the same with ``decode_attention="model"``: the prompt's KV copied into its G rows and
           read G times per step (the ``copies/ours`` column is what sharing the prefix buys)

Derived columns: f = T_A(1 new token) / T_A(N), the prefill share of A; S* = 1 / (1 - f (G-1)/G), the
speedup prefill sharing alone can give; ``pf`` = the prefill-only ratio T_A(1) / T_ours(1).
The ``eos`` row biases one EOS logit so the stop hazard is about 1/64 per step (geometric lengths):
there HF keeps decoding finished rows while the sampler compacts them away.

    python bench/bench_sampler.py                    # the grid of sampler.md §4
    python bench/bench_sampler.py --quick --no-csv   # tiny model, one config (smoke test)
"""
from __future__ import annotations

import argparse
import datetime
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _harness as H  # noqa: E402

OP = "sampler"
GRID = [(256, 64, 8), (256, 64, 16), (128, 128, 8), (512, 64, 8), (256, 256, 4), (64, 256, 8)]
PROMPTS_PER_CALL = 2
EOS = 1


def make_model(quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512) if quick else \
        dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=8192)
    config = LlamaConfig(**size, max_position_embeddings=2048, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def eos_bias(model, hazard: float):
    """Add a constant to the EOS logit (a forward hook on lm_head, seen by every provider) so that
    P(EOS) is about `hazard` per step on this near-uniform random model."""
    vocab = model.config.vocab_size
    bias = math.log(hazard * (vocab - 1) / (1 - hazard))

    def hook(_module, _inputs, output):
        output[..., EOS] += bias
        return output

    return model.lm_head.register_forward_hook(hook)


def prompts_for(p: int, ragged: bool, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [p, int(0.75 * p)] if ragged else [p] * PROMPTS_PER_CALL
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def providers(model, prompts, n: int, g: int, eos: bool):
    import ttrl_fast

    ids, mask = left_pad(prompts)
    stop = dict(eos_token_id=EOS, min_new_tokens=0) if eos else dict(eos_token_id=None, min_new_tokens=n)

    def hf(new=n):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=new,
                                  num_return_sequences=g, pad_token_id=0, **(stop if new == n else
                                                                             dict(eos_token_id=None, min_new_tokens=new)))

    def hf_and_score():
        out = hf()
        full_mask = torch.cat([mask.repeat_interleave(g, 0), torch.ones_like(out[:, ids.shape[1]:])], dim=1)
        with torch.inference_mode():  # TRL's scoring forward for old log-probs over B*G*(P+N) tokens
            logits = model(input_ids=out, attention_mask=full_mask).logits[:, ids.shape[1] - 1:-1]
            completion = out[:, ids.shape[1]:]
            return torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None])

    rows = len(prompts) * g
    common = dict(max_rows=rows, max_seq_len=ids.shape[1] + n, eos_token_ids=[EOS] if eos else [], pad_token_id=0)
    sampler = ttrl_fast.RolloutSampler(model, **common)
    copies = ttrl_fast.RolloutSampler(model, decode_attention="model", **common)

    def ours(new=n, which=sampler):
        return which.generate(prompts, ttrl_fast.SamplingParams(n=g, max_tokens=new, seed=0))

    return ({"A": hf, "A+B": hf_and_score, "ours": ours, "ours-copies": lambda: ours(which=copies)},
            {"A": lambda: hf(1), "ours": lambda: ours(1)}, sampler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, one small config (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", type=str, default=None, help="one config P,N,G (e.g. 256,64,8)")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = make_model(args.quick)
    vocab = model.config.vocab_size
    configs = [(16, 8, 4, False, False)] if args.quick else (
        [(p, n, g, False, False) for p, n, g in GRID] + [(256, 64, 8, True, False), (256, 256, 8, False, True)])
    if args.only:
        p, n, g = (int(x) for x in args.only.split(","))
        configs = [(p, n, g, False, False)]
    env = H.env_info("cpu")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# {OP}: {env.device_name}, torch {env.torch}, threads={args.threads}, rounds={args.rounds}, "
          f"model hidden={model.config.hidden_size} layers={model.config.num_hidden_layers} vocab={vocab}")
    header = (f"{'P':>9} {'N':>4} {'G':>3} {'A ms':>8} {'A+B ms':>8} {'ours ms':>8} {'tok/s ours':>10} "
              f"{'f':>5} {'S*':>5} {'ours/A':>7} {'/S*':>5} {'ours/A+B':>8} {'pf':>5} {'copies/ours':>11}")
    print(header)
    rows = []
    for p, n, g, ragged, eos in configs:
        prompts = prompts_for(p, ragged, vocab)
        hook = eos_bias(model, 1 / 64) if eos else None
        try:
            full, prefill_only, sampler = providers(model, prompts, n, g, eos)
            full = H.warmup(full, 1, "cpu")
            timings = H.time_interleaved(full, device="cpu", rounds=args.rounds)
            short = H.time_interleaved(H.warmup(prefill_only, 1, "cpu"), device="cpu", rounds=args.rounds)
            batch = sampler.generate(prompts, __import__("ttrl_fast").SamplingParams(n=g, max_tokens=n, seed=0))
        finally:
            if hook is not None:
                hook.remove()
        tokens = int(batch.completion_mask.sum())
        a, ab, ours, copies = (timings[k].p50_ms for k in ("A", "A+B", "ours", "ours-copies"))
        f = short["A"].p50_ms / a
        s_star = 1 / (1 - f * (g - 1) / g)
        label = f"{p}{'r' if ragged else ''}{'eos' if eos else ''}"
        print(f"{label:>9} {n:>4} {g:>3} {a:8.0f} {ab:8.0f} {ours:8.0f} {tokens / ours * 1e3:10.0f} {f:5.2f} "
              f"{s_star:5.2f} {a / ours:7.2f} {a / ours / s_star:5.2f} {ab / ours:8.2f} "
              f"{short['A'].p50_ms / short['ours'].p50_ms:5.1f} {copies / ours:11.2f}" + (f"  mean len {tokens / len(batch.finish_reason):.0f}"
                                                                   if eos else ""))
        for name, t in timings.items():
            rows.append(H.Row(op=OP, provider=name, mode="generate", dtype="float32", shape=f"P{label}_N{n}_G{g}",
                              p50_ms=t.p50_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms,
                              speedup_vs_baseline=a / t.p50_ms, gbps=float("nan"), peak_extra_mb=float("nan"),
                              device=env.device, device_name=env.device_name, torch=env.torch, triton=env.triton,
                              git_sha=env.git_sha, timestamp=stamp))
    if not args.no_csv:
        H.append_csv(rows, args.csv or H.default_csv_path("cpu"))


if __name__ == "__main__":
    main()
