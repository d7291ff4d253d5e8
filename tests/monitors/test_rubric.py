"""parse_rubric on malformed critic output, rubric items, and the three builders."""
import pytest

from ttrl_fast.monitors import (RubricItem, SelfRubric, StaticRubric, TemplateRubric, normalize_dim, parse_rubric,
                                validate_rubric)
from ttrl_fast.tta.types import Prompt

from .conftest import FakeCritic

Q = "Is there a cat?"

# one line -> the single item it gives (None: it gives nothing)
LINES = [
    ("object | Is there a cat? | yes", ("object", Q, "yes")),
    ("Object|Is there a cat?|Yes.", ("object", Q, "yes")),
    ("  OBJECT  |   Is there    a cat?   |   YES  ", ("object", Q, "yes")),
    ("1. object | Is there a cat? | yes", ("object", Q, "yes")),
    ("2) attribute | Is the cat black? | no", ("attribute", "Is the cat black?", "no")),
    ("- count | Are there two cats? | No.", ("count", "Are there two cats?", "no")),
    ("* spatial | Is the cat left of the dog? | yes", ("spatial", "Is the cat left of the dog?", "yes")),
    ("• relation | Is the cat chasing the dog? | yes", ("relation", "Is the cat chasing the dog?", "yes")),
    ("**Style** | Is it a watercolor? | **Yes**", ("style", "Is it a watercolor?", "yes")),
    ("| object | Is there a cat? | yes |", ("object", Q, "yes")),  # markdown table row
    ("| 3 | object | Is there a cat? | yes |", ("object", Q, "yes")),  # numbered table row
    ("colour | Is the cat black? | yes", ("attribute", "Is the cat black?", "yes")),  # synonym
    ("Objects | Is there a cat? | yes", ("object", Q, "yes")),  # plural
    ("mood | Is the cat happy? | yes", ("other", "Is the cat happy?", "yes")),  # unknown dim -> other
    ("Is there a cat? | yes", ("other", Q, "yes")),  # missing dimension
    ("| Is there a cat? | no |", ("other", Q, "no")),
    ("object | Is there a cat?", ("object", Q, "yes")),  # missing target -> yes
    ("object | Is there a cat", ("object", Q, "yes")),  # "?" added
    ("object | Is there a cat? | true", ("object", Q, "yes")),
    ("object | Is there a cat? | No, it is absent", ("object", Q, "no")),
    ("Object: Is there a cat? Yes.", ("object", Q, "yes")),
    ("count: Are there two cats? (no)", ("count", "Are there two cats?", "no")),
    ("Q1. Is there a cat?", ("other", Q, "yes")),
    ("Is there a cat? - No", ("other", Q, "no")),
    ("Is there a cat?", ("other", Q, "yes")),
    ("", None),
    ("    ", None),
    ("Here are the questions:", None),
    ("dimension | question | answer", None),  # header row
    ("| Dimension | Question | Target |", None),
    ("|---|---|---|", None),
    ("object | Is there a cat? | maybe", None),  # target not yes/no: not guessed
    ("object | | yes", None),  # no question
    ("Why? Because I like cats.", None),  # prose with a question mark
    ("~~~~ ###", None),
    ("## Questions", None),
]


@pytest.mark.parametrize("line,expected", LINES, ids=[repr(line)[:40] for line, _ in LINES])
def test_parse_rubric_line_table(line, expected):
    items = parse_rubric(line)
    if expected is None:
        assert items == []
    else:
        assert items == [RubricItem(*expected)]


def test_parse_rubric_whole_answer_dedup_and_max_items():
    text = """Sure! Here is the rubric.

    1. object | Is there a butterfly? | Yes
    2. object | Is there a flower? | Yes
    3. attribute | Is the butterfly orange-winged? | yes
    4. object | is there a BUTTERFLY | yes
    5. spatial | Is the butterfly to the left of the flower? | yes
    garbage ### ||| ???
    6. relation | Is the butterfly resting on the flower? | yes
    Let me know if you need more!"""
    items = parse_rubric(text)
    assert [i.question for i in items] == [
        "Is there a butterfly?", "Is there a flower?", "Is the butterfly orange-winged?",
        "Is the butterfly to the left of the flower?", "Is the butterfly resting on the flower?"]
    assert [i.dim for i in items] == ["object", "object", "attribute", "spatial", "relation"]
    assert len(parse_rubric(text, max_items=2)) == 2
    with pytest.raises(ValueError, match="max_items"):
        parse_rubric(text, max_items=0)
    with pytest.raises(TypeError, match="str"):
        parse_rubric(None)


def test_rubric_item_validation_and_normalisation():
    item = RubricItem("Object", "  Is there a cat? ", "YES")
    assert (item.dim, item.question, item.target) == ("object", Q, "yes")
    cases = [(dict(dim="colour"), "dim"), (dict(question=" "), "question"), (dict(target="maybe"), "target"),
             (dict(parents=(-1,)), "parents")]
    for kwargs, match in cases:
        args = dict(dim="object", question=Q, target="yes") | kwargs
        with pytest.raises(ValueError, match=match):
            RubricItem(**args)
    assert normalize_dim("Spatial Relationship") == "spatial" and normalize_dim("whatever") == "other"


