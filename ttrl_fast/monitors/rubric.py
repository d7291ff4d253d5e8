"""Rubrics: lists of (dimension, yes/no question, target answer, parents) items and their builders.

Builders turn a `Prompt` into a rubric:
    StaticRubric   - supplied with the prompt (`prompt.meta["rubric"]`), e.g. DSG / TIFA questions;
    TemplateRubric - model-free fallback: fixed question templates filled with the prompt text;
    SelfRubric     - the critic writes `dimension | question | yes/no` lines (Meta-TTRL step 1), parsed by
                     the tolerant `parse_rubric`; falls back to another builder when nothing parses.
"""
from __future__ import annotations

import string

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from ttrl_fast.tta.types import Prompt, Understander

DIMENSIONS = ("object", "attribute", "count", "spatial", "relation", "style", "other")

# lower-case spellings a model (or a benchmark) uses for each dimension
_DIM_SYNONYMS = {
    "object": "object", "objects": "object", "entity": "object", "entities": "object", "existence": "object",
    "presence": "object", "obj": "object", "whole": "object",
    "attribute": "attribute", "attributes": "attribute", "attr": "attribute", "color": "attribute",
    "colour": "attribute", "colors": "attribute", "shape": "attribute", "texture": "attribute",
    "material": "attribute", "size": "attribute", "state": "attribute",
    "count": "count", "counts": "count", "counting": "count", "number": "count", "numeracy": "count",
    "numerical": "count", "quantity": "count", "numeric": "count",
    "spatial": "spatial", "space": "spatial", "position": "spatial", "location": "spatial", "layout": "spatial",
    "spatial relation": "spatial", "spatial relationship": "spatial", "2d spatial": "spatial",
    "3d spatial": "spatial",
    "relation": "relation", "relations": "relation", "relationship": "relation", "relationships": "relation",
    "action": "relation", "interaction": "relation", "non-spatial": "relation", "non spatial": "relation",
    "style": "style", "styles": "style", "global": "style", "aesthetic": "style", "aesthetics": "style",
    "artistic style": "style",
    "other": "other", "others": "other", "misc": "other", "general": "other",
}

_TARGETS = {"yes": "yes", "y": "yes", "true": "yes", "no": "no", "n": "no", "false": "no"}


def normalize_dim(name: Any) -> str:
    """Map a dimension name (any case / spacing / plural / common synonym) to DIMENSIONS; unknown -> "other"."""
    key = re.sub(r"[\s_]+", " ", str(name or "")).strip().strip("*`'\"[]():").strip().lower()
    return _DIM_SYNONYMS.get(key, "other")


def parse_target(text: Any) -> str | None:
    """"Yes." / " NO " / "true" / "yes (the cat is red)" -> "yes" / "no"; anything else -> None."""
    if isinstance(text, bool):
        return "yes" if text else "no"
    words = re.findall(r"[A-Za-z]+", str(text or ""))
    return _TARGETS.get(words[0].lower()) if words else None


@dataclass(frozen=True)
class RubricItem:
    """One triadic rubric item (Meta-TTRL): dimension, yes/no question, the answer a faithful output gets.

    `parents` are indices of earlier items this one depends on (DSG): under agg="dsg" the item counts 0
    when a parent fails. `dim` and `target` are validated and normalised to lower case.
    """

    dim: str
    question: str
    target: str = "yes"
    parents: tuple[int, ...] = ()

    def __post_init__(self):
        dim = str(self.dim).strip().lower() if isinstance(self.dim, str) else self.dim
        if dim not in DIMENSIONS:
            raise ValueError(f"RubricItem.dim must be one of {DIMENSIONS}, got {self.dim!r} "
                             f"(normalize_dim maps synonyms and unknown names)")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"RubricItem.question must be a non-empty string, got {self.question!r}")
        target = self.target.strip().lower() if isinstance(self.target, str) else self.target
        if target not in ("yes", "no"):
            raise ValueError(f"RubricItem.target must be 'yes' or 'no', got {self.target!r}")
        parents = tuple(self.parents)
        if any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in parents):
            raise ValueError(f"RubricItem.parents must be non-negative item indices, got {self.parents!r}")
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "question", self.question.strip())
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "parents", parents)


Rubric = list[RubricItem]


def validate_rubric(rubric: Sequence[RubricItem], *, where: str = "rubric") -> list[RubricItem]:
    """A non-empty list of RubricItem whose parents point at other items of the rubric without cycles."""
    if isinstance(rubric, (str, bytes)) or not isinstance(rubric, Sequence):
        raise TypeError(f"{where} must be a list of RubricItem, got {type(rubric).__name__}")
    items = list(rubric)
    if not items:
        raise ValueError(f"{where} is empty: a rubric needs at least one item")
    for k, item in enumerate(items):
        if not isinstance(item, RubricItem):
            raise TypeError(f"{where}[{k}] must be a RubricItem, got {type(item).__name__}")
        for p in item.parents:
            if p >= len(items) or p == k:
                raise ValueError(f"{where}[{k}].parents has {p}, which is not another item index (0..{len(items) - 1})")
    topological_order(items, where=where)
    return items


