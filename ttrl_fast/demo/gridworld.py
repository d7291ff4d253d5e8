"""GridWorld: a world small enough for 2 CPU cores in which a unified model's understanding can be better
than its generation, as in real unified multimodal models (methods.md §4, Design A).

* An image is a 4x4 grid of VQ-like tokens: empty, or one of 12 objects (4 colours x 3 shapes).
* A prompt is "A REL B": two coloured shapes and a spatial relation (left_of, right_of, above, below).
* The ground-truth checker: A and B are both in the image and some A cell stands in REL to some B cell.
  Only measurement and the labelled oracle control ever call it.
* Four colour-shape bindings are rare in the generation data (the long tail), never in understanding.

Token rows of the one causal model (a shared vocabulary over text, image and answer tokens):
    generation     <bos> gen  A_col A_shape REL B_col B_shape img   x_1 ... x_16
    understanding  <bos> und  x_1 ... x_16  question words  ans  ->  yes | no
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ttrl_fast.text import WordTokenizer

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left_of", "right_of", "above", "below")
SIDE = 4
CELLS = SIDE * SIDE
OBJECTS = tuple((c, s) for c in COLORS for s in SHAPES)  # object k -> cell value k + 1 (0 = empty)
RARE = (("red", "circle"), ("green", "triangle"), ("blue", "square"), ("yellow", "circle"))
COMMON = tuple(o for o in OBJECTS if o not in RARE)
CONTROL = ("gen", "und", "img", "exists", "rel", "ans", "yes", "no")
CELL_WORDS = tuple(f"cell{v}" for v in range(len(OBJECTS) + 1))

TOKENIZER = WordTokenizer(CONTROL + COLORS + SHAPES + RELATIONS + CELL_WORDS)
CELL_IDS = tuple(TOKENIZER.stoi[w] for w in CELL_WORDS)  # token id of cell value v
YES, NO = TOKENIZER.stoi["yes"], TOKENIZER.stoi["no"]

Grid = tuple  # CELLS cell values in raster order


def cell_value(obj: tuple[str, str]) -> int:
    return OBJECTS.index(obj) + 1


@dataclass(frozen=True)
class Spec:
    """A prompt: object a stands in `relation` to object b."""

    a: tuple[str, str]
    relation: str
    b: tuple[str, str]

    @property
    def text(self) -> str:
        return f"{self.a[0]} {self.a[1]} {self.relation} {self.b[0]} {self.b[1]}"

    @property
    def meta(self) -> dict:
        return {"A": f"{self.a[0]} {self.a[1]}", "B": f"{self.b[0]} {self.b[1]}", "relation": self.relation}

    @staticmethod
    def parse(text: str) -> "Spec":
        words = text.split()
        if len(words) != 5 or words[2] not in RELATIONS:
            raise ValueError(f"a grid prompt is 'colour shape relation colour shape', got {text!r}")
        return Spec((words[0], words[1]), words[2], (words[3], words[4]))


def _holds(relation: str, pa: tuple[int, int], pb: tuple[int, int]) -> bool:
    (ra, ca), (rb, cb) = pa, pb
    return {"left_of": ca < cb, "right_of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def positions(grid: Grid, obj: tuple[str, str]) -> list[tuple[int, int]]:
    value = cell_value(obj)
    return [divmod(i, SIDE) for i, v in enumerate(grid) if v == value]


def relation_holds(grid: Grid, a, relation: str, b) -> bool:
    return any(_holds(relation, pa, pb) for pa in positions(grid, a) for pb in positions(grid, b))


def checker(spec: Spec, grid: Grid) -> bool:
    """Ground truth: both objects present and the relation holds."""
    return relation_holds(grid, spec.a, spec.relation, spec.b)


def target_image(spec: Spec, rng: random.Random) -> Grid:
    """A correct image for the prompt: the two objects in random cells satisfying the relation."""
    while True:
        i, j = rng.sample(range(CELLS), 2)
        if _holds(spec.relation, divmod(i, SIDE), divmod(j, SIDE)):
            grid = [0] * CELLS
            grid[i], grid[j] = cell_value(spec.a), cell_value(spec.b)
            return tuple(grid)


def random_scene(rng: random.Random) -> Grid:
    """1-4 objects (any of the 12, rare ones included) in random cells: understanding data."""
    grid = [0] * CELLS
    for cell in rng.sample(range(CELLS), rng.randint(1, 4)):
        grid[cell] = rng.randint(1, len(OBJECTS))
    return tuple(grid)


def exists_question(obj) -> str:
    return f"exists {obj[0]} {obj[1]}"


def relation_question(a, relation: str, b) -> str:
    return f"rel {a[0]} {a[1]} {relation} {b[0]} {b[1]}"


def truth(grid: Grid, question: str) -> bool:
    words = question.split()
    if words[0] == "exists":
        return bool(positions(grid, (words[1], words[2])))
    return relation_holds(grid, (words[1], words[2]), words[3], (words[4], words[5]))


def near_miss(rng: random.Random, present: list) -> tuple[str, str]:
    """An absent object that shares the colour or the shape of a present one (any object when there is
    none): the hard negative a critic of near-miss generations must reject, e.g. "red circle" asked about
    an image that holds a red square."""
    candidates = [o for o in OBJECTS if o not in present and any(o[0] == p[0] or o[1] == p[1] for p in present)]
    return rng.choice(candidates) if candidates else rng.choice(OBJECTS)


def vqa_example(rng: random.Random) -> tuple[Grid, str, bool]:
    """A scene and an atomic question about it, true about half of the time. Objects asked about are
    present, or absent near misses, or any object; without the near misses the critic learns to tell
    colours and shapes apart only coarsely, and then rewards the generator's near-miss images."""
    grid = random_scene(rng)
    present = [OBJECTS[v - 1] for v in grid if v]

    def pick(p_present: float):
        draw = rng.random()
        if draw < p_present:
            return rng.choice(present)
        return near_miss(rng, present) if draw < (1 + p_present) / 2 else rng.choice(OBJECTS)

    if rng.random() < 0.5:
        question = exists_question(pick(0.5))
    else:
        a, b = pick(0.8), pick(0.8)
        holding = [r for r in RELATIONS if relation_holds(grid, a, r, b)]
        if holding and rng.random() < 0.5:  # balance true and false relation questions
            relation = rng.choice(holding)
        else:
            relation = rng.choice([r for r in RELATIONS if r not in holding] or list(RELATIONS))
        question = relation_question(a, relation, b)
    return grid, question, truth(grid, question)


