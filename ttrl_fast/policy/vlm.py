"""`VLMAnswerPolicy`: an HF vision-language model (InternVL, Qwen2-VL / Qwen2.5-VL, ...) answering questions
about images, as a Policy for TTRL / TTRV (consensus rewards over the G answers: ttrl_fast.monitors.Consensus).

Prompts: `Prompt.text` is the question, `Prompt.meta["image"]` the image (float [H, W, 3] in [0, 1] tensor /
array, or a PIL image). `build_inputs(prompt) -> (ids, prefill kwargs)` turns one into the token ids (with
the model's image placeholder tokens, as many as the image yields) and the model kwargs of its image
(e.g. {"pixel_values": [n_img, 3, H, W]} for InternVL, {"pixel_values": [n_patches, D], "image_grid_thw":
[n_img, 3]} for Qwen-VL); `processor_inputs(processor)` makes one from an HF processor.

* generation: RolloutSampler with prefill_inputs: each image is encoded once per prompt in the prefill and
  its G rows share the prompt's KV; M-RoPE models get their own positions (sampler/positions.py);
* log-probs: one teacher-forced forward of [prompt ; completion] on the language model with inputs_embeds
  built once per distinct prompt (the image features scattered into the placeholder positions, then
  index-selected for its G rows: the vision tower runs once per prompt, not G times), the sampler's
  positions, and the decoder's hidden states -> ttrl_fast.fused_linear_logprobs on lm_head (the
  [tokens, vocab] logits never exist); so the loop's first log-probs equal the sampler's;
* reference policy: the LoRA adapter (on the language model only, by default) switched off, or a frozen
  copy when every weight trains;
* critic: none built in (TTRL / TTRV need no critic: Consensus scores agreement).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ttrl_fast.fused_linear import fused_linear_logprobs
from ttrl_fast.grpo.config import LoraSettings
from ttrl_fast.policy.base import ModelWeights, Policy
from ttrl_fast.policy.hf_causal_lm import _is_peft
from ttrl_fast.sampler.padding import left_pad, positions_from_mask
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.positions import PER_TOKEN_KEYS, batch_prefill
from ttrl_fast.sampler.rollout import RolloutSampler
from ttrl_fast.tta.types import Prompt, Rollouts, Understander

BuildInputs = Callable[[Prompt], "tuple[list[int], dict]"]


@dataclass
class VLMRollouts(Rollouts):
    """Rollouts plus each prompt's prefill kwargs (its image inputs), reused by token_logprobs."""

    prefill_inputs: list = field(default_factory=list)


