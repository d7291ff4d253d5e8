"""Smoke runs of every script in examples/ (each `main([..., "--tiny"])`, imported by path) with checks on what it
produces: the run directory, served images of the model's size, finite losses, the sampler / trainer log-prob
agreement, the fused TRL path, the backend timings, and the 2-process parity checks."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    """Import examples/<name>.py as module `name` (registered, so spawned processes can import it too)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def finite(values) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_meta_ttrl_janus(tmp_path):
    from PIL import Image

    out = tmp_path / "janus"
    summary = load("meta_ttrl_janus").main(["--tiny", "--limit", "2", "--prompts-per-step", "2", "--group-size", "4",
                                            "--logprob-mode", "cfg", "--out", str(out)])
    assert summary["steps"] == 1 and summary["served"] == 2
    for name in ("metrics.jsonl", "served.jsonl", "rubrics.json", "summary.json", "checkpoint/adapter.safetensors"):
        assert (out / name).is_file(), name
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert finite([m["policy_loss"] for m in metrics]) and finite([m["reward_mean"] for m in metrics])
    assert all(m["sampler_logprob_gap"] < 1e-4 for m in metrics)  # trainer log-probs = the CFG sampler's
    assert all(0 < m["reward_mean"] < 1 for m in metrics)  # a geometric mean of probabilities
    for prompt_id in ("color_1", "color_2"):  # the served image of each prompt, at the VQ decoder's size
        with Image.open(out / "images" / f"{prompt_id}.png") as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    rubrics = json.loads((out / "rubrics.json").read_text())
    assert set(rubrics) == {"color_1", "color_2"}
    # the random critic writes no parseable rubric: SelfRubric falls back to the holistic question, and says so
    assert all(r["fell_back"] and r["critic_text"] is not None and len(r["items"]) == 1 for r in rubrics.values())


def test_meta_ttrl_janus_static_rubric(tmp_path):
    summary = load("meta_ttrl_janus").main(["--tiny", "--limit", "1", "--group-size", "2", "--rubric", "static",
                                            "--out", str(tmp_path)])
    rubric = json.loads((tmp_path / "rubrics.json").read_text())["color_1"]
    assert not rubric["fell_back"] and len(rubric["items"]) == 5  # the JSONL's five items
    assert summary["image_size"] == [32, 32, 3] and finite([summary["history"][0]["reward_mean"]])


def test_gradient_checkpointing_keeps_values_and_gradients():
    """The examples' --gradient-checkpointing: same log-probs and LoRA gradients, far fewer saved activations, and
    the decoder back in eval mode (so the sampler keeps its KV cache)."""
    import torch

    from ttrl_fast import LoraSettings, Prompt, SamplingParams
    from ttrl_fast.policy import JanusImagePolicy

    module = load("meta_ttrl_janus")
    results = []
    for checkpointed in (False, True):
        model, options = module.tiny_janus(0)
        policy = JanusImagePolicy(model, lora=LoraSettings(r=4), max_rows=8, logprob_mode="cfg", **options)
        decoder = policy.janus.model.language_model
        if checkpointed:
            module.checkpoint_decoder(policy, decoder)
        with torch.no_grad():
            for name, param in policy.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)  # a non-zero adapter: every LoRA matrix gets a gradient
        rollouts = policy.generate([Prompt("a", "a red cube"), Prompt("b", "two dogs")], SamplingParams(n=2, seed=1))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            logp = policy.token_logprobs(rollouts)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        grads = {n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None}
        results.append((rollouts.batch.completion_ids, logp.detach(), grads, sum(saved), decoder.training))
    plain, checkpointed = results
    assert torch.equal(plain[0], checkpointed[0]) and torch.equal(plain[1], checkpointed[1])
    assert plain[2].keys() == checkpointed[2].keys() and len(plain[2]) == 2 * 2 * 7  # lora A, B x 2 layers x 7
    for name, grad in plain[2].items():
        torch.testing.assert_close(checkpointed[2][name], grad, rtol=1e-5, atol=1e-7)
    assert checkpointed[3] < plain[3] / 4 and not checkpointed[4]


