"""`RolloutSampler`: G completions per prompt from an HF causal LM, each prompt prefilled once.

Per chunk of whole groups (B_c prompts, B_c * G rows <= max_rows):
    1. prefill the B_c unique prompts, left-padded to a common length P (positions = cumsum(mask) - 1,
       the convention HF generate uses), keeping only the last position's logits;
    2. share or fork: by default (plain-attention models) the G rows of a prompt read its KV from one
       copy through the shared-prefix attention (shared_prefix.py: the prompt is read once per group
       per step, not G times); otherwise each prompt's KV is copied into its G rows. Its last logits
       are repeated G times (the first token is then G independent draws from one distribution: exact);
    3. decode in lock-step: one fused sampling step per token (ttrl_fast.sample_tokens: penalty ->
       temperature -> top-k -> top-p -> min-p -> exponential race keyed by (seed, prompt, g, step)),
       recording the token and its raw log-prob (log_softmax(logits / T) over the full vocabulary:
       what the trainer recomputes, so no second forward is needed);
    4. rows finish on a stop id (kept in the mask) or at max_tokens; once fewer than
       compact_threshold of the rows are still decoding they are compacted into a dense prefix, so
       decode time follows the sum of completion lengths rather than rows x the longest.
Rows come back prompt-major (row = b * G + g, TRL's order).

Multimodal prompts (VLMs): `prefill_inputs` gives each prompt extra kwargs for its prefill forward only
(pixel_values, image_grid_thw, ...; batched per chunk by positions.batch_prefill), so each image is
encoded once per prompt and its G rows share the prefilled KV. Models with M-RoPE (Qwen2-VL /
Qwen2.5-VL) take their prefill positions from the model's get_rope_index and decode at
cumsum position + a per-prompt delta (positions.MRopePositions); every other model keeps cumsum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ttrl_fast.cpu_linear import decode_linears
from ttrl_fast.ops import sampling as _sampling_op
from ttrl_fast.sampler import flash_decode as _flash
from ttrl_fast.sampler import shared_prefix as _shared
from ttrl_fast.sampler.cache import RolloutCache
from ttrl_fast.sampler.draw import kernel_params, prompt_key, row_key
from ttrl_fast.sampler.padding import check_prompt_ids, left_pad, positions_from_mask
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.positions import batch_prefill, check_prefill_inputs, position_scheme


@dataclass
class RolloutBatch:
    """Completions of B prompts x G samples; rows are prompt-major (row = b * G + g).

    Attributes:
        prompt_ids: the B prompts, unpadded.
        completion_ids: [B*G, N] int64, right-padded with the pad id (N = longest completion).
        completion_mask: [B*G, N] bool, True up to and including the first stop token.
        logprobs: [B*G, N] fp32 raw log-probs (log_softmax(logits / T) at the sampled token; the
            processed ones when SamplingParams.logprobs == "processed"); 0 where the mask is False.
        processed_logprobs: [B*G, N] fp32 log-prob under the distribution actually sampled from (after
            penalty and truncation), or None when not asked for and nothing truncates.
        log_kept_mass: [B*G, N] fp32 log of the mass truncation kept (processed = raw - log_kept_mass
            without repetition penalty), or None like processed_logprobs.
        finish_reason: B*G strings, "stop" or "length".
        group_index: [B*G] int64 prompt index of each row.
        prompt_lengths: [B*G] int64.
    """

    prompt_ids: list[list[int]]
    completion_ids: Tensor
    completion_mask: Tensor
    logprobs: Tensor
    processed_logprobs: Tensor | None
    log_kept_mass: Tensor | None
    finish_reason: list[str]
    group_index: Tensor
    prompt_lengths: Tensor
    group_size: int

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)

    def completions(self) -> list[list[int]]:
        """Unpadded completion token ids per row (stop token included)."""
        return [row[:n].tolist() for row, n in zip(self.completion_ids.cpu(), self.completion_lengths.tolist())]

    def to_trl(self) -> dict:
        """TRL's rollout_func contract: prompt_ids, completion_ids, logprobs as lists per row."""
        lengths = self.completion_lengths.tolist()
        logprobs = self.logprobs.cpu()
        return {
            "prompt_ids": [self.prompt_ids[b] for b in self.group_index.tolist()],
            "completion_ids": self.completions(),
            "logprobs": [logprobs[i, :n].tolist() for i, n in enumerate(lengths)],
        }


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class RolloutSampler:
    """Batched KV-cache sampler for GRPO rollouts.

    Args:
        model: an HF causal LM (Llama, Qwen2, ... through the standard Cache API), or an HF VLM (InternVL,
            Qwen2(.5)-VL: images through generate's prefill_inputs); its dtype and device are used as they are.
        max_rows: most rows (prompts x G) decoded at once; bigger batches run in chunks of whole groups.
        max_seq_len: cache positions per row; must hold the longest prompt plus max_tokens.
        pad_token_id: fills completions after they stop (default: generation config's pad, else the
            first EOS id, else 0). May equal an EOS id: masks come from the stop position, not from pads.
        eos_token_ids: stop ids (default: the model's generation_config / config eos_token_id, int or list).
        compact_threshold: compact the batch once fewer than this fraction of its rows still decode.
        backend: the sample_tokens backend (None = automatic).
        decode_attention: "shared_prefix" (one copy of each prompt's KV read once per group; needs a
            plain-attention model with sdpa / eager attention), "flash" (flash_attn_with_kvcache on the
            cache, CUDA + flash-attn >= 2.6), "model" (the model's own attention over G forked copies),
            or "auto": flash where it can run, else shared_prefix where it can, else model. Groups of one
            always use the model's attention or flash.
    """

    def __init__(self, model, *, max_rows: int, max_seq_len: int, pad_token_id: int | None = None,
                 eos_token_ids: int | Sequence[int] | None = None, compact_threshold: float = 0.75,
                 backend: str | None = None, decode_attention: str = "auto"):
        if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
            raise TypeError(f"model must be an HF causal LM (a torch.nn.Module with a .config), got "
                            f"{type(model).__name__}")
        for name, value in (("max_rows", max_rows), ("max_seq_len", max_seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= compact_threshold <= 1:
            raise ValueError(f"compact_threshold must be in [0, 1], got {compact_threshold!r}")
        self.model = model
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        generation = getattr(model, "generation_config", None)
        if eos_token_ids is None:
            eos_token_ids = getattr(generation, "eos_token_id", None)
            if eos_token_ids is None:
                eos_token_ids = getattr(config, "eos_token_id", None)
        self.eos_token_ids = _as_id_list(eos_token_ids)
        if pad_token_id is None:
            pad_token_id = getattr(generation, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad_token_id)
        self.max_rows, self.max_seq_len = max_rows, max_seq_len
        self.compact_threshold = compact_threshold
        self.backend = backend or ""
        self.decode_attention = self._choose_decode_attention(model, decode_attention)
        self._text_config = config  # holds the decoder's attention implementation (a sub-config in VLMs)
        self.positions = position_scheme(model)  # None: cumsum positions (every text LM, InternVL)
        self.cache = RolloutCache(config.num_hidden_layers, max_rows, max_seq_len)
        self.vocab_size = int(config.vocab_size)
        self._valid: Tensor | None = None  # [max_rows, max_seq_len] bool: key positions that are not padding
        self._masked = True  # False while the current chunk has no padding
        self._lockstep = False  # True while generating with an FSDP2-sharded model (see _any_rank_alive)

    # ------------------------------------------------------------------ public
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, *,
                 prefill_inputs: Sequence[dict] | None = None) -> RolloutBatch:
        """Sample params.n completions for each prompt (lists of token ids); see RolloutBatch.

        prefill_inputs: None, or one dict per prompt of extra model kwargs for its prefill forward
            (e.g. {"pixel_values": [n_img, 3, H, W]} for InternVL, {"pixel_values": [n_patches, D],
            "image_grid_thw": [n_img, 3]} for Qwen2.5-VL; the prompt's ids hold the image placeholders).
        """
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a ttrl_fast.SamplingParams, got {type(params).__name__}")
        prompts = self._check_prompts(prompts, params)
        extras = check_prefill_inputs(prefill_inputs, len(prompts))
        group = params.n
        for name in ("allowed_token_ids", "stop_token_ids"):  # an id from another tokenizer is never drawn
            ids = getattr(params, name)
            if ids and max(ids) >= self.vocab_size:
                raise ValueError(f"SamplingParams.{name} must be < vocab_size={self.vocab_size}, got {max(ids)}")
        if group > self.max_rows:
            raise ValueError(f"SamplingParams.n={group} exceeds max_rows={self.max_rows}: a group never splits")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        stops = sorted(set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids)))
        device = self._device()
        rows = len(prompts) * group
        steps = params.max_tokens
        out = {
            "ids": torch.full((rows, steps), self.pad_token_id, dtype=torch.int64, device=device),
            "mask": torch.zeros(rows, steps, dtype=torch.bool, device=device),
            "raw": torch.zeros(rows, steps, dtype=torch.float32, device=device),
            "processed": torch.zeros(rows, steps, dtype=torch.float32, device=device),
            "kept": torch.zeros(rows, steps, dtype=torch.float32, device=device),
            "stopped": torch.zeros(rows, dtype=torch.bool, device=device),
        }
        keys = self._row_keys(prompts, group, seed).to(device)
        per_chunk = self.max_rows // group
        was_training = self.model.training
        self.model.eval()
        try:
            # inference_mode is faster, but FSDP2 reuses its gathered-parameter buffers in training, which
            # must not become inference tensors: plain no_grad for sharded models
            sharded = any(hasattr(p, "device_mesh") for p in self.model.parameters())
            self._lockstep = sharded  # FSDP2: every rank must run the same forwards (collectives inside)
            # fp32 CPU decode steps: the model's linear layers on ttrl_fast's skinny GEMM (MKL's small-M
            # paths are slow on AMD CPUs; cpu_linear.py), restored when generate returns
            with torch.no_grad() if sharded else torch.inference_mode(), decode_linears(self.model):
                for first in range(0, len(prompts), per_chunk):
                    chunk = prompts[first:first + per_chunk]
                    self._run_chunk(chunk, first * group, keys[first * group:(first + len(chunk)) * group],
                                    params, stops, out,
                                    None if extras is None else extras[first:first + per_chunk], first)
        finally:
            self.model.train(was_training)
        return self._batch(prompts, params, out)

    # ------------------------------------------------------------------ steps
    def _run_chunk(self, prompts: list[list[int]], row0: int, keys: Tensor, params: SamplingParams,
                   stops: list[int], out: dict, extras: list[dict] | None = None, first: int = 0) -> None:
        group, device = params.n, self._device()
        prompt_count, rows = len(prompts), len(prompts) * group
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64, device=device)
        padded = int(lengths.max())
        ids, prompt_mask = left_pad(prompts, self.pad_token_id, device)  # every row writes at one position
        valid = self._valid_buffer(device)
        valid[:prompt_count, :padded] = prompt_mask
        positions = positions_from_mask(prompt_mask)
        delta = None  # per-prompt offset of the decode positions (M-RoPE models with images only)
        prefill_kwargs = {}
        if extras is not None:
            prefill_kwargs = batch_prefill(extras, [len(p) for p in prompts], padded, device, first)
            if self.positions is not None:
                positions, delta = self.positions.prefill(ids, prompt_mask, prefill_kwargs)

        # without padding every key is visible: no mask at all (SDPA's causal / unmasked fast paths)
        self._masked = bool((lengths != padded).any())
        self.cache.reset()
        logits = self._forward(ids, self._prefill_mask(valid[:prompt_count, :padded]), positions, last_only=True,
                               **prefill_kwargs)
        self.cache.advance(padded)
        sharing = flash = None
        if self.decode_attention == "shared_prefix" and group > 1:
            sharing = _shared.SharedPrefixState(self.cache, prompt_count, group, padded, slots=None,
                                                prefix_valid=valid[:prompt_count, :padded].clone()
                                                if self._masked else None)
            self.cache.share_prefix()
        else:
            self.cache.fork(prompt_count, group)
            if self.decode_attention == "flash":  # rows read [left padding, write pointer] in place
                flash = _flash.FlashDecodeState(self.cache, seqlens=torch.empty(0), leftpad=(
                    padded - lengths).repeat_interleave(group).to(torch.int32))
        valid[:rows, :padded] = valid[:prompt_count, :padded].repeat_interleave(group, 0)
        logits = logits.repeat_interleave(group, 0)

        row_index = torch.arange(row0, row0 + rows, device=device)  # current row -> output row
        positions = lengths.repeat_interleave(group)  # position of the next token fed, per row
        if delta is not None:  # M-RoPE: text after an image continues from its max position + 1
            positions = positions + delta.repeat_interleave(group)
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        stop_ids = torch.tensor(stops, dtype=torch.int64, device=device) if stops else None
        vocab = logits.shape[-1]
        banned = None  # ids outside allowed_token_ids: never drawn (the raw log-prob ignores the ban)
        if params.allowed_token_ids is not None:
            allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
            allowed[torch.tensor([t for t in params.allowed_token_ids if t < vocab], dtype=torch.int64,
                                 device=device)] = True
            banned = (~allowed).nonzero().squeeze(1)
            if stop_ids is not None and not allowed[stop_ids].any():
                stop_ids = None  # no stop id can ever be drawn
        early_ban = banned if stop_ids is None else (stop_ids if banned is None else torch.cat([banned, stop_ids]))
        seen = self._seen(prompts, group, logits.shape[-1], params, device)
        iparams, fparams = kernel_params(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                         min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                                         vocab=vocab)
        for step in range(params.max_tokens):
            ban = early_ban if step < params.min_tokens else banned
            tokens, raw, processed, kept = _sampling_op.sample_tokens(
                logits, keys, step, seen, ban, iparams, fparams, self.backend)
            live = row_index[alive]
            out["ids"][live, step] = tokens[alive]
            out["mask"][live, step] = True
            out["raw"][live, step] = raw[alive]
            out["processed"][live, step] = processed[alive]
            out["kept"][live, step] = kept[alive]
            if stop_ids is not None:
                hit = torch.isin(tokens, stop_ids) & alive
                out["stopped"][row_index[hit]] = True
                alive &= ~hit
            if step == params.max_tokens - 1 or not self._any_rank_alive(alive):
                break
            count = int(alive.sum())
            if 0 < count < self.compact_threshold * alive.numel():  # drop finished rows from the batch
                keep = alive.nonzero().squeeze(1)
                self.cache.keep_rows(keep)
                valid[:count, :self.cache.length] = valid[:alive.numel(), :self.cache.length].index_select(0, keep)
                row_index, positions, keys, tokens = row_index[keep], positions[keep], keys[keep], tokens[keep]
                if sharing is not None:
                    sharing.slots = row_index - row0  # each row's place b * G + g in its group
                if flash is not None:
                    flash.leftpad = flash.leftpad[keep].contiguous()
                seen = None if seen is None else seen[keep]
                alive = alive[keep]
            if seen is not None:
                seen[torch.arange(tokens.numel(), device=device), tokens] = True
            current = alive.numel()
            if sharing is not None:  # the prefix padding is the shared attention's business; no mask
                with _shared.active(self.model, sharing):
                    logits = self._forward(tokens[:, None], None, (positions + step)[:, None], last_only=False)
            elif flash is not None:  # likewise left padding for the kvcache kernel (cache_leftpad)
                flash.seqlens = torch.full((current,), self.cache.length + 1, dtype=torch.int32, device=device)
                with _flash.active(self.model, flash):
                    logits = self._forward(tokens[:, None], None, (positions + step)[:, None], last_only=False)
            else:
                valid[:current, self.cache.length] = True
                mask = self._decode_mask(valid[:current, :self.cache.length + 1])
                logits = self._forward(tokens[:, None], mask, (positions + step)[:, None], last_only=False)
            self.cache.advance(1)

    def _forward(self, ids: Tensor, mask: Tensor | None, positions: Tensor, *, last_only: bool,
                 **extra) -> Tensor:
        """Next-token logits [rows, V] (last position only). positions: [rows, q], or [3, rows, q] for
        M-RoPE prefill; extra: the prefill's image kwargs."""
        kwargs = {"logits_to_keep": 1} if last_only else {}
        output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=self.cache, use_cache=True, **kwargs, **extra)
        return output.logits[:, -1, :]

    @staticmethod
    def _choose_decode_attention(model, requested: str) -> str:
        reasons = {"shared_prefix": _shared.unsupported_reason(model), "flash": _flash.unsupported_reason(model),
                   "model": None}
        if requested == "auto":
            return next(kind for kind in ("flash", "shared_prefix", "model") if reasons[kind] is None)
        if requested not in reasons:
            raise ValueError(f"decode_attention must be 'auto', 'shared_prefix', 'flash' or 'model', got {requested!r}")
        if reasons[requested] is not None:
            raise ValueError(f"decode_attention={requested!r} cannot serve this model: {reasons[requested]}")
        return requested

    # ------------------------------------------------------------------ masks
    def _attention_kind(self) -> str:
        return getattr(self._text_config, "_attn_implementation", None) or "sdpa"

    def _as_model_mask(self, allowed: Tensor) -> Tensor:
        """A 4D [rows, 1, q, kv] mask in the format the model's attention takes as-is."""
        kind = self._attention_kind()
        if kind == "eager":
            dtype = self.model.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        return allowed  # SDPA: bool, True = attend

    def _prefill_mask(self, valid: Tensor) -> Tensor | None:
        if not self._masked:
            return None
        if self._attention_kind() not in ("sdpa", "eager"):
            return valid.long()  # other kernels (flash) build their own mask from the 2D one
        length = valid.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril_()
        allowed = causal[None] & valid[:, None, :]
        # a padding query would see no key at all (NaN in SDPA): let it see itself; no real token
        # ever attends to it
        allowed |= torch.eye(length, dtype=torch.bool, device=valid.device)[None]
        return self._as_model_mask(allowed[:, None])

    def _decode_mask(self, valid: Tensor) -> Tensor | None:
        if not self._masked:
            return None
        if self._attention_kind() not in ("sdpa", "eager"):
            return valid.long()
        return self._as_model_mask(valid[:, None, None, :])

    # ------------------------------------------------------------------ helpers
    def _any_rank_alive(self, alive: Tensor) -> bool:
        """Whether any row still decodes, on this rank or, for FSDP2-sharded models, on any rank: a rank
        whose rows all stopped keeps stepping (its outputs are not recorded) so the gathers stay paired."""
        local = bool(alive.any())
        if not getattr(self, "_lockstep", False):
            return local
        flag = torch.tensor([int(local)], device=alive.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _valid_buffer(self, device) -> Tensor:
        if self._valid is None or self._valid.device != device:
            self._valid = torch.zeros(self.max_rows, self.max_seq_len, dtype=torch.bool, device=device)
        return self._valid

    def _check_prompts(self, prompts, params: SamplingParams) -> list[list[int]]:
        return check_prompt_ids(prompts, vocab_size=self.vocab_size, max_seq_len=self.max_seq_len,
                                room=params.max_tokens, room_name="max_tokens")

    @staticmethod
    def _row_keys(prompts: list[list[int]], group: int, seed: int) -> Tensor:
        """Noise key per row from (seed, prompt content + occurrence, g): independent of order and chunking."""
        seen: dict[int, int] = {}
        keys = []
        for prompt in prompts:
            base = prompt_key(prompt)
            occurrence = seen.get(base, 0)
            seen[base] = occurrence + 1
            uid = base ^ (occurrence * 0x9E3779B9 & 0xFFFFFFFF)
            keys.extend(row_key(seed, uid, g) for g in range(group))
        return torch.tensor(keys, dtype=torch.int64)

    def _seen(self, prompts, group, vocab, params: SamplingParams, device) -> Tensor | None:
        if params.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)
        for b, prompt in enumerate(prompts):
            seen[b, torch.tensor(prompt, device=device)] = True
        return seen.repeat_interleave(group, 0)

    def _batch(self, prompts, params: SamplingParams, out: dict) -> RolloutBatch:
        group = params.n
        width = max(1, int(out["mask"].sum(-1).max()))
        mask = out["mask"][:, :width]
        extras = params.logprobs != "raw" or params.truncates
        logprobs = out["processed"] if params.logprobs == "processed" else out["raw"]
        reasons = ["stop" if s else "length" for s in out["stopped"].tolist()]
        device = mask.device
        return RolloutBatch(
            prompt_ids=prompts,
            completion_ids=out["ids"][:, :width].clone(),
            completion_mask=mask.clone(),
            logprobs=logprobs[:, :width].clone(),
            processed_logprobs=out["processed"][:, :width].clone() if extras else None,
            log_kept_mass=out["kept"][:, :width].clone() if extras else None,
            finish_reason=reasons,
            group_index=torch.arange(len(prompts), device=device).repeat_interleave(group),
            prompt_lengths=torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(group),
            group_size=group,
        )
