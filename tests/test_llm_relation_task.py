"""The paper's form of Textualized Tree: indented trees, balanced true/false questions (tomesd.llm.relation_task)."""

from __future__ import annotations

import random

import pytest

from tomesd.llm.relation_task import (MAX_CHILDREN, MAX_DEPTH, majority_accuracy, relation_examples,
                                      sample_relation_example)


def _parents(context: str) -> dict[str, str]:
    """Read each node's parent back from the indented lines: the nearest line above one level shallower."""
    assert context.startswith("Tree: ")
    parents, path = {}, []
    for line in context.removeprefix("Tree: ").split("\n"):
        name = line.lstrip("+")
        level = len(line) - len(name)
        assert level <= len(path)  # depth first: a line is at most one level deeper than the one above
        path[level:] = [name]
        if level:
            parents[name] = path[level - 1]
    return parents


def _asked(question: str) -> tuple[str, str]:
    parts = dict(part.strip().split(": ") for part in question.split(",") if ": " in part)
    return parts["Parent"], parts["Child"]


def test_answers_are_what_the_indentation_says():
    for example in relation_examples(60, 3, 40, seed=2, questions=6):
        parents = _parents(example.context)
        for question, answer in example.turns():
            first, second = _asked(question)
            assert first != second and {first, second} <= {*parents, *parents.values()}
            assert answer == ("true" if parents.get(second) == first else "false")


def test_trees_are_sized_and_shaped_as_asked():
    rng = random.Random(0)
    for num_nodes in (3, 10, 45):
        example = sample_relation_example(rng, num_nodes)
        lines = example.context.removeprefix("Tree: ").split("\n")
        assert len(lines) == num_nodes and len({line.lstrip("+") for line in lines}) == num_nodes
        assert max(len(line) - len(line.lstrip("+")) for line in lines) <= MAX_DEPTH
        children = list(_parents(example.context).values())
        assert max(children.count(p) for p in set(children)) <= MAX_CHILDREN


def test_questions_are_balanced_and_reproducible():
    examples = relation_examples(400, 5, 20, seed=3)
    assert 0.45 < sum(e.answer == "true" for e in examples) / len(examples) < 0.55
    assert majority_accuracy(examples) < 0.55 and majority_accuracy(examples[:1]) == 1.0
    assert relation_examples(5, 5, 9, seed=1, questions=3) == relation_examples(5, 5, 9, seed=1, questions=3)
    assert all(len(e.turns()) == 3 for e in relation_examples(5, 5, 9, seed=1, questions=3))


@pytest.mark.parametrize("nodes, questions, match", [(2, 1, "num_nodes must be in"), (677, 1, "num_nodes must be in"),
                                                     (5, 0, "questions must be >= 1")])
def test_bad_arguments(nodes, questions, match):
    with pytest.raises(ValueError, match=match):
        sample_relation_example(random.Random(0), nodes, questions)