def add_language_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """PEFT LoRA on the language model's linear layers only (the vision tower and projector stay frozen).
    settings.target_modules: "all-linear", or names of linear layers (q_proj, ...) matched on the last
    component; another string is passed to PEFT unchanged (a regex over full module names)."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    if not isinstance(targets, str) or targets == "all-linear":
        decoder = model.get_decoder()
        prefix = next(name for name, module in model.named_modules() if module is decoder)
        wanted = None if isinstance(targets, str) else set(targets)
        targets = [f"{prefix}.{name}" for name, module in decoder.named_modules()
                   if isinstance(module, nn.Linear) and (wanted is None or name.rsplit(".", 1)[-1] in wanted)]
        if not targets:
            raise ValueError(f"LoRA target_modules {settings.target_modules!r} match no linear layer of the "
                             f"language model ({type(decoder).__name__})")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets)
    return get_peft_model(model, config)


def _pil(image):
    """float [H, W, 3] in [0, 1] (tensor / array) -> PIL RGB; PIL images pass through."""
    if hasattr(image, "convert"):
        return image.convert("RGB")
    from PIL import Image

    array = torch.as_tensor(image, dtype=torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(array.cpu().numpy())


def processor_inputs(processor, *, messages: Callable[[Prompt], list] | None = None) -> BuildInputs:
    """build_inputs from an HF processor: its chat template with one image then the question (or
    `messages(prompt)`), then processor(text=..., images=...) -> ids and every other tensor it returns
    (pixel_values, image_grid_thw, mm_token_type_ids, ...) except input_ids / attention_mask."""
    def build(prompt: Prompt):
        if "image" not in prompt.meta:
            raise ValueError(f"prompt {prompt.id!r} has no meta['image']")
        chat = messages(prompt) if messages else [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text or ""}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        out = processor(text=[text], images=[_pil(prompt.meta["image"])], return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        extras = {k: (v[0] if k in PER_TOKEN_KEYS else v) for k, v in out.items()
                  if k not in ("input_ids", "attention_mask")}
        return ids, extras
    return build


class VLMAnswerPolicy(ModelWeights, Policy):
    """A vision-language model answering image questions (see the module docstring).

    Args:
        model: an HF image-text-to-text model (…ForConditionalGeneration with get_image_features,
            get_decoder, get_input_embeddings, get_output_embeddings and config.image_token_id), or a
            PEFT model wrapping one.
        tokenizer: decode(ids) -> str for the outputs (default: processor.tokenizer; None: outputs are ids).
        build_inputs: prompt -> (ids, prefill kwargs); default processor_inputs(processor).
        lora: LoRA on the language model (default r=8 on every linear layer of it); None trains every
            weight (the reference is then a frozen copy, unless frozen_copy=False).
        max_rows, max_seq_len, decode_attention: the sampler's (rows = prompts x G per chunk).
        eos_token_ids, pad_token_id: the sampler's stop / pad ids (default: tokenizer's eos / pad, else the
            model's generation config).
        logprob_rows: rows per log-prob forward (bounds activation memory; each chunk encodes the images
            of the prompts it holds once).
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, build_inputs: BuildInputs | None = None, processor=None,
                 lora: LoraSettings | None = LoraSettings(), max_rows: int = 64, max_seq_len: int = 2048,
                 decode_attention: str = "auto", eos_token_ids: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, logprob_rows: int | None = None, frozen_copy: bool = True):
        if build_inputs is None:
            if processor is None:
                raise ValueError("VLMAnswerPolicy needs build_inputs (prompt -> (ids, prefill kwargs)) or a processor")
            build_inputs = processor_inputs(processor)
        if not callable(build_inputs):
            raise TypeError(f"build_inputs must be callable prompt -> (ids, dict), got {build_inputs!r}")
        if tokenizer is None and processor is not None:
            tokenizer = getattr(processor, "tokenizer", None)
        if lora is not None and not _is_peft(model):
            model = add_language_lora(model, lora)
        self.model, self.tokenizer, self.build_inputs = model, tokenizer, build_inputs
        self.logprob_rows = logprob_rows
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos_token_ids is None and eos is not None:
            eos_token_ids = [eos]
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.sampler = RolloutSampler(model, max_rows=max_rows, max_seq_len=max_seq_len, eos_token_ids=eos_token_ids,
                                      pad_token_id=pad_token_id, decode_attention=decode_attention)
        self.image_token_id = getattr(model.config, "image_token_id", None)
        self._frozen = copy.deepcopy(model).eval().requires_grad_(False) if not _is_peft(model) and frozen_copy \
            else None
        self._temperature = 1.0

    # ------------------------------------------------------------------ generation
    def prompt_inputs(self, prompt: Prompt) -> tuple[list[int], dict]:
        """build_inputs(prompt), checked: (ids with the image placeholders, prefill kwargs)."""
        built = self.build_inputs(prompt)
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], dict)):
            raise TypeError(f"build_inputs({prompt.id!r}) must return (token ids, dict of prefill kwargs), "
                            f"got {type(built).__name__}")
        ids, extras = built
        return [int(t) for t in (ids.tolist() if isinstance(ids, Tensor) else ids)], extras

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> VLMRollouts:
        prompts = list(prompts)
        built = [self.prompt_inputs(p) for p in prompts]
        extras = [e for _, e in built]
        batch = self.sampler.generate([ids for ids, _ in built], params, prefill_inputs=extras)
        self._temperature = 1.0 if params.greedy else params.temperature
        outputs = [self.decode(ids, reason) for ids, reason in zip(batch.completions(), batch.finish_reason)]
        return VLMRollouts(prompts=prompts, batch=batch, outputs=outputs, prefill_inputs=extras)

    def decode(self, ids: list[int], finish_reason: str = "length") -> Any:
        if finish_reason == "stop":
            ids = ids[:-1]  # the stop token is part of the rollout, not of the answer
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ids

    # ------------------------------------------------------------------ log-probs
    def token_logprobs(self, rollouts: Rollouts, rows: Sequence[int] | None = None, *,
                       reference: bool = False) -> Tensor:
        batch = rollouts.batch
        extras = getattr(rollouts, "prefill_inputs", None) or [self.prompt_inputs(p)[1] for p in rollouts.prompts]
        rows = list(range(batch.completion_ids.shape[0])) if rows is None else list(rows)
        step = self.logprob_rows or len(rows)
        return torch.cat([self._logprobs(batch, extras, rows[i:i + step], reference)
                          for i in range(0, len(rows), step)], 0)

    def _logprobs(self, batch, extras: list[dict], rows: list[int], reference: bool) -> Tensor:
        device = batch.completion_ids.device
        # the distinct prompts of these rows, encoded once each; `inverse` maps a row to its prompt
        prompts, inverse = torch.unique(batch.group_index[rows], return_inverse=True)
        prompts = prompts.tolist()
        ids, prompt_mask = left_pad([batch.prompt_ids[b] for b in prompts], self.sampler.pad_token_id, device)
        width = ids.shape[1]
        image_kwargs = batch_prefill([extras[b] for b in prompts], [len(batch.prompt_ids[b]) for b in prompts],
                                     width, device)
        completions, completion_mask = batch.completion_ids[rows], batch.completion_mask[rows]
        attention = torch.cat([prompt_mask[inverse], completion_mask], 1)
        positions = positions_from_mask(attention)
        scheme = self.sampler.positions
        if scheme is not None:  # M-RoPE: the prompt's 3-D positions, the completion's cumsum + delta (as decode)
            prefix, delta = scheme.prefill(ids, prompt_mask, image_kwargs)
            rest = (positions[:, width:] + delta[inverse][:, None]).unsqueeze(0).expand(3, -1, -1)
            positions = torch.cat([prefix[:, inverse], rest], -1)
        if reference and not _is_peft(self.model) and self._frozen is None:
            raise ValueError("no reference policy: the model has no LoRA adapter and frozen_copy=False")
        model = self._frozen if (reference and self._frozen is not None) else self.model
        switch_off = model.disable_adapter() if (reference and _is_peft(model)) else contextlib.nullcontext()
        grad = torch.no_grad() if reference else contextlib.nullcontext()
        with grad, switch_off:
            embed = model.get_input_embeddings()
            prompt_embeds = self._with_images(model, embed(ids), ids, prompt_mask, image_kwargs)  # [U, P, H]
            inputs = torch.cat([prompt_embeds[inverse], embed(completions)], 1)
            hidden = model.get_decoder()(inputs_embeds=inputs, attention_mask=attention.long(), position_ids=positions,
                                         use_cache=False).last_hidden_state
            head = model.get_output_embeddings()
            targets = completions.masked_fill(~completion_mask, -100)
            return fused_linear_logprobs(hidden[:, width - 1:-1], head.weight, targets,
                                         bias=getattr(head, "bias", None), temperature=self._temperature)

    def _with_images(self, model, embeds: Tensor, ids: Tensor, mask: Tensor, kwargs: dict) -> Tensor:
        """embeds [U, P, H] with the image features written into the placeholder positions (row-major, as
        the model's own forward does): one vision-tower forward for the U prompts."""
        if "pixel_values" not in kwargs:
            return embeds
        accepted = {name for name, p in inspect.signature(model.get_image_features).parameters.items()
                    if p.kind is not p.VAR_KEYWORD}
        unused = sorted(set(kwargs) - accepted - PER_TOKEN_KEYS)
        if unused:
            raise NotImplementedError(f"the log-prob forward feeds images through get_image_features"
                                      f"({sorted(accepted)}); prefill inputs {unused} are not supported")
        features = model.get_image_features(**{k: v for k, v in kwargs.items() if k in accepted})
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):  # Qwen-VL: one [tokens_i, H] per image
            features = torch.cat(list(features), 0)
        features = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        place = (ids == self.image_token_id) & mask
        if int(place.sum()) != features.shape[0]:
            raise ValueError(f"the prompts hold {int(place.sum())} image placeholder tokens (id {self.image_token_id}) "
                             f"but their images give {features.shape[0]} features: build_inputs must place one "
                             f"placeholder per image token")
        return embeds.masked_scatter(place[..., None], features)

    # ------------------------------------------------------------------ critic (weights: ModelWeights)
    def critic(self, mode: str = "frozen_init") -> Understander:
        raise NotImplementedError(
            "VLMAnswerPolicy has no built-in critic: TTRL / TTRV reward the agreement of the G answers, use "
            "ttrl_fast.monitors.Consensus(extract, mode='majority') (TTRL) or mode='frequency', entropy_alpha=0.75 "
            "(TTRV); for rubric / judge monitors pass an external Understander")