def random_spec(rng: random.Random, *, rare: bool) -> Spec:
    """A prompt whose objects are common, or which contains exactly one rare binding (A or B)."""
    while True:
        if rare:
            pair = [rng.choice(RARE), rng.choice(COMMON)]
            rng.shuffle(pair)
        else:
            pair = [rng.choice(COMMON), rng.choice(COMMON)]
        if pair[0] != pair[1]:
            return Spec(pair[0], rng.choice(RELATIONS), pair[1])


def generation_spec(rng: random.Random, rare_fraction: float) -> Spec:
    """Generation pre-training prompts: the rare bindings appear in only `rare_fraction` of them."""
    return random_spec(rng, rare=rng.random() < rare_fraction)


def prompt_splits(seed: int, size: int) -> dict[str, list[Spec]]:
    """Disjoint prompt sets: adapt (rare bindings), heldout (other rare-binding prompts), seen (common)."""
    rng = random.Random(10_000 + seed)
    taken: set[Spec] = set()
    splits: dict[str, list[Spec]] = {}
    for name, rare in (("adapt", True), ("heldout", True), ("seen", False)):
        specs = []
        while len(specs) < size:
            spec = random_spec(rng, rare=rare)
            if spec not in taken:
                taken.add(spec)
                specs.append(spec)
        splits[name] = specs
    return splits


def generation_row(spec: Spec) -> list[int]:
    """Token ids of the generation prefix (the model continues with CELLS image tokens)."""
    return TOKENIZER.encode(f"gen {spec.text} img", add_bos=True)


def understanding_row(grid: Grid, question: str) -> list[int]:
    """Token ids up to `ans`; the next token is the answer."""
    return ([TOKENIZER.bos_token_id, TOKENIZER.stoi["und"]] + [CELL_IDS[v] for v in grid]
            + TOKENIZER.encode(question) + [TOKENIZER.stoi["ans"]])


def grid_from_tokens(ids) -> Grid:
    """Generated token ids -> cell values (anything that is not a cell token reads as empty)."""
    lookup = {t: v for v, t in enumerate(CELL_IDS)}
    cells = [lookup.get(int(t), 0) for t in list(ids)[:CELLS]]
    return tuple(cells + [0] * (CELLS - len(cells)))


def render(grid: Grid) -> str:
    """ASCII picture (colour initial + shape symbol) for logs and the README."""
    symbols = {"circle": "o", "square": "#", "triangle": "^"}
    rows = []
    for r in range(SIDE):
        cells = []
        for c in range(SIDE):
            v = grid[r * SIDE + c]
            cells.append(".." if v == 0 else OBJECTS[v - 1][0][0].upper() + symbols[OBJECTS[v - 1][1]])
        rows.append(" ".join(cells))
    return "\n".join(rows)
