"""The consensus world (TTRL / TTRV on 2-digit addition, methods.md §4 Design B), quick mode, one seed.

Margins, from quick mode on seeds 0-7 (1 torch thread, the demo's default, on a shared 2-core machine); gains are pass@1 after - before
on the adaptation stream (adapt) and on held-out problems (held):
  * initial model: pass@1 0.48-0.58 on adapt, maj@16 0.75-0.97 (maj - pass@1 >= 0.26 on every seed);
  * ttrl gain: adapt +0.20 .. +0.44, held +0.23 .. +0.34;
  * ttrv gain: adapt +0.14 .. +0.44;
  * oracle gain: adapt +0.32 .. +0.44;
  * random gain: adapt -0.38 .. +0.13 (a random walk; mostly harmful); ttrl - random >= +0.24 on adapt;
  * evaluation noise (same model, two sampling seeds): |delta pass@1| <= 0.04 (binomial s.e. ~0.02).
The thresholds below sit well inside those ranges and >= 5 s.e. of the evaluation noise away from 0.
"""
import json
import math

import pytest
import torch

from ttrl_fast.demo import consensus_world as cw
from ttrl_fast.tta.types import Prompt


def test_task_pieces():
    assert cw.extract_answer("1 2 5", 3) == "125"
    assert cw.extract_answer("1 2", 3) is None and cw.extract_answer("1 + 5", 3) is None
    assert cw.extract_answer(None, 3) is None
    prompt = Prompt("p", cw.problem_text(57, 68), meta={"answer": "125"})
    assert prompt.text == "5 7 + 6 8 ="
    assert cw.check(prompt, "1 2 5") == 1.0 and cw.check(prompt, "1 1 5") == 0.0
    world = cw.make_world(cw.QUICK, 0)
    hard = {p.text for p in world.adapt + world.heldout}
    assert len(hard) == cw.QUICK.n_adapt + cw.QUICK.n_heldout  # disjoint
    for p in world.adapt + world.heldout:  # every column carries
        a, b = (int("".join(t.split())) for t in p.text[:-2].split(" + "))
        assert a % 10 + b % 10 >= 10 and a + b >= 100
    # the evaluation problems are not in the pre-training corpus (any stated sum)
    corpus = {tuple(r[:world.prompt_length].tolist()) for r in world.train_rows[:, 0]}
    assert not any(tuple(cw.encode_prompt(p.text)) in corpus for p in world.adapt + world.heldout)
    assert all(tuple(cw.encode_prompt(p.text)) in corpus for p in world.easy)
    again = cw.make_world(cw.QUICK, 0)
    assert [p.text for p in again.adapt] == [p.text for p in world.adapt]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("consensus")
    threads = torch.get_num_threads()
    results = cw.run_consensus_demo(out_dir=out, quick=True, seeds=(0,), progress=False)  # 1 thread, restored
    assert torch.get_num_threads() == threads
    return results, out


def test_results_file_and_shape(quick):
    results, out = quick
    saved = json.loads((out / "consensus_results.json").read_text())
    for method in cw.METHODS:
        for split in ("adapt", "heldout"):
            assert 0.0 <= results[method][split] <= 1.0
            assert saved[method][split] == pytest.approx(results[method][split])
    assert set(results["maj_at_n"]) == set(cw.METHODS)
    assert 0.0 <= results["label_accuracy"]["before"] <= 1.0
    history = results["per_seed"][0]["methods"]["ttrl"]["history"]
    assert len(history) == cw.QUICK.episodes * math.ceil(cw.QUICK.n_adapt / cw.QUICK.prompts_per_step)
    assert all("label_accuracy" in r and math.isfinite(r["kl"]) for r in history)
    # TTRV's group entropy term cancels in the group-normalised advantages (Consensus docstring)
    assert results["ttrv_entropy_term_effect"] < 1e-4


def test_precondition_and_noise(quick):
    results, _ = quick
    before, majority = results["none"]["adapt"], results["maj_at_n"]["none"]["adapt"]
    assert 0.3 <= before <= 0.7, before
    assert majority - before >= 0.15, (before, majority)  # the majority is right more often than a sample
    assert results["label_accuracy"]["before"] >= before + 0.15
    for split in ("adapt", "heldout"):
        noise = results["per_seed"][0]["eval_noise"][split]
        assert abs(noise["pass1_diff"]) <= 0.06 and noise["pass1_se"] <= 0.03, noise


def test_ttrl_beats_the_controls(quick):
    results, _ = quick
    gain = results["gain"]
    # TTRL: pass@1 rises towards the initial maj@n, on the stream and on unseen problems alike
    assert gain["ttrl"]["adapt"] >= 0.15, gain
    assert gain["ttrl"]["heldout"] >= 0.12, gain
    assert gain["ttrv"]["adapt"] >= 0.08, gain
    # random reward: no such gain
    assert gain["ttrl"]["adapt"] - gain["random"]["adapt"] >= 0.12, gain
    assert gain["ttrl"]["heldout"] - gain["random"]["heldout"] >= 0.08, gain
    # the oracle (ground-truth reward) is an upper bound of sorts: at least as good as no adaptation
    # by a wide margin, and not clearly worse than TTRL
    assert gain["oracle"]["adapt"] >= 0.15, gain
    assert results["oracle"]["adapt"] >= results["ttrl"]["adapt"] - 0.08
    # the pseudo-labels TTRL trained on were mostly right
    assert results["label_accuracy"]["ttrl"]["last_episode"] >= 0.75
