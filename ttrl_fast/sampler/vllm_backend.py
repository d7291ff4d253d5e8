"""Rollouts from vLLM instead of the built-in sampler: `VLLMRolloutSampler(llm)` has RolloutSampler's
`generate(prompts, params) -> RolloutBatch` contract (prompt-major rows b * G + g, right-padded ids, a
mask up to and including the stop token, fp32 log-probs of the sampled tokens, finish reasons), so a
Policy or TRL's rollout_func can switch engines without touching anything else.

vllm is imported lazily (it is an optional, GPU-only dependency). Which log-probs vLLM returns depends on
the `logprobs_mode` the LLM was built with: "processed_logprobs" is log_softmax of the logits after
temperature (and after any truncation / penalty), which equals what the trainer recomputes when no
top-k / top-p / min-p / penalty is set; the default "raw_logprobs" is taken BEFORE temperature, so it only
matches at temperature 1. `generate` refuses combinations whose log-probs would not be the trainer's,
unless allow_mismatch=True (then use the trainer's recomputed log-probs and an IS correction).

After each optimizer step the engine's weights must be refreshed: `sync_weights(model)` pushes the
policy's current weights (LoRA merged in) into the engine, like TRL's colocate mode does.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.rollout import RolloutBatch


def _vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("VLLMRolloutSampler needs vllm (pip install vllm, CUDA only); the built-in "
                          "ttrl_fast.RolloutSampler needs nothing") from exc
    return vllm


def _engine_model(llm):
    """The engine's torch model in the in-process (colocated, single-GPU) executor of vLLM 0.x / 1.x."""
    worker = llm.llm_engine.model_executor.driver_worker
    for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
        target = worker
        for attribute in path:
            target = getattr(target, attribute, None)
        if target is not None and hasattr(target, "load_weights"):
            return target
    raise NotImplementedError("sync_weights: this vLLM's executor does not expose its model in-process (use the "
                              "colocated single-process mode, or sync through vLLM's own weight-update API)")


class VLLMRolloutSampler:
    """RolloutSampler's contract on a vllm.LLM.

    Args:
        llm: a vllm.LLM over the same model as the policy.
        pad_token_id: pads completions after they stop (the policy's log-prob forward uses it too).
        logprobs_mode: the mode `llm` was created with (read from its config when possible).
        allow_mismatch: sample even when vLLM's log-probs are not log_softmax(logits / T) at the token.
    """

    def __init__(self, llm, *, pad_token_id: int = 0, logprobs_mode: str | None = None, allow_mismatch: bool = False):
        self.llm = llm
        self.pad_token_id = int(pad_token_id)
        if logprobs_mode is None:
            config = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "logprobs_mode", None)
            logprobs_mode = str(getattr(config, "value", config) or "raw_logprobs")
        self.logprobs_mode = logprobs_mode
        self.allow_mismatch = allow_mismatch

    def _check_exact(self, params: SamplingParams) -> None:
        if self.allow_mismatch or params.greedy:
            return
        truncating = params.top_k > 0 or params.top_p < 1 or params.min_p > 0 or params.repetition_penalty != 1
        if self.logprobs_mode == "raw_logprobs" and params.temperature != 1.0:
            raise ValueError(f"vLLM's raw_logprobs are taken before temperature ({params.temperature}): create the "
                             "LLM with logprobs_mode='processed_logprobs', or pass allow_mismatch=True")
        if self.logprobs_mode == "processed_logprobs" and truncating:
            raise ValueError("with top_k / top_p / min_p / repetition_penalty vLLM's processed log-probs are those "
                             "of the truncated distribution, not the trainer's: drop the truncation or pass "
                             "allow_mismatch=True")

    def vllm_params(self, params: SamplingParams):
        """The vllm.SamplingParams equivalent of ours (logprobs=0: the sampled token's log-prob only)."""
        vllm = _vllm()
        return vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, min_p=params.min_p,
            repetition_penalty=params.repetition_penalty, max_tokens=params.max_tokens, min_tokens=params.min_tokens,
            stop_token_ids=list(params.stop_token_ids), ignore_eos=params.ignore_eos, seed=params.seed,
            allowed_token_ids=None if params.allowed_token_ids is None else list(params.allowed_token_ids),
            logprobs=0)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> RolloutBatch:
        params = params or SamplingParams()
        if isinstance(prompts, torch.Tensor) or len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of token-id lists")
        self._check_exact(params)
        prompts = [[int(t) for t in p] for p in prompts]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], self.vllm_params(params),
                                    use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
        rows = []
        for b, request in enumerate(outputs):
            samples = sorted(request.outputs, key=lambda c: c.index)
            if len(samples) != params.n:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for prompt {b}, expected n={params.n}")
            for sample in samples:
                if sample.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished prompt {b} sample {sample.index} with "
                                       f"{sample.finish_reason!r}")
                ids = list(sample.token_ids)
                if sample.logprobs is None or len(sample.logprobs) != len(ids):
                    raise RuntimeError("vLLM returned no per-token log-probs (SamplingParams.logprobs=0 was set)")
                logps = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
                rows.append((b, ids, logps, sample.finish_reason))
        width = max(1, max(len(ids) for _, ids, _, _ in rows))
        completion_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
        for i, (_, ids, logps, _) in enumerate(rows):
            completion_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
            mask[i, :len(ids)] = True
            logprobs[i, :len(ids)] = torch.tensor(logps, dtype=torch.float32)
        group_index = torch.tensor([b for b, _, _, _ in rows], dtype=torch.int64)
        return RolloutBatch(prompt_ids=prompts, completion_ids=completion_ids, completion_mask=mask,
                            logprobs=logprobs, processed_logprobs=None, log_kept_mass=None,
                            finish_reason=[reason for _, _, _, reason in rows], group_index=group_index,
                            prompt_lengths=torch.tensor([len(prompts[b]) for b in group_index.tolist()]),
                            group_size=params.n)

    def sync_weights(self, model) -> None:
        """Load `model`'s current weights into the engine (a PEFT model's LoRA merged in, then unmerged)."""
        merged = hasattr(model, "merge_adapter") and hasattr(model, "peft_config")
        if merged:
            model.merge_adapter()
        try:
            state = {}
            for name, value in model.state_dict().items():
                if merged:  # peft names: base_model.model.<name>, <layer>.base_layer.weight; adapters dropped
                    if "lora_" in name:
                        continue
                    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
                state[name] = value
            _engine_model(self.llm).load_weights(state.items())
        finally:
            if merged:
                model.unmerge_adapter()
