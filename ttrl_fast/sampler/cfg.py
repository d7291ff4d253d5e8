"""`CFGImageSampler`: G images per prompt from Janus (transformers' JanusForConditionalGeneration) with
classifier-free guidance, on the rollout sampler's machinery.

Per chunk of whole groups (B prompts, 2 * B * G cache rows <= max_rows):
    1. prefill 2B prefix rows once: the B conditional prompts, then their B unconditional twins (every
       token but the first (BOS) and the last (image start) replaced by the pad id, as Janus, T2I-R1
       and Janus-Pro-R1 build them), left-padded to one length P with positions cumsum(mask) - 1,
       through the language model with inputs_embeds;
    2. share or fork: cache row i (i < 2B) holds prefix i; decode row r reads prefix r // G, so rows
       [0, B*G) are the conditional rows (b * G + g) and rows [B*G, 2*B*G) their unconditional twins.
       The shared-prefix decode attention (shared_prefix.py) reads each prefix once per group when the
       language model allows it, else each prefix is copied into its G rows (RolloutCache.fork);
    3. every step: the last hidden state -> generation_head -> l_c (conditional rows), l_u (their
       twins); guided = l_u + w (l_c - l_u) in fp32; one fused sampling step on the guided logits
       (ttrl_fast.ops.sampling.sample_tokens: temperature -> top-k -> top-p -> min-p -> race keyed by
       (seed, prompt content + occurrence, g, step), so draws do not depend on batch order or
       chunking); the token is embedded with prepare_embeddings_for_image_generation and fed to both
       rows of its pair.
Every image has exactly num_image_tokens tokens: no stop ids, SamplingParams.max_tokens is ignored.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ttrl_fast.ops import sampling as _sampling_op
from ttrl_fast.sampler import shared_prefix as _shared
from ttrl_fast.sampler.cache import RolloutCache
from ttrl_fast.sampler.draw import kernel_params, prompt_key, row_key
from ttrl_fast.sampler.padding import check_prompt_ids, left_pad, positions_from_mask
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.rollout import RolloutBatch

LOGPROB_MODES = ("cond", "cfg")
DECODE_ATTENTION = ("auto", "shared_prefix", "model")


def guided_logits(cond: Tensor, uncond: Tensor, weight: float) -> Tensor:
    """CFG logits l_u + w (l_c - l_u), fp32 (what the sampler draws from; [rows, V])."""
    uncond = uncond.float()
    return uncond + weight * (cond.float() - uncond)


def unconditional_prompt(prompt: Sequence[int], pad_token_id: int) -> list[int]:
    """The CFG twin of a prompt: first (BOS) and last (image start) token kept, the rest pad.

    Positional like the official Janus code (tokens[1:-1] = pad); HF's generate() instead keeps every
    BOS / BOI id wherever it sits, which is the same for a prompt [BOS, text, BOI]."""
    prompt = [int(t) for t in prompt]
    if len(prompt) <= 2:
        return prompt
    return [prompt[0]] + [int(pad_token_id)] * (len(prompt) - 2) + [prompt[-1]]


def check_cfg_weight(value, name: str = "cfg_weight") -> float:
    """CFG weight w >= 1: w = 1 is the conditional model alone, w > 1 pushes away from the unconditional
    one (Janus uses 5); w < 1 would move towards ignoring the prompt, which no method here wants."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{name} must be a finite number >= 1 (1 = no guidance, Janus uses 5), got {value!r}")
    return float(value)


def check_logprob_mode(value, name: str = "logprob_mode") -> str:
    if value not in LOGPROB_MODES:
        raise ValueError(f"{name} must be one of {LOGPROB_MODES} ('cond': T2I-R1's conditional-row log-prob, "
                         f"'cfg': the guided sampling distribution), got {value!r}")
    return value


