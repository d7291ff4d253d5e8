"""`SamplingParams`: vLLM's names and defaults (top_k=0 means off, unlike HF's silent 50)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

LOGPROB_MODES = ("raw", "processed", "both")


@dataclass(frozen=True)
class SamplingParams:
    """How to draw a group of completions per prompt.

    Attributes:
        n: group size G (completions per prompt).
        max_tokens: most completion tokens per row (HF alias: max_new_tokens).
        min_tokens: stop ids cannot be drawn before this many tokens (HF: min_new_tokens).
        temperature: 0 = greedy (log-probs then untempered), else softmax(logits / temperature).
        top_p: nucleus mass in (0, 1]; 1 = off.
        top_k: keep the k most likely tokens; 0 or -1 = off (not HF's default 50).
        min_p: keep tokens with p >= min_p * p_max; 0 = off.
        repetition_penalty: HF/vLLM multiplicative penalty on tokens of the prompt and completion; 1 = off.
        stop_token_ids: extra stop ids, merged with the sampler's EOS ids unless ignore_eos.
        ignore_eos: do not stop on the EOS ids (stop_token_ids still stop).
        allowed_token_ids: when given, only these ids can be drawn (vLLM's name; e.g. image tokens of a
            unified model). The raw log-prob still normalises over the full vocabulary.
        seed: noise key; None draws a fresh random seed per call. Same seed -> same tokens for the same
            prompt and sample index, whatever the batch order or chunking.
        logprobs: "raw" = log_softmax(logits / T) over the full vocabulary at the sampled token (what
            the trainer recomputes); "processed" = the log-probability the token was drawn with (after
            penalty and truncation); "both".
    """

    n: int = 1
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    ignore_eos: bool = False
    allowed_token_ids: Sequence[int] | None = None
    seed: int | None = None
    logprobs: Literal["raw", "processed", "both"] = "raw"

    def __post_init__(self):
        def real(value) -> bool:  # a number; bools are not (True would pass as 1)
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        def id_tuple(name, value) -> tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):  # e.g. a bare int
                raise ValueError(f"SamplingParams.{name} must be a list of non-negative ints, got {value!r}")
            return tuple(value)

        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SamplingParams.{name} must be an int >= {low}, got {value!r}")

        integer("n", 1)
        integer("max_tokens", 1)
        integer("min_tokens", 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"SamplingParams.min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be an int >= -1 (0 or -1 = off), got {self.top_k!r}")
        if not (real(self.temperature) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"SamplingParams.temperature must be finite and >= 0 (0 = greedy), got {self.temperature!r}")
        if not (real(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not (real(self.min_p) and 0 <= self.min_p <= 1):
            raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p!r}")
        if not (real(self.repetition_penalty) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ValueError(f"SamplingParams.repetition_penalty must be finite and > 0, got {self.repetition_penalty!r}")
        stops = id_tuple("stop_token_ids", self.stop_token_ids or ())
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stops):
            raise ValueError(f"SamplingParams.stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", stops)
        if self.allowed_token_ids is not None:
            allowed = id_tuple("allowed_token_ids", self.allowed_token_ids)
            if not allowed or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in allowed):
                raise ValueError(f"SamplingParams.allowed_token_ids must be a non-empty list of non-negative ints, "
                                 f"got {self.allowed_token_ids!r}")
            object.__setattr__(self, "allowed_token_ids", allowed)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")
        if self.logprobs not in LOGPROB_MODES:
            raise ValueError(f"SamplingParams.logprobs must be one of {LOGPROB_MODES}, got {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        """True when top-k / top-p / min-p can cut the support (processed != raw)."""
        return self.allowed_token_ids is not None or (
            not self.greedy and (self.top_k > 0 or self.top_p < 1 or self.min_p > 0))

    @classmethod
    def from_hf(cls, *, num_return_sequences: int = 1, max_new_tokens: int = 16, min_new_tokens: int = 0,
                do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, **kwargs) -> "SamplingParams":
        """Build from HF generate() names (top_k defaults to 0 here: pass 50 for HF's default)."""
        return cls(n=num_return_sequences, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                   temperature=temperature if do_sample else 0.0, top_k=top_k, **kwargs)
