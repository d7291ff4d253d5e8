"""Janus (transformers' JanusForConditionalGeneration, e.g. Janus-Pro) as a text-to-image Policy whose own
understanding side is the critic (Meta-TTRL: the same unified model generates and judges).

* generation: ttrl_fast.sampler.cfg.CFGImageSampler (prefill once, CFG rows, fused sampling op);
  outputs = decoded images, float32 [H, W, 3] in [0, 1] on the CPU;
* log-probs: teacher-forced language-model forward over [prompt ; image tokens embedded through
  prepare_embeddings_for_image_generation], x = activation(proj_out(h)), then
  ttrl_fast.fused_linear_logprobs on generation_head.vision_head (the [tokens, codebook] logits never
  exist). logprob_mode "cond": the conditional row (T2I-R1); "cfg": x_g = x_u + w (x_c - x_u) from the
  conditional and unconditional rows, exact because vision_head is linear (W x_g + b = l_u + w (l_c -
  l_u)): the guided distribution the sampler drew from;
* LoRA on the language model's attention / MLP projections only (the SigLIP encoder, the VQ model and the
  generation head stay frozen); reference policy = the adapter switched off, or a frozen copy;
* critic: JanusUnderstander, yes/no questions about a decoded image through the same model's
  understanding path (SigLIP encoder -> aligner -> language model -> lm_head).

Prompt ids for text-to-image (the Janus SFT format the official code and T2I-R1 use):
    [BOS] + encode("<|User|>: {prompt}\\n\\n<|Assistant|>:") + [image-start id]
where encode is a plain text encoder without special tokens: the `encode=` callable, else the tokenizer's
(or a JanusProcessor's tokenizer's) encode(text, add_special_tokens=False); the image-start id is the
tokenizer's boi_token ("<begin_of_image>") unless given.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttrl_fast.fused_linear import fused_linear_logprobs
from ttrl_fast.grpo.config import LoraSettings
from ttrl_fast.policy.base import ModelWeights, Policy
from ttrl_fast.sampler.cfg import (CFGImageSampler, check_cfg_weight, check_logprob_mode, unconditional_prompt,
                                   unwrap_janus)
from ttrl_fast.sampler.padding import left_pad, positions_from_mask
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.tta.types import Prompt, Rollouts, Understander

JANUS_T2I_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"
JANUS_USER_PREFIX = "<|User|>: "
JANUS_QUESTION_TEMPLATE = "\n{question}\n\n<|Assistant|>:"
# the language model's decoder projections (the vision encoder also has q_proj / k_proj / v_proj)
LANGUAGE_MODEL_LORA_TARGETS = (r".*language_model\.layers\.\d+\."
                               r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def add_janus_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap a Janus model with a PEFT LoRA adapter. settings.target_modules="all-linear" (the default)
    means the language model's projections only; any other value is passed to peft as it is."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is a declared dependency
        raise ImportError("LoRA needs peft: pip install peft (or lora=None to train every weight)") from exc
    targets = settings.target_modules
    if targets == "all-linear":
        targets = LANGUAGE_MODEL_LORA_TARGETS
    elif not isinstance(targets, str):
        targets = list(targets)
    # no task_type: PeftModelForCausalLM's generate / forward plumbing assumes a text-only model
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets)
    return get_peft_model(model, config)


def _token_id(token, encode, vocab: int, name: str) -> int:
    """An id given as an int, or the first token of a string through `encode`."""
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise ValueError(f"{name} must be a token id or a string, got {token!r}")
    if isinstance(token, str):
        if encode is None:
            raise ValueError(f"{name}={token!r} is a string but there is no encode / tokenizer: pass a token id")
        ids = list(encode(token))
        if not ids:
            raise ValueError(f"{name}={token!r} encodes to no token")
        token = int(ids[0])
    if not 0 <= token < vocab:
        raise ValueError(f"{name}={token} is outside the text vocabulary [0, {vocab})")
    return token


class JanusUnderstander(Understander):
    """A Janus model's understanding side as an Understander.

    yes_prob((image, question)): input_ids = [BOS] + encode(user_prefix) + [image-start]? + [image_token_id]
        x num_patches + [image-end]? + encode(question_template.format(question=...)); pixel_values = the
        image resized (bicubic, antialiased) to vision_config.image_size and normalised (x - mean) / std
        (Janus-Pro's processor: mean = std = 0.5, so [0, 1] -> [-1, 1]); P(yes) = softmax over the two
        lm_head logits (yes_token_id, no_token_id) at the last position = P(yes) / (P(yes) + P(no)).
        Images: [H, W, 3] tensors / arrays, float in [0, 1] or uint8 (decoded images, never token ids).
        Rows are left-padded (positions cumsum(mask) - 1), batch_size per forward, under no_grad + eval.
    generate_text: greedy text through ttrl_fast.RolloutSampler on the same model (needs `decode`).
    sequence_logprob(images, targets): mean log P(target tokens | image, caption_question).
    use_base_weights: score inside a PEFT model's disable_adapter() (the frozen initial weights).
    last_yes_no_mass: P(yes) + P(no) of the last yes_prob call (how much mass the two answers get).
    """

    def __init__(self, model, encode: Callable[[str], Sequence[int]], *, bos_token_id: int, pad_token_id: int,
                 yes_token: int | str = "Yes", no_token: int | str = "No", image_token_id: int | None = None,
                 image_start_token_id: int | None = None, image_end_token_id: int | None = None,
                 user_prefix: str = JANUS_USER_PREFIX, question_template: str = JANUS_QUESTION_TEMPLATE,
                 caption_question: str = "Describe this image.", image_mean: float = 0.5, image_std: float = 0.5,
                 use_base_weights: bool = False, batch_size: int = 8,
                 decode: Callable[[list[int]], str] | None = None, eos_token_id: int | None = None):
        if not callable(encode):
            raise TypeError(f"JanusUnderstander: encode must be callable (text -> ids), got {type(encode).__name__}")
        if not isinstance(question_template, str) or "{question}" not in question_template:
            raise ValueError("JanusUnderstander: question_template must contain {question}, "
                             f"got {question_template!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"JanusUnderstander: batch_size must be a positive int, got {batch_size!r}")
        if not image_std > 0:
            raise ValueError(f"JanusUnderstander: image_std must be > 0, got {image_std!r}")
        if use_base_weights and not _is_peft(model):
            raise ValueError("JanusUnderstander: use_base_weights=True needs a PEFT model (its disable_adapter() "
                             f"gives the base weights), got {type(model).__name__}")
        self.model, self.janus = model, unwrap_janus(model)
        config = self.janus.config
        self.vocab_size = int(config.text_config.vocab_size)
        self.encode, self.decode = encode, decode
        self.bos_token_id = _token_id(bos_token_id, None, self.vocab_size, "bos_token_id")
        self.pad_token_id = _token_id(pad_token_id, None, self.vocab_size, "pad_token_id")
        self.image_token_id = _token_id(config.image_token_id if image_token_id is None else image_token_id, None,
                                        self.vocab_size, "image_token_id")
        if self.pad_token_id == self.image_token_id:
            raise ValueError("pad_token_id must differ from image_token_id (padding would count as image slots)")
        self.yes_id = _token_id(yes_token, encode, self.vocab_size, "yes_token")
        self.no_id = _token_id(no_token, encode, self.vocab_size, "no_token")
        if self.yes_id == self.no_id:
            raise ValueError(f"yes_token and no_token map to the same id {self.yes_id}")
        self.image_start = [] if image_start_token_id is None else [int(image_start_token_id)]
        self.image_end = [] if image_end_token_id is None else [int(image_end_token_id)]
        self.prefix = [self.bos_token_id] + self._ids(user_prefix)
        self.question_template, self.caption_question = question_template, caption_question
        vision = self.janus.model.vision_model
        self.num_patches = int(vision.embeddings.num_patches)  # one image feature per patch
        size = config.vision_config.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std = float(image_mean), float(image_std)
        self.use_base_weights, self.batch_size = bool(use_base_weights), batch_size
        self.eos_token_id = eos_token_id
        self.last_yes_no_mass: Tensor | None = None
        self._sampler = None

    # ------------------------------------------------------------------ inputs
    def _ids(self, text: str) -> list[int]:
        ids = [int(t) for t in self.encode(text)] if text else []
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise ValueError(f"encode produced ids outside the text vocabulary [0, {self.vocab_size})")
        return ids

    def image_row(self, question: str) -> list[int]:
        """Token ids of one question about one image (image_token_id placeholders for the patches)."""
        return (self.prefix + self.image_start + [self.image_token_id] * self.num_patches + self.image_end
                + self._ids(self.question_template.format(question=question)))

    def pixel_values(self, image: Any) -> Tensor:
        """[3, S, S] float32 normalised pixels from an [H, W, 3] image (float in [0, 1] or uint8)."""
        x = image if isinstance(image, Tensor) else torch.as_tensor(np.asarray(image))
        if x.dim() != 3 or x.shape[-1] != 3 or not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise TypeError("JanusUnderstander reads decoded images [H, W, 3] (float in [0, 1] or uint8), got "
                            f"{x.dtype} of shape {tuple(x.shape)} (image tokens must be decoded first)")
        x = (x.float() / 255.0) if x.dtype == torch.uint8 else x.float()
        x = x.permute(2, 0, 1)[None]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)  # bicubic overshoots; the processor's uint8 resize clips too
        return ((x - self.mean) / self.std)[0]

    # ------------------------------------------------------------------ model
    def _device(self):
        return next(self.janus.parameters()).device

    @contextmanager
    def _scoring(self):
        was_training = self.janus.training
        self.janus.eval()
        try:
            with torch.no_grad(), (self.model.disable_adapter() if self.use_base_weights else contextlib.nullcontext()):
                yield
        finally:
            self.janus.train(was_training)

    def _logits(self, rows: list[list[int]], images: list[Tensor], keep: int) -> Tensor:
        """float32 lm_head logits [len(rows), keep, V] of the last `keep` positions."""
        device = self._device()
        ids, mask = left_pad(rows, self.pad_token_id, device)
        pixels = torch.stack(images).to(device=device, dtype=self.janus.model.vision_model.dtype)
        out = self.janus(input_ids=ids, pixel_values=pixels, attention_mask=mask.long(),
                         position_ids=positions_from_mask(mask), logits_to_keep=keep, use_cache=False)
        return out.logits[:, -keep:].float()

    @staticmethod
    def _pairs(items, what: str) -> list:
        for k, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"{what}[{k}] must be an (image, question) pair, got {type(item).__name__}")
        return list(items)

    # ------------------------------------------------------------------ protocol
    def yes_prob(self, items: Sequence[tuple[Any, str]]) -> Tensor:
        items = self._pairs(items, "yes_prob items")
        probs = torch.empty(len(items), dtype=torch.float32)
        mass = torch.empty(len(items), dtype=torch.float32)
        with self._scoring():
            for first in range(0, len(items), self.batch_size):
                chunk = items[first:first + self.batch_size]
                logits = self._logits([self.image_row(str(q)) for _, q in chunk],
                                      [self.pixel_values(image) for image, _ in chunk], 1)[:, -1]
                pair = torch.log_softmax(logits, -1)[:, [self.yes_id, self.no_id]]
                probs[first:first + len(chunk)] = torch.softmax(pair, -1)[:, 0].cpu()
                mass[first:first + len(chunk)] = pair.exp().sum(-1).cpu()
        self.last_yes_no_mass = mass
        return probs

    def sequence_logprob(self, contexts: Sequence[Any], targets: Sequence[str]) -> Tensor:
        """Mean log P(target | image, caption_question): contexts are decoded images."""
        if len(contexts) != len(targets):
            raise ValueError(f"sequence_logprob: {len(contexts)} contexts for {len(targets)} targets")
        out = torch.empty(len(targets), dtype=torch.float32)
        with self._scoring():
            for first in range(0, len(targets), self.batch_size):
                images = contexts[first:first + self.batch_size]
                answers = [self._ids(str(t)) for t in targets[first:first + self.batch_size]]
                if any(not a for a in answers):
                    raise ValueError("sequence_logprob: a target encodes to no tokens")
                rows = [self.image_row(self.caption_question) + a for a in answers]
                keep = max(map(len, answers)) + 1
                log_p = torch.log_softmax(self._logits(rows, [self.pixel_values(i) for i in images], keep), -1)
                for j, answer in enumerate(answers):
                    t, answer = len(answer), torch.tensor(answer, device=log_p.device)
                    picked = log_p[j, keep - t - 1:keep - 1].gather(-1, answer[:, None])
                    out[first + j] = picked.mean().cpu()
        return out

    def generate_text(self, prompts: Sequence[str], *, max_tokens: int = 64, temperature: float = 0.0) -> list[str]:
        """Text through the Janus language model (rubric writing); greedy at temperature 0."""
        if self.decode is None:
            raise NotImplementedError("JanusUnderstander.generate_text needs decode= (ids -> text) or a tokenizer; "
                                      "use a StaticRubric / TemplateRubric otherwise")
        from ttrl_fast.sampler.rollout import RolloutSampler

        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"generate_text: max_tokens must be a positive int, got {max_tokens!r}")
        rows = [[self.bos_token_id] + self._ids(str(p)) for p in prompts]
        if not rows:
            return []
        needed = max(map(len, rows)) + max_tokens
        if self._sampler is None or self._sampler.max_seq_len < needed:
            eos = None if self.eos_token_id is None else [int(self.eos_token_id)]
            self._sampler = RolloutSampler(self.janus, max_rows=self.batch_size, max_seq_len=needed,
                                           pad_token_id=self.pad_token_id, eos_token_ids=eos)
        with self._scoring():
            batch = self._sampler.generate(rows, SamplingParams(max_tokens=max_tokens, temperature=float(temperature)))
        stops = set(self._sampler.eos_token_ids)
        return [self.decode(ids[:-1] if ids and ids[-1] in stops else ids) for ids in batch.completions()]


class JanusImagePolicy(ModelWeights, Policy):
    """Text-to-image Janus as the policy being adapted.

    Args:
        model: a JanusForConditionalGeneration (or a PEFT model wrapping one).
        tokenizer: optional; a tokenizer or a JanusProcessor (its .tokenizer is used): plain-text encode /
            decode, and the BOS / pad / image-start (boi_token) ids.
        encode: text -> ids without special tokens (overrides the tokenizer's); decode: ids -> text (only
            for the critic's generate_text).
        lora: LoRA settings (default LoraSettings(): r 8 on the language model's projections, see
            add_janus_lora); None trains every weight against a frozen copy.
        cfg_weight: CFG weight w (>= 1; Janus / T2I-R1 / Janus-Pro-R1 use 5).
        logprob_mode: "cond" (default, T2I-R1) or "cfg" (the guided distribution; CFGImageSampler).
        template: the prompt template ("{prompt}" filled with Prompt.text), between BOS and image start.
        num_image_tokens: tokens per image (default config.vision_config.num_image_tokens); must fill the
            VQ decoder's grid (24 x 24 = 576 for Janus-Pro at 384 px).
        max_rows: sampler cache rows (cond + uncond) per chunk; max_seq_len: longest prompt + image tokens
            (default num_image_tokens + 256).
        bos_token_id, pad_token_id, image_start_token_id: override the tokenizer's / generation config's.
        yes_token, no_token: the critic's answer tokens (ids, or strings whose first token is used; check
            which spelling the tokenizer's answers after "<|Assistant|>:" start with, e.g. "Yes" or " Yes").
        critic_options: extra JanusUnderstander keyword arguments (templates, image mean / std, ...).
        logprob_rows: rollout rows per log-prob forward; decode_rows: images per VQ decode.
        frozen_copy: without LoRA keep a frozen copy of the initial model (reference policy, frozen critic).
    Outputs (Rollouts.outputs): float32 [H, W, 3] CPU tensors in [0, 1] (the VQ decoder's [-1, 1] mapped).
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, encode: Callable[[str], Sequence[int]] | None = None,
                 decode: Callable[[list[int]], str] | None = None, lora: LoraSettings | None = LoraSettings(),
                 cfg_weight: float = 5.0, logprob_mode: str = "cond", template: str = JANUS_T2I_TEMPLATE,
                 num_image_tokens: int | None = None, max_rows: int = 32, max_seq_len: int | None = None,
                 bos_token_id: int | None = None, pad_token_id: int | None = None,
                 image_start_token_id: int | None = None, yes_token: int | str = "Yes", no_token: int | str = "No",
                 critic_options: dict | None = None, logprob_rows: int | None = None, decode_rows: int = 8,
                 frozen_copy: bool = True, backend: str | None = None, decode_attention: str = "auto"):
        janus = unwrap_janus(model)
        self.cfg_weight = check_cfg_weight(cfg_weight)
        self.logprob_mode = check_logprob_mode(logprob_mode)
        if not isinstance(template, str) or "{prompt}" not in template:
            raise ValueError(f"template must be a string containing {{prompt}}, got {template!r}")
        for name, value in (("logprob_rows", logprob_rows), ("decode_rows", decode_rows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a JanusProcessor holds its tokenizer
        if encode is None and tok is not None:
            encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
        if decode is None and tok is not None:
            decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        if encode is not None and not callable(encode):
            raise TypeError(f"encode must be callable (text -> ids), got {type(encode).__name__}")
        self._encode, self._decode, self.template = encode, decode, template
        generation = getattr(janus, "generation_config", None)
        text = janus.config.text_config

        def pick(*sources):  # the first id given, explicit argument first
            for value in sources:
                if value is not None:
                    return int(value)
            return None

        boi = tok.convert_tokens_to_ids(tok.boi_token) if getattr(tok, "boi_token", None) else None
        boi = boi if boi is not None else (getattr(generation, "generation_kwargs", None) or {}).get("boi_token_id")
        self.bos_token_id = pick(bos_token_id, getattr(tok, "bos_token_id", None),
                                 getattr(generation, "bos_token_id", None), getattr(text, "bos_token_id", None))
        self.pad_token_id = pick(pad_token_id, getattr(tok, "pad_token_id", None),
                                 getattr(generation, "pad_token_id", None), getattr(text, "pad_token_id", None))
        self.image_start_token_id = pick(image_start_token_id, boi)
        # the understanding prompt wraps the image placeholders in <begin_of_image> ... <end_of_image> like
        # JanusProcessor; eos lets the critic's rubric writing stop early
        self._eoi_token_id = pick(tok.convert_tokens_to_ids(tok.eoi_token) if getattr(tok, "eoi_token", None) else None)
        self._eos_token_id = pick(getattr(tok, "eos_token_id", None), getattr(generation, "eos_token_id", None)
                                  if not isinstance(getattr(generation, "eos_token_id", None), list) else None)
        if self.pad_token_id is None:
            raise ValueError("pad_token_id is needed (unconditional CFG prompts are made of it): pass pad_token_id=")
        grid = janus.model.vqmodel.quantize.quant_state_dims
        tokens = int(janus.config.vision_config.num_image_tokens if num_image_tokens is None else num_image_tokens)
        if tokens != grid[0] * grid[1]:
            raise ValueError(f"num_image_tokens={tokens} does not fill the VQ decoder's {grid[0]} x {grid[1]} grid "
                             f"({grid[0] * grid[1]} tokens)")
        if max_seq_len is None:
            max_seq_len = tokens + 256

        if lora is not None and not _is_peft(model):
            model = add_janus_lora(model, lora)
        self.model, self.janus = model, unwrap_janus(model)
        self.sampler = CFGImageSampler(self.janus, max_rows=max_rows, max_seq_len=max_seq_len, backend=backend,
                                       pad_token_id=self.pad_token_id, cfg_weight=self.cfg_weight,
                                       logprob_mode=self.logprob_mode, num_image_tokens=tokens,
                                       decode_attention=decode_attention)
        self.num_image_tokens = tokens
        self.logprob_rows, self.decode_rows = logprob_rows, decode_rows
        self.yes_token, self.no_token = yes_token, no_token
        self.critic_options = dict(critic_options or {})
        self._frozen: nn.Module | None = None  # the initial model, only when every weight trains
        if not _is_peft(self.model) and frozen_copy:
            self._frozen = copy.deepcopy(self.janus).eval().requires_grad_(False)
        self._temperature = 1.0
        self._critics: dict[str, Understander] = {}

    # ------------------------------------------------------------------ generation
    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """[BOS] + encode(template.format(prompt=text)) + [image start] (Prompt.tokens when set)."""
        if prompt.tokens is None:
            if prompt.text is None:
                raise ValueError(f"prompt {prompt.id!r} has neither tokens nor text")
            if self._encode is None:
                raise ValueError("a tokenizer (or encode=) is needed to encode text prompts")
            if self.bos_token_id is None or self.image_start_token_id is None:
                raise ValueError("bos_token_id and image_start_token_id are needed to build image prompts: pass them "
                                 "or a Janus tokenizer")
            body = [int(t) for t in self._encode(self.template.format(prompt=prompt.text))]
            prompt.tokens = [self.bos_token_id] + body + [self.image_start_token_id]
        return prompt.tokens

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> Rollouts:
        prompts = list(prompts)
        # an image is always num_image_tokens tokens: length / stop settings do not apply
        params = dataclasses.replace(params, max_tokens=self.num_image_tokens, min_tokens=0)
        batch = self.sampler.generate([self.prompt_tokens(p) for p in prompts], params)
        self._temperature = 1.0 if params.greedy else params.temperature
        return Rollouts(prompts=prompts, batch=batch, outputs=self.decode_images(batch.completion_ids))

    @torch.no_grad()
    def decode_images(self, tokens: Tensor) -> list[Tensor]:
        """[R, N] image tokens -> R float32 [H, W, 3] CPU images in [0, 1]."""
        images = []
        for first in range(0, tokens.shape[0], self.decode_rows):
            pixels = self.janus.decode_image_tokens(tokens[first:first + self.decode_rows])  # [r, H, W, 3] in [-1, 1]
            images.extend(((pixels.float().clamp(-1, 1) + 1) / 2).cpu().unbind(0))
        return images

    # ------------------------------------------------------------------ log-probs
    def token_logprobs(self, rollouts: Rollouts, rows: Sequence[int] | None = None, *,
                       reference: bool = False) -> Tensor:
        batch = rollouts.batch
        rows = list(range(batch.completion_ids.shape[0])) if rows is None else list(rows)
        step = self.logprob_rows or max(1, len(rows))
        return torch.cat([self._logprobs(batch, rows[i:i + step], reference) for i in range(0, len(rows), step)], 0)

    def _logprobs(self, batch, rows: list[int], reference: bool) -> Tensor:
        device = batch.completion_ids.device
        prompts = [batch.prompt_ids[int(batch.group_index[r])] for r in rows]
        tokens = batch.completion_ids[rows]  # [R, N]
        count = len(rows)
        if self.logprob_mode == "cfg":  # the unconditional twins after the prompts, as in the sampler
            prompts = prompts + [unconditional_prompt(p, self.pad_token_id) for p in prompts]
        ids, prompt_mask = left_pad(prompts, self.pad_token_id, device)
        width = ids.shape[1]
        fed = tokens[:, :-1].repeat(len(prompts) // count, 1)  # the last token is predicted, never fed
        if reference and not _is_peft(self.model) and self._frozen is None:
            raise ValueError("no reference policy: the model has no LoRA adapter and frozen_copy=False")
        model = self._frozen if (reference and self._frozen is not None) else self.janus
        switch_off = self.model.disable_adapter() if (reference and _is_peft(self.model)) else contextlib.nullcontext()
        with (torch.no_grad() if reference else contextlib.nullcontext()), switch_off:
            embeds = model.get_input_embeddings()(ids)
            if fed.shape[1]:
                embeds = torch.cat([embeds, model.prepare_embeddings_for_image_generation(fed).to(embeds.dtype)], 1)
            mask = torch.cat([prompt_mask, torch.ones_like(fed, dtype=torch.bool)], 1).long()
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                                position_ids=positions_from_mask(mask),
                                                use_cache=False).last_hidden_state[:, width - 1:]
            head = model.model.generation_head
            x = head.activation_fn(head.proj_out(hidden))  # [rows, N, D]: what vision_head maps to logits
            if self.logprob_mode == "cfg":  # linear head: W x_g + b = l_u + w (l_c - l_u)
                x = x[count:] + self.cfg_weight * (x[:count] - x[count:])
            targets = tokens.masked_fill(~batch.completion_mask[rows], -100)
            return fused_linear_logprobs(x, head.vision_head.weight, targets, bias=head.vision_head.bias,
                                         temperature=self._temperature)

    # ------------------------------------------------------------------ critic (weights: ModelWeights)
    def critic(self, mode: str = "frozen_init") -> Understander:
        """JanusUnderstander on the initial weights ("frozen_init": adapter off, or the frozen copy) or on
        the weights being trained ("live")."""
        if mode not in ("frozen_init", "live"):
            raise ValueError(f"critic mode must be 'frozen_init' or 'live' (or pass an external Understander), "
                             f"got {mode!r}")
        if mode not in self._critics:
            if self._encode is None:
                raise ValueError("the critic needs encode= or a tokenizer (its questions are text)")
            if self.bos_token_id is None:
                raise ValueError("the critic needs bos_token_id (pass it or a tokenizer)")
            options = dict(bos_token_id=self.bos_token_id, pad_token_id=self.pad_token_id, yes_token=self.yes_token,
                           no_token=self.no_token, decode=self._decode, eos_token_id=self._eos_token_id)
            if self._eoi_token_id is not None:  # a real Janus tokenizer: the processor's image framing
                options.update(image_start_token_id=self.image_start_token_id, image_end_token_id=self._eoi_token_id)
            options.update(self.critic_options)
            if mode == "live":
                model, base = self.model, False
            elif _is_peft(self.model):
                model, base = self.model, True
            elif self._frozen is not None:
                model, base = self._frozen, False
            else:
                raise ValueError("no frozen initial weights: the model has no LoRA adapter and frozen_copy=False")
            self._critics[mode] = JanusUnderstander(model, self._encode, use_base_weights=base, **options)
        return self._critics[mode]
