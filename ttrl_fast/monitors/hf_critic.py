"""`HFTextUnderstander`: the Understander protocol for a Hugging Face causal LM reading text."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Sequence

import torch
from torch import Tensor

from ttrl_fast.sampler.padding import left_pad, positions_from_mask

TRUNCATIONS = ("error", "left")


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft absent: nothing can be a PEFT model
        return False
    return isinstance(model, PeftModel)


class HFTextUnderstander:
    """Critic over an HF causal LM and a tokenizer with ``encode`` / ``decode`` (CharTokenizer or HF).

    yes_prob((output, question)): the prompt ``question_template.format(output=..., question=...)`` is
        encoded (with BOS / special tokens), and P(yes) = softmax(logits)[yes] / (softmax[yes] +
        softmax[no]) = sigmoid(l_yes - l_no) at the next-token position. Default yes / no ids: the first
        token of " yes" / " no", or of "yes" / "no" when those coincide (a character tokenizer); pass
        ``yes_token`` / ``no_token`` (an id or a string whose first token is used) to choose.
    generate_text: ttrl_fast.RolloutSampler, greedy at temperature 0, stopping at the tokenizer's EOS.
    sequence_logprob(contexts, targets): mean log P(target tokens | context) from one teacher-forced
        forward (context with special tokens, target without).
    Inputs are batched (``batch_size`` rows per forward) with LEFT padding, an attention mask and
    position_ids = cumsum(mask) - 1, under torch.no_grad() and model.eval() (the training flag is
    restored). ``use_base_weights=True`` scores inside ``model.disable_adapter()`` of a PEFT model: the
    frozen initial weights without a copy (Meta-TTRL's frozen introspector). ``truncation``: "error"
    (default) raises when an input exceeds ``max_length`` tokens, "left" drops its oldest tokens.
    ``last_yes_no_mass`` holds softmax[yes] + softmax[no] of the last yes_prob call (how much of the
    critic's mass the two answers get).
    """

    def __init__(self, model, tokenizer, *, question_template: str = "{output}\nQuestion: {question}\nAnswer:",
                 yes_token: int | str | None = None, no_token: int | str | None = None,
                 use_base_weights: bool = False, max_length: int = 2048, batch_size: int = 16,
                 truncation: str = "error", seed: int | None = None):
        for attr in ("encode", "decode"):
            if not callable(getattr(tokenizer, attr, None)):
                raise TypeError(f"HFTextUnderstander: tokenizer must have {attr}(), got {type(tokenizer).__name__}")
        if not isinstance(question_template, str) or "{output}" not in question_template \
                or "{question}" not in question_template:
            raise ValueError("HFTextUnderstander: question_template must contain {output} and {question}, "
                             f"got {question_template!r}")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HFTextUnderstander: {name} must be a positive int, got {value!r}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"HFTextUnderstander: truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        if use_base_weights and not _is_peft_model(model):
            raise ValueError("HFTextUnderstander: use_base_weights=True needs a PEFT model (peft.PeftModel, "
                             "e.g. from get_peft_model) whose disable_adapter() gives the base weights; got "
                             f"{type(model).__name__}")
        self.model, self.tokenizer = model, tokenizer
        self.question_template = question_template
        self.use_base_weights = bool(use_base_weights)
        self.max_length, self.batch_size, self.truncation, self.seed = max_length, batch_size, truncation, seed
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size = int(config.vocab_size)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_id = int(eos) if eos is not None else None
        self.yes_id, self.no_id = self._answer_ids(yes_token, no_token)
        self.last_yes_no_mass: Tensor | None = None
        self._sampler = None

    # ------------------------------------------------------------------------------------- tokens
    def _encode(self, text: str, *, special: bool) -> list[int]:
        for kwargs in ({"add_special_tokens": special}, {"add_bos": special}):  # HF, then CharTokenizer
            try:
                ids = self.tokenizer.encode(text, **kwargs)
                break
            except TypeError:
                continue
        else:  # a plain encode(text)
            ids = self.tokenizer.encode(text)
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise ValueError(f"the tokenizer produced ids outside the model's vocabulary [0, {self.vocab_size})")
        return ids

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(ids)

    def _token_id(self, token: int | str, name: str) -> int:
        if isinstance(token, bool):
            raise ValueError(f"{name} must be a token id or a string, got {token!r}")
        if isinstance(token, int):
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"{name}={token} is outside the vocabulary [0, {self.vocab_size})")
            return token
        if isinstance(token, str):
            ids = self._encode(token, special=False)
            if not ids:
                raise ValueError(f"{name}={token!r} encodes to no token")
            return ids[0]
        raise ValueError(f"{name} must be a token id or a string, got {type(token).__name__}")

    def _answer_ids(self, yes_token, no_token) -> tuple[int, int]:
        if yes_token is not None or no_token is not None:
            yes = self._token_id(yes_token if yes_token is not None else " yes", "yes_token")
            no = self._token_id(no_token if no_token is not None else " no", "no_token")
        else:
            yes = no = None
            for pair in ((" yes", " no"), ("yes", "no")):
                try:
                    yes, no = self._token_id(pair[0], "yes_token"), self._token_id(pair[1], "no_token")
                except ValueError:
                    continue
                if yes != no:
                    break
            if yes is None:
                raise ValueError("HFTextUnderstander: the tokenizer cannot encode 'yes' / 'no'; pass yes_token and "
                                 "no_token ids")
        if yes == no:
            raise ValueError(f"HFTextUnderstander: the yes and no tokens must differ, both are id {yes}; pass "
                             f"yes_token / no_token")
        return yes, no

    def _fit(self, ids: list[int], limit: int, what: str) -> list[int]:
        if len(ids) <= limit:
            return ids
        if self.truncation == "left":
            return ids[len(ids) - limit:]
        raise ValueError(f"HFTextUnderstander: {what} has {len(ids)} tokens, more than max_length allows ({limit}); "
                         f"raise max_length or pass truncation='left'")

    # ------------------------------------------------------------------------------------- model
    def _device(self):
        return next(self.model.parameters()).device

    @contextmanager
    def _scoring(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), (self.model.disable_adapter() if self.use_base_weights else nullcontext()):
                yield
        finally:
            self.model.train(was_training)

    def _last_logits(self, rows: list[list[int]], keep: int) -> Tensor:
        """float32 logits [len(rows), keep, V] of the last `keep` positions of left-padded rows."""
        ids, mask = left_pad(rows, self.pad_token_id, self._device())
        mask = mask.long()
        positions = positions_from_mask(mask)
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
        except TypeError:  # a model without logits_to_keep
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions)
        return out.logits[:, -keep:, :].float()

    def _chunks(self, lengths: list[int]):
        """Index chunks of <= batch_size rows, rows of similar length together (less padding)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    # ------------------------------------------------------------------------------------- protocol
    def render(self, output: Any, question: str) -> str:
        if not isinstance(output, str):
            raise TypeError(f"HFTextUnderstander reads text outputs, got {type(output).__name__}")
        return self.question_template.format(output=output, question=question)

    def yes_prob(self, items: Sequence[tuple[Any, str]]) -> Tensor:
        rows = []
        for k, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"yes_prob items[{k}] must be an (output, question) pair, got {item!r}")
            ids = self._encode(self.render(item[0], str(item[1])), special=True)
            if not ids:
                raise ValueError(f"yes_prob items[{k}] renders to no tokens")
            rows.append(self._fit(ids, self.max_length, f"yes_prob items[{k}]"))
        probs = torch.empty(len(rows), dtype=torch.float32)
        mass = torch.empty(len(rows), dtype=torch.float32)
        if not rows:
            self.last_yes_no_mass = mass
            return probs
        with self._scoring():
            for chunk in self._chunks([len(r) for r in rows]):
                logits = self._last_logits([rows[i] for i in chunk], 1)[:, -1]
                log_p = torch.log_softmax(logits, -1)
                pair = log_p[:, [self.yes_id, self.no_id]]
                index = torch.tensor(chunk)
                probs[index] = torch.softmax(pair, -1)[:, 0].cpu()
                mass[index] = pair.exp().sum(-1).cpu()
        self.last_yes_no_mass = mass
        return probs

    def generate_text(self, prompts: Sequence[str], *, max_tokens: int = 64, temperature: float = 0.0) -> list[str]:
        from ttrl_fast.sampler import RolloutSampler, SamplingParams

        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"generate_text: max_tokens must be a positive int, got {max_tokens!r}")
        if max_tokens >= self.max_length:
            raise ValueError(f"generate_text: max_tokens={max_tokens} leaves no room for the prompt in "
                             f"max_length={self.max_length}")
        encoded = []
        for k, text in enumerate(prompts):
            if not isinstance(text, str):
                raise TypeError(f"generate_text prompts[{k}] must be a string, got {type(text).__name__}")
            ids = self._encode(text, special=True)
            if not ids:
                raise ValueError(f"generate_text prompts[{k}] encodes to no tokens")
            encoded.append(self._fit(ids, self.max_length - max_tokens, f"generate_text prompts[{k}]"))
        if not encoded:
            return []
        needed = max(len(e) for e in encoded) + max_tokens
        if self._sampler is None or self._sampler.max_seq_len < needed:
            eos = [self.eos_token_id] if self.eos_token_id is not None else None
            self._sampler = RolloutSampler(self.model, max_rows=self.batch_size, max_seq_len=needed,
                                           pad_token_id=self.pad_token_id, eos_token_ids=eos)
        params = SamplingParams(n=1, max_tokens=max_tokens, temperature=float(temperature), seed=self.seed)
        with self._scoring():
            batch = self._sampler.generate(encoded, params)
        texts = []
        stops = set(self._sampler.eos_token_ids)
        for ids in batch.completions():
            if ids and ids[-1] in stops:
                ids = ids[:-1]
            texts.append(self._decode(ids))
        return texts

    def sequence_logprob(self, contexts: Sequence[Any], targets: Sequence[str]) -> Tensor:
        if len(contexts) != len(targets):
            raise ValueError(f"sequence_logprob: {len(contexts)} contexts for {len(targets)} targets")
        rows, sizes = [], []
        for k, (context, target) in enumerate(zip(contexts, targets)):
            if not isinstance(context, str) or not isinstance(target, str):
                raise TypeError(f"sequence_logprob item {k}: context and target must be strings, got "
                                f"{type(context).__name__} and {type(target).__name__}")
            ctx, tgt = self._encode(context, special=True), self._encode(target, special=False)
            if not tgt:
                raise ValueError(f"sequence_logprob targets[{k}] encodes to no tokens")
            if not ctx:
                raise ValueError(f"sequence_logprob contexts[{k}] encodes to no tokens: the first target token "
                                 f"needs something to condition on")
            if len(tgt) >= self.max_length:
                raise ValueError(f"sequence_logprob targets[{k}] has {len(tgt)} tokens, max_length={self.max_length}")
            ctx = self._fit(ctx, self.max_length - len(tgt), f"sequence_logprob contexts[{k}] + target")
            rows.append(ctx + tgt)
            sizes.append(len(tgt))
        out = torch.empty(len(rows), dtype=torch.float32)
        if not rows:
            return out
        with self._scoring():
            for chunk in self._chunks([len(r) for r in rows]):
                keep = max(sizes[i] for i in chunk) + 1
                logits = self._last_logits([rows[i] for i in chunk], keep)
                log_p = torch.log_softmax(logits, -1)
                for j, i in enumerate(chunk):
                    t = sizes[i]
                    targets_ids = torch.tensor(rows[i][-t:], device=log_p.device)
                    picked = log_p[j, keep - t - 1:keep - 1].gather(-1, targets_ids[:, None])
                    out[i] = picked.mean().cpu()
        return out
