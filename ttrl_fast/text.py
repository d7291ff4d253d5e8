"""Dependency-free tokenizers over closed vocabularies for tiny models (tests, the embedded demos).
Real models use their HF tokenizer: anything with ``encode(str) -> list[int]`` and
``decode(list[int]) -> str`` works."""
from __future__ import annotations

from typing import Iterable, Sequence


class _ClosedVocabulary:
    """Ids: `specials` (pad, bos, eos by default) first, then the units of the vocabulary. Unknown
    units raise (a silent <unk> would hide prompt bugs); decode drops specials unless keep_special."""

    separator = ""

    def __init__(self, units: Iterable[str], specials: Sequence[str]):
        self.specials = list(specials)
        self.itos = list(self.specials)
        for unit in units:
            self._check(unit)
            if unit not in self.itos:
                self.itos.append(unit)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_token_id = self.stoi.get("<pad>", 0)
        self.bos_token_id = self.stoi.get("<bos>")
        self.eos_token_id = self.stoi.get("<eos>")

    def _check(self, unit: str) -> None:
        raise NotImplementedError

    def _split(self, text: str) -> list[str]:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[unit] for unit in self._split(text)]
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]!r} is not in the tokenizer's vocabulary") from None
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], *, keep_special: bool = False) -> str:
        n = len(self.specials)
        return self.separator.join(self.itos[i] for i in ids if keep_special or i >= n)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.stoi[token]


class CharTokenizer(_ClosedVocabulary):
    """One id per character of `alphabet`."""

    def __init__(self, alphabet: Iterable[str], specials: Sequence[str] = ("<pad>", "<bos>", "<eos>")):
        super().__init__(alphabet, specials)

    def _check(self, unit: str) -> None:
        if len(unit) != 1:
            raise ValueError(f"alphabet entries must be single characters, got {unit!r}")

    def _split(self, text: str) -> list[str]:
        return list(text)


class WordTokenizer(_ClosedVocabulary):
    """One id per whitespace-separated word of a closed vocabulary (the demo worlds' languages);
    decode joins words with spaces."""

    separator = " "

    def __init__(self, words: Iterable[str], specials: Sequence[str] = ("<pad>", "<bos>", "<eos>")):
        super().__init__(words, specials)

    def _check(self, unit: str) -> None:
        if not unit or any(ch.isspace() for ch in unit):
            raise ValueError(f"vocabulary words must be non-empty and contain no whitespace, got {unit!r}")

    def _split(self, text: str) -> list[str]:
        return text.split()
