"""VLLMRolloutSampler's glue, driven by a stand-in `vllm` module (vLLM needs CUDA): the engine here is
ttrl_fast's own RolloutSampler wrapped in vLLM's documented output types (RequestOutput.outputs[i] with
index, token_ids, logprobs = [{token: Logprob(logprob)}], finish_reason). Checks the parameter mapping,
the RolloutBatch layout against the built-in sampler, the log-prob mode guard and weight sync."""
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from ttrl_fast import RolloutSampler, SamplingParams
from ttrl_fast.sampler.vllm_backend import VLLMRolloutSampler

from .conftest import PROMPTS, tiny_model


@dataclass
class Logprob:
    logprob: float


class StandInLLM:
    """generate(prompts=[{"prompt_token_ids": ids}], sampling_params) like vllm.LLM, sampling with ours."""

    def __init__(self, model, mode="processed_logprobs"):
        self.inner = RolloutSampler(model, max_rows=32, max_seq_len=64, eos_token_ids=[3], pad_token_id=0)
        self.loaded = None
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load))
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(logprobs_mode=mode),
                                                model_executor=types.SimpleNamespace(
                                                    driver_worker=types.SimpleNamespace(model_runner=runner)))

    def _load(self, items):
        self.loaded = {k: v.detach().clone() for k, v in items}  # vLLM copies into its own buffers

    def generate(self, prompts, sampling_params, use_tqdm=True):
        sp = sampling_params
        ours = SamplingParams(n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=max(sp.top_k, 0),
                              max_tokens=sp.max_tokens, seed=sp.seed, stop_token_ids=tuple(sp.stop_token_ids))
        batch = self.inner.generate([p["prompt_token_ids"] for p in prompts], ours)
        results = []
        for b in range(len(prompts)):
            outs = []
            for g in reversed(range(sp.n)):  # out of order on purpose: the backend must sort by index
                row = b * sp.n + g
                ids = batch.completions()[row]
                steps = [{t: Logprob(float(batch.logprobs[row, k]))} for k, t in enumerate(ids)]
                outs.append(types.SimpleNamespace(index=g, token_ids=ids, logprobs=steps,
                                                  finish_reason=batch.finish_reason[row]))
            results.append(types.SimpleNamespace(outputs=outs))
        return results


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_same_rollout_batch_as_the_built_in_sampler(fake_vllm):
    model = tiny_model()
    params = SamplingParams(n=3, max_tokens=12, seed=4, temperature=0.8)
    theirs = VLLMRolloutSampler(StandInLLM(model)).generate(PROMPTS, params)
    ours = RolloutSampler(model, max_rows=32, max_seq_len=64, eos_token_ids=[3], pad_token_id=0).generate(PROMPTS,
                                                                                                       params)
    width = ours.completion_ids.shape[1]
    assert torch.equal(theirs.completion_ids[:, :width], ours.completion_ids)
    assert torch.equal(theirs.completion_mask[:, :width], ours.completion_mask)
    torch.testing.assert_close(theirs.logprobs[:, :width], ours.logprobs)
    assert theirs.finish_reason == ours.finish_reason
    assert torch.equal(theirs.group_index, ours.group_index) and theirs.group_size == 3
    assert torch.equal(theirs.prompt_lengths, ours.prompt_lengths)


def test_parameter_mapping(fake_vllm):
    sampler = VLLMRolloutSampler(StandInLLM(tiny_model()), allow_mismatch=True)
    sp = sampler.vllm_params(SamplingParams(n=4, top_k=0, top_p=0.9, min_p=0.05, max_tokens=7, min_tokens=2,
                                            stop_token_ids=(5,), ignore_eos=True, seed=11, allowed_token_ids=(1, 2)))
    assert (sp.n, sp.top_k, sp.top_p, sp.min_p, sp.max_tokens, sp.min_tokens) == (4, -1, 0.9, 0.05, 7, 2)
    assert sp.stop_token_ids == [5] and sp.ignore_eos and sp.seed == 11 and sp.allowed_token_ids == [1, 2]
    assert sp.logprobs == 0  # the sampled token's log-prob only


def test_refuses_log_probs_that_are_not_the_trainers(fake_vllm):
    raw = VLLMRolloutSampler(StandInLLM(tiny_model(), mode="raw_logprobs"))
    with pytest.raises(ValueError, match="before temperature"):
        raw.generate(PROMPTS, SamplingParams(n=2, temperature=0.7))
    processed = VLLMRolloutSampler(StandInLLM(tiny_model()))
    with pytest.raises(ValueError, match="truncated distribution"):
        processed.generate(PROMPTS, SamplingParams(n=2, top_p=0.9))
    raw.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_tokens=3))  # T = 1: raw is exact


def test_sync_weights_merges_lora(fake_vllm):
    from ttrl_fast.grpo import LoraSettings
    from ttrl_fast.policy import add_lora

    model = add_lora(tiny_model(), LoraSettings(r=2))
    llm = StandInLLM(tiny_model())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)  # a non-zero adapter
    VLLMRolloutSampler(llm).sync_weights(model)
    base = tiny_model().state_dict()
    assert set(llm.loaded) == set(base)  # engine names, adapters folded in
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(llm.loaded[name], base[name])
    after = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(after, base[name])  # unmerged afterwards: training continues on the adapter


def test_policy_rolls_out_through_the_engine_and_syncs_it(fake_vllm):
    from ttrl_fast.policy import HFCausalLMPolicy
    from ttrl_fast.tta import Prompt

    model = tiny_model()
    llm = StandInLLM(tiny_model(seed=1))  # the engine starts with other weights: sync must fix that
    policy = HFCausalLMPolicy(model, None, lora=None, frozen_copy=False,
                              rollout_sampler=VLLMRolloutSampler(llm, pad_token_id=0))
    rollouts = policy.generate([Prompt("a", tokens=PROMPTS[0]), Prompt("b", tokens=PROMPTS[1])],
                               SamplingParams(n=2, max_tokens=5, seed=1))
    assert set(llm.loaded) == set(model.state_dict())
    torch.testing.assert_close(llm.loaded["lm_head.weight"], model.lm_head.weight)
    assert rollouts.batch.completion_ids.shape[0] == 4 and len(rollouts.outputs) == 4