def test_validate_rubric_rejects_empty_bad_parents_and_cycles():
    with pytest.raises(ValueError, match="empty"):
        validate_rubric([])
    with pytest.raises(ValueError, match="not another item"):
        validate_rubric([RubricItem("object", Q, parents=(1,))])
    with pytest.raises(ValueError, match="cycle"):
        validate_rubric([RubricItem("object", Q, parents=(1,)), RubricItem("attribute", "Is it red?", parents=(0,))])


def test_static_rubric_formats_and_errors():
    lines = "object | Is there a cat? | yes\nattribute | Is the cat black? | no\n"
    dicts = [{"dimension": "object", "question": Q}, {"dim": "attribute", "question": "Is the cat black?",
                                                      "answer": "No", "parents": [0]}]
    mixed = [RubricItem("object", Q), "attribute | Is the cat black? | no", ("count", "Are there 2?", "yes")]
    builder = StaticRubric()
    assert [i.target for i in builder.build(Prompt("a", "cat", meta={"rubric": lines}))] == ["yes", "no"]
    built = builder.build(Prompt("b", "cat", meta={"rubric": dicts}))
    assert built[1] == RubricItem("attribute", "Is the cat black?", "no", (0,))
    assert len(builder.build(Prompt("c", "cat", meta={"rubric": mixed}))) == 3
    with pytest.raises(ValueError, match=r"prompt 'd' has no meta\['rubric'\]"):
        builder.build(Prompt("d", "cat"))
    with pytest.raises(ValueError, match="could not be read"):
        builder.build(Prompt("e", "cat", meta={"rubric": ["nonsense without a question"]}))
    with pytest.raises(ValueError, match="empty"):
        builder.build(Prompt("f", "cat", meta={"rubric": []}))
    with pytest.raises(ValueError, match="target"):
        builder.build(Prompt("g", "cat", meta={"rubric": [{"question": Q, "target": "perhaps"}]}))
    assert StaticRubric("qs").build(Prompt("h", "x", meta={"qs": [Q]}))[0].question == Q


def test_template_rubric():
    prompt = Prompt("a", " a red cat ")
    assert TemplateRubric().build(prompt) == [RubricItem("other", "Does the output satisfy: a red cat?", "yes")]
    custom = TemplateRubric([("object", "Does it show {prompt}?", "yes"), "Is {prompt} centred?",
                             ("style", "Is {prompt} blurry?", "no")])
    assert [(i.dim, i.question, i.target) for i in custom.build(prompt)] == [
        ("object", "Does it show a red cat?", "yes"), ("other", "Is a red cat centred?", "yes"),
        ("style", "Is a red cat blurry?", "no")]
    with pytest.raises(ValueError, match="placeholder"):
        TemplateRubric(["Is it good?"])
    with pytest.raises(ValueError, match="needs prompt text"):
        TemplateRubric().build(Prompt("b", None, tokens=[1, 2]))


def test_self_rubric_parses_caches_per_id_and_batches():
    critic = FakeCritic(default_text=lambda p: "object | Is there a cat? | yes\nattribute | Is it red? | no"
                        if "cat" in p else "I cannot help with that.")
    builder = SelfRubric(critic, max_items=5)
    cat, dog, cat2 = Prompt("1", "a red cat"), Prompt("2", "a dog"), Prompt("3", "another cat")
    first = builder.build_many([cat, dog, cat])
    assert critic.calls["generate_text"] == 1 and len(critic.seen["generate_text"][0]) == 2  # one call, no dup
    assert "a red cat" in critic.seen["generate_text"][0][0]
    assert first[0] == first[2] == [RubricItem("object", Q, "yes"), RubricItem("attribute", "Is it red?", "no")]
    assert first[1] == TemplateRubric().build(dog) and builder.fallback_ids == {"2"}  # nothing parsed: fallback
    assert builder.build(cat) == first[0] and critic.calls["generate_text"] == 1  # cached
    builder.build(cat2)
    assert critic.calls["generate_text"] == 2
    with pytest.raises(ValueError, match="prompt ids must be unique"):
        builder.build(Prompt("1", "a blue cat"))
    builder.clear_cache()
    builder.build(cat)
    assert critic.calls["generate_text"] == 3


def test_self_rubric_custom_fallback_and_validation():
    critic = FakeCritic(default_text="???")
    fallback = TemplateRubric([("object", "Is {prompt} shown?", "yes")])
    assert SelfRubric(critic, fallback=fallback).build(Prompt("x", "a cat"))[0].question == "Is a cat shown?"
    with pytest.raises(ValueError, match="placeholder"):
        SelfRubric(critic, template="no placeholder")
    with pytest.raises(ValueError, match="max_items"):
        SelfRubric(critic, max_items=0)
    with pytest.raises(TypeError, match="generate_text"):
        SelfRubric(object())
