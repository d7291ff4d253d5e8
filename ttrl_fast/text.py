"""A dependency-free character tokenizer for tiny models (tests, the embedded demo). Real models use
their HF tokenizer: anything with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str`` works."""
from __future__ import annotations

from typing import Iterable, Sequence


class CharTokenizer:
    """One id per character of `alphabet`, after `specials` (pad, bos, eos by default).

    Unknown characters raise (a silent <unk> would hide prompt bugs). ``decode`` stops at nothing and
    drops special tokens unless ``keep_special``.
    """

    def __init__(self, alphabet: Iterable[str], specials: Sequence[str] = ("<pad>", "<bos>", "<eos>")):
        chars = []
        for ch in alphabet:
            if len(ch) != 1:
                raise ValueError(f"alphabet entries must be single characters, got {ch!r}")
            if ch not in chars:
                chars.append(ch)
        self.specials = list(specials)
        self.itos = self.specials + chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_token_id = self.stoi.get("<pad>", 0)
        self.bos_token_id = self.stoi.get("<bos>")
        self.eos_token_id = self.stoi.get("<eos>")

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[ch] for ch in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the tokenizer's alphabet") from None
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], *, keep_special: bool = False) -> str:
        n = len(self.specials)
        return "".join(self.itos[i] for i in ids if keep_special or i >= n)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.stoi[token]


class WordTokenizer:
    """One id per whitespace-separated word of a closed vocabulary (the demo worlds' languages), after
    `specials`. ``decode`` joins words with spaces and drops specials unless ``keep_special``."""

    def __init__(self, words: Iterable[str], specials: Sequence[str] = ("<pad>", "<bos>", "<eos>")):
        self.specials = list(specials)
        self.itos = list(self.specials)
        for word in words:
            if not word or any(ch.isspace() for ch in word):
                raise ValueError(f"vocabulary words must be non-empty and contain no whitespace, got {word!r}")
            if word not in self.itos:
                self.itos.append(word)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_token_id = self.stoi.get("<pad>", 0)
        self.bos_token_id = self.stoi.get("<bos>")
        self.eos_token_id = self.stoi.get("<eos>")

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[w] for w in text.split()]
        except KeyError as exc:
            raise ValueError(f"word {exc.args[0]!r} is not in the tokenizer's vocabulary") from None
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], *, keep_special: bool = False) -> str:
        n = len(self.specials)
        return " ".join(self.itos[i] for i in ids if keep_special or i >= n)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.stoi[token]
