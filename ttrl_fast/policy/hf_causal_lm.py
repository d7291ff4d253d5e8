"""`HFCausalLMPolicy`: any HF causal LM (Llama, Qwen2, ...) as a Policy.

* generation: ttrl_fast.RolloutSampler (one prefill per prompt, fork G, exact raw log-probs);
* log-probs: the decoder's hidden states -> ttrl_fast.fused_linear_logprobs (the [tokens, vocab]
  logits never exist), with the sampler's position convention (cumsum of the mask), so the loop's
  log-probs equal the sampler's at the first update;
* reference policy: the PEFT LoRA adapter switched off (no second copy of the weights), or a frozen
  copy of the initial model when every weight trains.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ttrl_fast.fused_linear import FusedLinearHead, fused_linear_logprobs
from ttrl_fast.grpo.config import LoraSettings
from ttrl_fast.policy.base import ModelWeights, Policy
from ttrl_fast.sampler.padding import left_pad, positions_from_mask
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.rollout import RolloutSampler
from ttrl_fast.tta.types import Prompt, Rollouts, Understander


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap `model` with a PEFT LoRA adapter (only the adapter trains)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is a declared dependency
        raise ImportError("LoRA needs peft: pip install peft (or GRPOConfig(lora=None) to train every weight)") from exc
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules if isinstance(settings.target_modules, str)
                        else list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class HFCausalLMPolicy(ModelWeights, Policy):
    """An HF causal LM plus a tokenizer (anything with encode/decode) as the policy being adapted.

    Args:
        model: a transformers causal LM (or a PEFT model wrapping one).
        tokenizer: encode(str) -> ids and decode(ids) -> str; needed for text prompts and outputs.
        lora: wrap the model with a fresh LoRA adapter (ignored if the model already is a PEFT model).
        max_rows, max_seq_len: the sampler's KV-cache size (rows = prompts x G per chunk).
        encode: overrides tokenizer.encode for prompt text (e.g. to add a BOS or a chat template).
        logprob_rows: rows per forward when computing log-probs (bounds activation memory).
        frozen_copy: without LoRA, keep a frozen copy of the initial model (the reference policy and the
            frozen critic); False saves the memory when beta == 0 and the critic is live or external.
        rollout_sampler: another engine with RolloutSampler's generate() contract, e.g.
            ttrl_fast.sampler.vllm_backend.VLLMRolloutSampler; its sync_weights(model), if any, runs before
            every generation so the engine samples from the weights being trained.
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, lora: LoraSettings | None = None, max_rows: int = 64,
                 max_seq_len: int = 1024, encode: Callable[[str], list[int]] | None = None,
                 logprob_rows: int | None = None, frozen_copy: bool = True, rollout_sampler=None):
        if lora is not None and not _is_peft(model):
            model = add_lora(model, lora)
        self.model = model
        self.tokenizer = tokenizer
        self._encode = encode
        self.logprob_rows = logprob_rows
        eos = getattr(tokenizer, "eos_token_id", None)
        self.sampler = rollout_sampler or RolloutSampler(model, max_rows=max_rows, max_seq_len=max_seq_len,
                                                         eos_token_ids=None if eos is None else [eos],
                                                         pad_token_id=getattr(tokenizer, "pad_token_id", None))
        self._frozen: nn.Module | None = None  # the initial model, only when every weight trains
        self._temperature = 1.0
        self._critics: dict[str, Understander] = {}
        if not _is_peft(model) and frozen_copy:
            self._frozen = copy.deepcopy(model).eval().requires_grad_(False)

    # ------------------------------------------------------------------ generation
    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        if prompt.tokens is None:
            if prompt.text is None:
                raise ValueError(f"prompt {prompt.id!r} has neither tokens nor text")
            if self._encode is None and self.tokenizer is None:
                raise ValueError("a tokenizer (or encode=) is needed to encode text prompts")
            prompt.tokens = list(self._encode(prompt.text) if self._encode else self.tokenizer.encode(prompt.text))
        return prompt.tokens

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> Rollouts:
        prompts = list(prompts)
        if hasattr(self.sampler, "sync_weights"):  # an external engine holds its own copy of the weights
            self.sampler.sync_weights(self.model)
        batch = self.sampler.generate([self.prompt_tokens(p) for p in prompts], params)
        self._temperature = 1.0 if params.greedy else params.temperature
        outputs = [self.decode(ids, reason) for ids, reason in zip(batch.completions(), batch.finish_reason)]
        return Rollouts(prompts=prompts, batch=batch, outputs=outputs)

    def decode(self, ids: list[int], finish_reason: str = "length"):
        if finish_reason == "stop":
            ids = ids[:-1]  # the stop token is part of the rollout, not of the answer
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ids

    # ------------------------------------------------------------------ log-probs
    def token_logprobs(self, rollouts: Rollouts, rows: Sequence[int] | None = None, *,
                       reference: bool = False) -> Tensor:
        batch = rollouts.batch
        rows = list(range(batch.completion_ids.shape[0])) if rows is None else list(rows)
        step = self.logprob_rows or len(rows)
        parts = [self._logprobs(batch, rows[i:i + step], reference) for i in range(0, len(rows), step)]
        return torch.cat(parts, 0)

    def _logprobs(self, batch, rows: list[int], reference: bool) -> Tensor:
        device = batch.completion_ids.device
        prompts = [batch.prompt_ids[int(batch.group_index[r])] for r in rows]
        completions = batch.completion_ids[rows]
        completion_mask = batch.completion_mask[rows]
        ids, prompt_mask = left_pad(prompts, self.sampler.pad_token_id, device)  # as in the sampler
        width = ids.shape[1]
        ids = torch.cat([ids, completions], 1)
        attention = torch.cat([prompt_mask, completion_mask], 1).long()
        positions = positions_from_mask(attention)
        if reference and not _is_peft(self.model) and self._frozen is None:
            raise ValueError("no reference policy: the model has no LoRA adapter and frozen_copy=False")
        model = self._frozen if (reference and self._frozen is not None) else self.model
        switch_off = model.disable_adapter() if (reference and _is_peft(model)) else contextlib.nullcontext()
        grad = torch.no_grad() if reference else contextlib.nullcontext()
        with grad, switch_off:
            hidden = model.get_decoder()(input_ids=ids, attention_mask=attention, position_ids=positions,
                                         use_cache=False).last_hidden_state
            head = model.get_output_embeddings()
            targets = completions.masked_fill(~completion_mask, -100)
            if isinstance(head, FusedLinearHead):  # a module call (FSDP2 gathers the sharded head around it)
                return head(hidden[:, width - 1:-1], targets=targets, temperature=self._temperature)
            return fused_linear_logprobs(hidden[:, width - 1:-1], head.weight, targets,
                                         bias=getattr(head, "bias", None), temperature=self._temperature)

    # ------------------------------------------------------------------ critic (weights: ModelWeights)
    def critic(self, mode: str = "frozen_init") -> Understander:
        if mode not in ("frozen_init", "live"):
            raise ValueError(f"critic mode must be 'frozen_init' or 'live' (or pass an external Understander), "
                             f"got {mode!r}")
        if mode not in self._critics:
            from ttrl_fast.monitors.hf_critic import HFTextUnderstander

            if mode == "live":
                self._critics[mode] = HFTextUnderstander(self.model, self.tokenizer)
            elif _is_peft(self.model):
                self._critics[mode] = HFTextUnderstander(self.model, self.tokenizer, use_base_weights=True)
            elif self._frozen is not None:
                self._critics[mode] = HFTextUnderstander(self._frozen, self.tokenizer)
            else:
                raise ValueError("no frozen initial weights: the model has no LoRA adapter and frozen_copy=False")
        return self._critics[mode]