def test_ttrv_internvl(tmp_path):
    summary = load("ttrv_internvl").main(["--tiny", "--group-size", "4", "--episodes", "1", "--lr", "1e-2",
                                          "--gradient-checkpointing", "--out", str(tmp_path)])
    assert summary["steps"] == 4  # the four shipped questions, one per step
    for name in ("metrics.jsonl", "served.jsonl", "summary.json", "checkpoint/adapter.safetensors"):
        assert (tmp_path / name).is_file(), name
    history = summary["history"]
    assert finite([h["policy_loss"] for h in history]) and all(h["sampler_logprob_gap"] < 1e-4 for h in history)
    assert any(h["frac_zero_std_groups"] < 1 for h in history)  # the groups disagree: GRPO had a signal
    assert set(summary["served_answers"]) == {"colour", "shape", "count", "spatial"}
    assert all(a in "ABCD" for a in summary["served_answers"].values())
    assert 0 <= summary["greedy_accuracy_before"] <= 1 and 0 <= summary["greedy_accuracy_after"] <= 1


def test_ttrv_letter_extractor_and_drawn_images():
    module = load("ttrv_internvl")
    extract = module.letter_extractor("ABCD")
    answers = {"B": "B", "(C) red": "C", " D\n": "D", "The answer is A.": "A", "Answer: B": "B", "Because": None,
               "E": None, "": None}
    assert {text: extract(text) for text in answers} == answers
    prompts = module.read_mcq(EXAMPLES / "data" / "mcq.jsonl")
    assert [p.meta["answer"] for p in prompts] == ["B", "C", "C", "C"]
    assert all(p.meta["image"].size == (224, 224) and "D. " in p.text for p in prompts)


@pytest.mark.parametrize("rollout", ["trl", "ttrl_fast"])
def test_trl_drop_in(tmp_path, rollout):
    pytest.importorskip("trl")
    summary = load("trl_drop_in").main(["--tiny", "--max-steps", "2", "--batch-size", "4",
                                        "--max-completion-length", "6", "--lr", "0.05", "--rollout", rollout,
                                        "--out", str(tmp_path)])
    assert summary["trainer"] == "ttrl_fast.compat.trl.GRPOTrainer" and summary["fused_loss"]
    assert len(summary["losses"]) == 2 and finite(summary["losses"]) and finite(summary["rewards"])
    assert summary["rollout_calls"] == (2 if rollout == "ttrl_fast" else 0)
    if rollout == "trl":  # the one-import change: stock TRL gives the same losses
        stock = load("trl_drop_in").main(["--tiny", "--max-steps", "2", "--batch-size", "4", "--stock",
                                          "--max-completion-length", "6", "--lr", "0.05", "--out", str(tmp_path / "s")])
        assert stock["trainer"] == "trl.trainer.grpo_trainer.GRPOTrainer"
        assert stock["losses"] == pytest.approx(summary["losses"], rel=1e-4, abs=1e-6)


def test_custom_loop_learns():
    history = load("custom_loop").main(["--tiny"])["history"]
    assert len(history) == 10 and finite([h["loss"] for h in history])
    assert max(h["sampler_gap"] for h in history) < 1e-4  # fused-head log-probs = the sampler's
    first, last = (sum(h["reward"] for h in part) / 3 for part in (history[:3], history[-3:]))
    assert last > first + 0.1, (first, last)  # the even-token reward climbs


def test_microbenchmark():
    rows = load("microbenchmark").main(["--tiny", "--rounds", "2"])
    ops = {r["op"] for r in rows}
    assert ops == {"selective_log_softmax", "fused_linear_logprobs", "policy_loss"}
    for op in ops:
        providers = {r["provider"] for r in rows if r["op"] == op}
        assert "eager" in providers and "ttrl_fast:reference" in providers
    for r in rows:
        assert r["median_ms"] > 0 and r["calls"] >= 2
        assert r["max_abs_err_vs_eager"] < 1e-4, r  # fp32: every backend agrees with eager (values, gradients)


def test_two_process_parity(tmp_path):
    summary = load("two_process").main(["--tiny", "--out", str(tmp_path)])
    assert summary["world"] == 2 and len(summary["history"]) == 3
    assert summary["grad_rel_err_vs_one_process"] < 1e-5  # all-reduced grads = one process on the union
    assert summary["param_max_abs_diff"] == 0.0 and summary["same_history_on_all_ranks"] and summary["parity_ok"]
    # step 0 of the 2-process run (both ranks' shards) is step 0 of the one-process loop on all four prompts
    single = load("custom_loop").main(["--steps", "1"])["history"][0]
    assert summary["history"][0]["reward"] == pytest.approx(single["reward"], abs=1e-6)
    assert summary["history"][0]["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