def unwrap_janus(model):
    """The JanusForConditionalGeneration inside `model` (a PEFT wrapper's base model: its LoRA layers are
    injected in place, so they stay active)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    if not (hasattr(inner, "prepare_embeddings_for_image_generation")
            and hasattr(getattr(inner, "model", None), "generation_head")
            and hasattr(inner.model, "language_model")):
        raise TypeError("model must be a transformers JanusForConditionalGeneration (or a PEFT model wrapping one), "
                        f"got {type(model).__name__}")
    return inner


def row_keys(prompts: Sequence[Sequence[int]], group: int, seed: int) -> Tensor:
    """[len(prompts) * group] int64 noise keys from (seed, prompt content + occurrence, g): the same
    rule as RolloutSampler, so a prompt's draws do not depend on its batch or chunk."""
    seen: dict[int, int] = {}
    keys = []
    for prompt in prompts:
        base = prompt_key(prompt)
        occurrence = seen.get(base, 0)
        seen[base] = occurrence + 1
        uid = base ^ (occurrence * 0x9E3779B9 & 0xFFFFFFFF)
        keys.extend(row_key(seed, uid, g) for g in range(group))
    return torch.tensor(keys, dtype=torch.int64)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class CFGImageSampler:
    """Batched KV-cache CFG sampler of Janus image tokens for GRPO rollouts.

    Args:
        model: a JanusForConditionalGeneration (or a PEFT model wrapping one); its dtype and device are used.
        max_rows: most cache rows at once, conditional and unconditional together (a chunk holds
            max_rows // (2 G) prompts); a group never splits, so max_rows >= 2 G.
        max_seq_len: cache positions per row: the longest prompt plus num_image_tokens.
        backend: the sample_tokens backend (None = automatic).
        pad_token_id: fills the unconditional prompts and the left padding (default: the model's
            generation_config / text config pad id). The policy must use the same id.
        cfg_weight: w in l_u + w (l_c - l_u), >= 1.
        logprob_mode: what RolloutBatch.logprobs holds, at the sampled token, T = the sampling temperature
            (1 when greedy):
            "cfg"  = log_softmax(guided / T): the exact sampling distribution (Janus-Pro-R1 instead scores
                     log_softmax(guided / w), i.e. l_c - (w-1)/w l_u, which is not what was sampled);
            "cond" = log_softmax(l_c / T): the conditional row alone (T2I-R1; off-policy w.r.t. the draw).
        num_image_tokens: tokens per image (default config.vision_config.num_image_tokens).
        decode_attention: "auto" (shared_prefix when the language model allows it, else model),
            "shared_prefix" or "model" (forked copies through the model's own attention).
    Attributes:
        step_hook: None or f(step, l_c [B*G, V], l_u [B*G, V], guided [B*G, V] fp32) called every step of
            every chunk (debugging and tests; the tensors are the ones sampled from).
    """

    def __init__(self, model, *, max_rows: int, max_seq_len: int, backend: str | None = None,
                 pad_token_id: int | None = None, cfg_weight: float = 5.0, logprob_mode: str = "cond",
                 num_image_tokens: int | None = None, decode_attention: str = "auto"):
        self.max_rows = _positive_int("max_rows", max_rows)
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        self.janus = unwrap_janus(model)
        self.lm = self.janus.model.language_model
        self.head = self.janus.model.generation_head
        self.cfg_weight = check_cfg_weight(cfg_weight)
        self.logprob_mode = check_logprob_mode(logprob_mode)
        config = self.janus.config
        if num_image_tokens is None:
            num_image_tokens = int(config.vision_config.num_image_tokens)
        self.num_image_tokens = _positive_int("num_image_tokens", num_image_tokens)
        text = self.lm.config
        if pad_token_id is None:
            pad_token_id = getattr(getattr(self.janus, "generation_config", None), "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(text, "pad_token_id", None)
        if pad_token_id is None:
            raise ValueError("pad_token_id is needed (the unconditional prompts are made of it) and the model's "
                             "generation / text config has none: pass pad_token_id=")
        self.pad_token_id = int(pad_token_id)
        self.text_vocab = int(text.vocab_size)
        if not 0 <= self.pad_token_id < self.text_vocab:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the text vocabulary [0, {self.text_vocab})")
        self.image_vocab = int(self.head.vision_head.out_features)
        self.backend = backend or ""
        self.decode_attention = self._choose_decode_attention(decode_attention)
        self.cache = RolloutCache(text.num_hidden_layers, self.max_rows, self.max_seq_len)
        self.step_hook: Callable[[int, Tensor, Tensor, Tensor], None] | None = None

    def _choose_decode_attention(self, requested: str) -> str:
        if requested not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}, got {requested!r}")
        reason = _shared.unsupported_reason(self.lm)
        if requested == "auto":
            return "shared_prefix" if reason is None else "model"
        if requested == "shared_prefix" and reason is not None:
            raise ValueError(f"decode_attention='shared_prefix' cannot serve this model: {reason}")
        return requested

    # ------------------------------------------------------------------ public
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> RolloutBatch:
        """params.n images per prompt (token-id lists ending with the image-start token). Returns a
        RolloutBatch: completion_ids [B*G, N] image-codebook ids, completion_mask all True, finish
        "length", logprobs per logprob_mode; processed_logprobs / log_kept_mass (when asked for or when
        truncating) describe the guided distribution actually sampled from, in both modes."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a ttrl_fast.SamplingParams, got {type(params).__name__}")
        if params.repetition_penalty != 1.0:
            raise ValueError("SamplingParams.repetition_penalty is not supported for image tokens (must be 1.0)")
        if params.allowed_token_ids is not None:
            raise ValueError("SamplingParams.allowed_token_ids is not supported for image tokens (every codebook "
                             "entry is an image token)")
        if params.logprobs == "processed" and self.logprob_mode == "cond":
            raise ValueError("SamplingParams.logprobs='processed' describes the guided distribution: it needs "
                             "logprob_mode='cfg'")
        prompts = self._check_prompts(prompts)
        group = params.n
        if 2 * group > self.max_rows:
            raise ValueError(f"SamplingParams.n={group} needs 2 * n = {2 * group} cache rows (conditional + "
                             f"unconditional) but max_rows={self.max_rows}: a group never splits")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        device = next(self.janus.parameters()).device
        rows, steps = len(prompts) * group, self.num_image_tokens
        out = {name: torch.zeros(rows, steps, dtype=torch.float32, device=device)
               for name in ("logprobs", "processed", "kept")}
        out["ids"] = torch.zeros(rows, steps, dtype=torch.int64, device=device)
        keys = row_keys(prompts, group, seed).to(device)
        per_chunk = self.max_rows // (2 * group)
        was_training = self.janus.training
        self.janus.eval()
        try:
            with torch.inference_mode():
                for first in range(0, len(prompts), per_chunk):
                    chunk = prompts[first:first + per_chunk]
                    span = slice(first * group, (first + len(chunk)) * group)
                    self._run_chunk(chunk, span, keys[span], params, out)
        finally:
            self.janus.train(was_training)
        extras = params.logprobs != "raw" or params.truncates
        logprobs = out["processed"] if params.logprobs == "processed" else out["logprobs"]
        return RolloutBatch(
            prompt_ids=prompts, completion_ids=out["ids"],
            completion_mask=torch.ones(rows, steps, dtype=torch.bool, device=device),
            logprobs=logprobs, processed_logprobs=out["processed"] if extras else None,
            log_kept_mass=out["kept"] if extras else None, finish_reason=["length"] * rows,
            group_index=torch.arange(len(prompts), device=device).repeat_interleave(group),
            prompt_lengths=torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(group),
            group_size=group)

    # ------------------------------------------------------------------ steps
    def _run_chunk(self, prompts: list[list[int]], span: slice, keys: Tensor, params: SamplingParams,
                   out: dict) -> None:
        group, count = params.n, len(prompts)
        rows = count * group  # conditional rows; the cache holds 2 * rows
        device = keys.device
        prefixes = prompts + [unconditional_prompt(p, self.pad_token_id) for p in prompts]  # [2B]
        ids, valid = left_pad(prefixes, self.pad_token_id, device)
        width = ids.shape[1]
        masked = not bool(valid.all())  # no padding: no mask at all (SDPA's causal fast path)
        self.cache.reset()
        embeds = self.janus.get_input_embeddings()(ids)
        logits = self._forward(embeds, self._prefill_mask(valid) if masked else None, positions_from_mask(valid))
        self.cache.advance(width)
        sharing = None
        if self.decode_attention == "shared_prefix" and group > 1:
            sharing = _shared.SharedPrefixState(self.cache, 2 * count, group, width, slots=None,
                                                prefix_valid=valid.clone() if masked else None)
            self.cache.share_prefix()
        else:
            self.cache.fork(2 * count, group)
            valid = torch.cat([valid.repeat_interleave(group, 0),  # key positions visible per decode row
                               torch.zeros(2 * rows, self.max_seq_len - width, dtype=torch.bool, device=device)], 1)
        logits = logits.repeat_interleave(group, 0)  # [2 * rows, V]: each group's G draws share the first logits
        positions = torch.tensor([len(p) for p in prefixes], device=device).repeat_interleave(group)
        temperature = 1.0 if params.greedy else float(params.temperature)
        iparams, fparams = kernel_params(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                         min_p=params.min_p, repetition_penalty=1.0, vocab=logits.shape[-1])
        for step in range(self.num_image_tokens):
            cond, uncond = logits[:rows], logits[rows:]
            guided = guided_logits(cond, uncond, self.cfg_weight).contiguous()
            if self.step_hook is not None:
                self.step_hook(step, cond, uncond, guided)
            tokens, raw, processed, kept = _sampling_op.sample_tokens(guided, keys, step, None, None, iparams,
                                                                      fparams, self.backend)
            if self.logprob_mode == "cond":  # T2I-R1: the conditional row's own distribution
                raw = torch.log_softmax(cond.float() / temperature, -1).gather(1, tokens[:, None]).squeeze(1)
            out["ids"][span, step] = tokens
            out["logprobs"][span, step] = raw
            out["processed"][span, step] = processed
            out["kept"][span, step] = kept
            if step == self.num_image_tokens - 1:
                break
            embeds = self.janus.prepare_embeddings_for_image_generation(tokens.repeat(2)[:, None])  # both rows
            step_positions = (positions + step)[:, None]
            if sharing is not None:  # the prefixes' padding is the shared attention's business: no mask
                with _shared.active(self.lm, sharing):
                    logits = self._forward(embeds, None, step_positions)
            else:
                valid[:, self.cache.length] = True
                mask = self._model_mask(valid[:, None, None, :self.cache.length + 1]) if masked else None
                logits = self._forward(embeds, mask, step_positions)
            self.cache.advance(1)

    def _forward(self, embeds: Tensor, mask: Tensor | None, positions: Tensor) -> Tensor:
        """Image-token logits [rows, V_img] of the last position (the generation head, not lm_head)."""
        hidden = self.lm(inputs_embeds=embeds.to(self.janus.dtype), attention_mask=mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True).last_hidden_state
        return self.head(hidden[:, -1])

    # ------------------------------------------------------------------ masks
    def _attention_kind(self) -> str:
        return getattr(self.lm.config, "_attn_implementation", None) or "sdpa"

    def _model_mask(self, allowed: Tensor) -> Tensor:
        """A [rows, 1, q, kv] mask in the format the language model's attention takes as-is."""
        kind = self._attention_kind()
        if kind == "eager":
            dtype = self.janus.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        if kind != "sdpa":  # other kernels (flash) build their own mask from the 2D one
            return allowed[:, 0, -1].long()
        return allowed  # SDPA: bool, True = attend

    def _prefill_mask(self, valid: Tensor) -> Tensor:
        if self._attention_kind() not in ("sdpa", "eager"):
            return valid.long()
        length = valid.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril_()[None] & valid[:, None, :]
        # a padding query would see no key at all (NaN in SDPA): let it see itself; no real token attends to it
        allowed |= torch.eye(length, dtype=torch.bool, device=valid.device)[None]
        return self._model_mask(allowed[:, None])

    # ------------------------------------------------------------------ checks
    def _check_prompts(self, prompts) -> list[list[int]]:
        return check_prompt_ids(prompts, vocab_size=self.text_vocab, max_seq_len=self.max_seq_len,
                                room=self.num_image_tokens, room_name="num_image_tokens", vocab_name="text vocabulary")
