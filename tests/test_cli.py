"""`ttrl-fast adapt` end to end on a tiny model and tokenizer saved to disk (no downloads)."""
import json

import pytest
import torch

from ttrl_fast import cli


def save_tiny_model(path):
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 ?|:.,\n")
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, eos_token_id=2, pad_token_id=0, bos_token_id=1))
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    save_tiny_model(path)
    return path


def write_prompts(path, rubric=False):
    items = [{"id": "a", "prompt": "what is 2 plus 3?"}, {"prompt": "name a red fruit."}]
    if rubric:
        for item in items:
            item["rubric"] = ["object | is it an answer? | yes", "style | is it short? | yes"]
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return path


@pytest.mark.parametrize("monitor", cli.MONITORS)
def test_adapt_runs_every_monitor(model_dir, tmp_path, monitor):
    prompts = write_prompts(tmp_path / "p.jsonl", rubric=monitor == "rubric")
    out = tmp_path / "run"
    code = cli.main(["adapt", "--model", str(model_dir), "--prompts", str(prompts), "--monitor", monitor,
                     "--out", str(out), "--group-size", "2", "--max-new-tokens", "6", "--max-seq-len", "256",
                     "--lr", "1e-3", "--no-progress"])
    assert code == 0
    served = [json.loads(l) for l in (out / "served.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in served) == ["1", "a"]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all("kl" in m for m in metrics)


def test_adapt_resume_and_full_finetune(model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    args = ["adapt", "--model", str(model_dir), "--prompts", str(prompts), "--monitor", "consensus", "--out",
            str(tmp_path / "run"), "--group-size", "2", "--max-new-tokens", "4", "--max-seq-len", "128", "--full",
            "--no-progress", "--episodes", "2"]
    assert cli.main(args + ["--max-steps", "1"]) == 0
    assert cli.main(args + ["--resume"]) == 0
    served = [json.loads(l)["id"] for l in (tmp_path / "run" / "served.jsonl").read_text().splitlines()]
    assert sorted(served) == ["1", "a"]
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_extract_answer():
    assert cli.extract_answer("so \\boxed{42} done") == "42"
    assert cli.extract_answer("it is 3.5 or 7") == "7"
    assert cli.extract_answer("blue\nred\n") == "red"
    assert cli.extract_answer("   ") is None


def test_bad_prompt_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(SystemExit, match="prompt"):
        cli.read_prompts(bad)


@pytest.mark.parametrize("fsdp", [False, True])
def test_adapt_under_torchrun_two_processes(model_dir, tmp_path, fsdp):
    import os
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"what is {i} plus {i}?"}) + "\n"
                               for i in range(4)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ttrl_fast.cli", "adapt", "--model", str(model_dir), "--prompts", str(prompts), "--reward",
           "consensus", "--out", str(out), "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "5",
           "--max-seq-len", "128", "--lr", "1e-3", "--no-progress"] + (["--full", "--fsdp"] if fsdp else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # two steps of 2 prompts (1 per rank), written once by rank 0
    assert [m["prompt_ids"] for m in metrics] == [["q0", "q1"], ["q2", "q3"]]
    served = [json.loads(l) for l in (out / "served.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in served) == ["q0", "q1", "q2", "q3"]  # gathered from both ranks
    assert (out / "checkpoint" / "adapter.safetensors").exists()