def topological_order(items: Sequence[RubricItem], *, where: str = "rubric") -> list[int]:
    """Item indices with every parent before its children; raises on a dependency cycle."""
    order, state = [], [0] * len(items)  # 0 new, 1 on the stack, 2 done

    def visit(k: int, path: tuple[int, ...]):
        if state[k] == 2:
            return
        if state[k] == 1:
            raise ValueError(f"{where} has a dependency cycle through items {path + (k,)}")
        state[k] = 1
        for p in items[k].parents:
            visit(p, path + (k,))
        state[k] = 2
        order.append(k)

    for k in range(len(items)):
        visit(k, ())
    return order


# ------------------------------------------------------------------------------------------------ parser
_BULLET = re.compile(r"^\s*(?:[-*+•·●◦‣>]+|\(?\d{1,3}\s*[.)\]:]|\(?[A-Za-z][.)](?=\s)|#+|Q\d{1,3}\s*[.:)])\s*")
_TRAILING_TARGET = re.compile(r"^(?P<q>.*\?)\s*[-–—:=>(\[]*\s*(?:answer\s*[:=]?\s*)?(?P<t>yes|no)\b[\s.!)\]]*$",
                              re.IGNORECASE)
_DIM_PREFIX = re.compile(r"^\[?(?P<d>[A-Za-z][A-Za-z0-9 _-]{0,30}?)\]?\s*[:\]]\s*(?P<rest>.+)$")


def _clean(field: str) -> str:
    return re.sub(r"\s+", " ", field.replace("**", "").replace("`", "")).strip().strip("\"'“”‘’").strip()


def _question_key(question: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", question.lower()).strip()


def _as_question(text: str) -> str | None:
    text = _clean(text)
    if len(re.findall(r"[A-Za-z]", text)) < 3 or len(text.split()) < 2:  # not a question: a word, a header
        return None
    if text.lower().rstrip("?:. ") in ("question", "questions"):
        return None
    return text if text.endswith("?") else text.rstrip(" .;:") + "?"


def _parse_line(line: str) -> RubricItem | None:
    line = line.strip()
    for _ in range(3):  # "1. - ", "**2)** ..." and similar stacked markers
        stripped = _BULLET.sub("", line.replace("**", ""), count=1)
        if stripped == line:
            break
        line = stripped
    if not line or re.fullmatch(r"[\s|:+=-]*", line):  # blank or a markdown table rule
        return None
    if "|" in line:
        fields = [_clean(f) for f in line.split("|")]
        fields = [f for f in fields if f]
        if len(fields) >= 3 and re.fullmatch(r"\d{1,3}[.)]?", fields[0]):  # a numbered table row
            fields = fields[1:]
        if len(fields) >= 3:
            dim, target = fields[0], parse_target(fields[-1])
            question = _as_question(" ".join(fields[1:-1]))
            if target is None:  # "dim | question | dim2"? or garbage: do not guess a target
                return None
        elif len(fields) == 2:
            target = parse_target(fields[1])
            if target is not None and len(fields[1].split()) <= 4:  # "question | yes": dimension missing
                dim, question = "other", _as_question(fields[0])
            elif "?" in fields[1] or normalize_dim(fields[0]) != "other" or fields[0].lower() == "other":
                # "dimension | question" (target missing: yes, the usual case)
                dim, question, target = fields[0], _as_question(fields[1]), "yes"
            else:
                return None
        else:
            return None
        if question is None or dim.lower() in ("dimension", "dim", "category"):
            return None  # a header row or no question text
        return RubricItem(normalize_dim(dim), question, target)
    # no separators: "[dimension:] question? [yes|no]"; must look like a question
    dim = "other"
    prefix = _DIM_PREFIX.match(line)
    if prefix:
        label = prefix.group("d").strip().lower()
        if normalize_dim(label) != "other" or label in ("other", "q", "question"):
            dim, line = normalize_dim(label), prefix.group("rest")
    if "?" not in line:
        return None
    match = _TRAILING_TARGET.match(line)
    question, target = (match.group("q"), match.group("t").lower()) if match else (line, "yes")
    if not question.rstrip().endswith("?"):
        return None  # text after the question mark that is not an answer: prose, not an item
    question = _as_question(question)
    return RubricItem(dim, question, target) if question else None


def parse_rubric(text: str, *, max_items: int | None = None) -> list[RubricItem]:
    """Items from free text written as `dimension | question | yes/no` lines; tolerant of model output.

    Accepted per line: bullets / numbering / markdown bold, extra spaces and any case; `question | yes`
    (dimension "other"); `dimension | question` (target yes); `Dimension: question? Yes.`; a bare
    `question?`. Unknown dimensions map to "other" (`normalize_dim`); targets accept yes/no/true/false
    with punctuation. Skipped: blank lines, prose, header / table-rule rows, lines whose target is not
    yes/no, repeated questions (case and punctuation ignored; the first wins). At most `max_items`
    items are kept. Returns [] when nothing parses. Parsed items have no parents (agg="dsg" then equals
    "mean"; a StaticRubric can carry DSG dependencies).
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_rubric takes the critic's text (str), got {type(text).__name__}")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive int or None, got {max_items!r}")
    items, seen = [], set()
    for line in text.splitlines():
        item = _parse_line(line)
        if item is None:
            continue
        key = _question_key(item.question)
        if key in seen:
            continue
        seen.add(key)
        items.append(item)
        if max_items is not None and len(items) >= max_items:
            break
    return items


# ---------------------------------------------------------------------------------------------- builders
class RubricBuilder(ABC):
    """prompt -> rubric (a non-empty list of RubricItem)."""

    @abstractmethod
    def build(self, prompt: Prompt) -> list[RubricItem]:
        ...

    def build_many(self, prompts: Sequence[Prompt]) -> list[list[RubricItem]]:
        return [self.build(p) for p in prompts]


def _item_from_any(entry: Any, where: str) -> RubricItem:
    if isinstance(entry, RubricItem):
        return entry
    if isinstance(entry, dict):
        if "question" not in entry:
            raise ValueError(f"{where} is a dict without a 'question' key: {entry!r}")
        dim = entry.get("dim", entry.get("dimension", entry.get("category", "other")))
        raw_target = entry.get("target", entry.get("answer", "yes"))
        target = parse_target(raw_target)
        if target is None:
            raise ValueError(f"{where} has target {raw_target!r}; expected yes or no")
        return RubricItem(normalize_dim(dim), str(entry["question"]), target, tuple(entry.get("parents", ())))
    if isinstance(entry, str):
        item = _parse_line(entry)
        if item is None:
            raise ValueError(f"{where} could not be read as 'dimension | question | yes/no': {entry!r}")
        return item
    if isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
        values = list(entry)
        dim, question, target = values if len(values) == 3 else ("other", *values)
        parsed = parse_target(target)
        if parsed is None:
            raise ValueError(f"{where} has target {target!r}; expected yes or no")
        return RubricItem(normalize_dim(dim), str(question), parsed)
    raise TypeError(f"{where} must be a RubricItem, a dict, a 'dimension | question | yes' line or a "
                    f"(dimension, question, target) tuple, got {type(entry).__name__}")


class StaticRubric(RubricBuilder):
    """The rubric supplied with each prompt in `prompt.meta[key]`.

    Accepted: a list of RubricItem, of dicts {question, dim|dimension, target|answer, parents}, of
    `dimension | question | yes` lines or (dimension, question, target) tuples; or one string of lines.
    A string entry that cannot be read is an error here (supplied rubrics are not guessed at).
    """

    def __init__(self, key: str = "rubric"):
        self.key = key

    def build(self, prompt: Prompt) -> list[RubricItem]:
        meta = prompt.meta or {}
        if self.key not in meta:
            raise ValueError(f"StaticRubric: prompt {prompt.id!r} has no meta[{self.key!r}]; supply the rubric "
                             f"there or use TemplateRubric / SelfRubric")
        entries = meta[self.key]
        if isinstance(entries, str):
            entries = [line for line in entries.splitlines() if line.strip()]
        if not isinstance(entries, Sequence):
            raise TypeError(f"StaticRubric: prompt {prompt.id!r} meta[{self.key!r}] must be a list or a string, "
                            f"got {type(entries).__name__}")
        where = f"prompt {prompt.id!r} meta[{self.key!r}]"
        items = [_item_from_any(e, f"{where}[{k}]") for k, e in enumerate(entries)]
        return validate_rubric(items, where=where)


def _placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class TemplateRubric(RubricBuilder):
    """A model-free rubric: question templates filled with the prompt text (`{prompt}`) or with fields of
    the prompt's meta (`{A}`, `{relation}`, ... for structured prompts such as the demo's grid world).

    `templates`: (dimension, question template, target) tuples, RubricItem (question used as a template)
    or plain strings (dimension "other", target yes). Default: one holistic item,
    "Does the output satisfy: {prompt}?" (target yes) - VQAScore / T2I-R1 ORM style.
    """

    DEFAULT = (("other", "Does the output satisfy: {prompt}?", "yes"),)

    def __init__(self, templates: Sequence[Any] | None = None):
        templates = self.DEFAULT if templates is None else templates
        if isinstance(templates, (str, bytes)) or not isinstance(templates, Sequence) or not templates:
            raise ValueError("templates must be a non-empty list of (dimension, question template, target)")
        checked = []
        for k, entry in enumerate(templates):
            if isinstance(entry, str):
                entry = ("other", entry, "yes")
            item = _item_from_any(entry, f"templates[{k}]")
            if not _placeholders(item.question):
                raise ValueError(f"templates[{k}] question {item.question!r} has no placeholder ({{prompt}} or a "
                                 f"prompt.meta field)")
            checked.append(item)
        self.templates = validate_rubric(checked, where="templates")

    def build(self, prompt: Prompt) -> list[RubricItem]:
        fields = dict(prompt.meta)
        if isinstance(prompt.text, str) and prompt.text.strip():
            fields["prompt"] = prompt.text.strip()
        items = []
        for t in self.templates:
            missing = [name for name in _placeholders(t.question) if name not in fields]
            if missing:
                raise ValueError(f"TemplateRubric: prompt {prompt.id!r} has no {missing[0]!r} to fill "
                                 f"{t.question!r} (needs prompt text or prompt.meta[{missing[0]!r}])")
            items.append(RubricItem(t.dim, t.question.format(**fields), t.target, t.parents))
        return items


class SelfRubric(RubricBuilder):
    """The critic writes the rubric (Meta-TTRL step 1): `critic.generate_text(template.format(prompt=...))`,
    parsed by `parse_rubric`; `fallback` builds it when nothing parses. Cached per prompt id (a prompt
    id seen again with a different text is an error). `fallback_ids` records prompts that fell back and
    `texts` the critic's raw answers. `build_many` writes all uncached rubrics in one generate_text call.
    """

    TEMPLATE = ("List yes/no questions that check every object, attribute, count, spatial relation, relation and "
                "style asked for in the description below. Write one per line as `dimension | question | yes`, "
                "or `| no` when a faithful output answers no; dimension is one of object, attribute, count, "
                "spatial, relation, style.\nDescription: {prompt}\nQuestions:\n")

    def __init__(self, critic: Understander, *, template: str = TEMPLATE, max_items: int = 8,
                 fallback: RubricBuilder | None = None, max_tokens: int = 256, temperature: float = 0.0):
        if not callable(getattr(critic, "generate_text", None)):
            raise TypeError("SelfRubric: critic must implement generate_text (the Understander protocol)")
        if not isinstance(template, str) or "{prompt}" not in template:
            raise ValueError(f"SelfRubric: template must be a string with a {{prompt}} placeholder, got {template!r}")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"SelfRubric: max_items must be a positive int, got {max_items!r}")
        if fallback is not None and not isinstance(fallback, RubricBuilder):
            raise TypeError(f"SelfRubric: fallback must be a RubricBuilder, got {type(fallback).__name__}")
        self.critic, self.template, self.max_items = critic, template, max_items
        self.fallback = fallback if fallback is not None else TemplateRubric()
        self.max_tokens, self.temperature = max_tokens, temperature
        self.cache: dict[str, tuple[str | None, list[RubricItem]]] = {}
        self.texts: dict[str, str] = {}
        self.fallback_ids: set[str] = set()

    def build(self, prompt: Prompt) -> list[RubricItem]:
        return self.build_many([prompt])[0]

    def build_many(self, prompts: Sequence[Prompt]) -> list[list[RubricItem]]:
        todo: dict[str, Prompt] = {}
        for p in prompts:
            cached = self.cache.get(p.id)
            if cached is not None and cached[0] != p.text:
                raise ValueError(f"SelfRubric: prompt id {p.id!r} was cached with text {cached[0]!r} and now has "
                                 f"{p.text!r}; prompt ids must be unique (or call clear_cache())")
            if cached is None and p.id not in todo:
                if not isinstance(p.text, str) or not p.text.strip():
                    raise ValueError(f"SelfRubric needs prompt text; prompt {p.id!r} has text={p.text!r}")
                todo[p.id] = p
        if todo:
            queries = [self.template.format(prompt=p.text.strip()) for p in todo.values()]
            texts = self.critic.generate_text(queries, max_tokens=self.max_tokens, temperature=self.temperature)
            if len(texts) != len(queries):
                raise ValueError(f"critic.generate_text returned {len(texts)} texts for {len(queries)} prompts")
            for p, text in zip(todo.values(), texts):
                items = parse_rubric(str(text), max_items=self.max_items)
                if not items:
                    items = self.fallback.build(p)
                    self.fallback_ids.add(p.id)
                self.texts[p.id] = str(text)
                self.cache[p.id] = (p.text, validate_rubric(items, where=f"rubric of prompt {p.id!r}"))
        return [list(self.cache[p.id][1]) for p in prompts]

    def clear_cache(self) -> None:
        self.cache.clear()
        self.texts.clear()
        self.fallback_ids.clear()
