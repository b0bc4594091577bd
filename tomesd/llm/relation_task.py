"""The K-token paper's form of Textualized Tree: an indented tree, and true/false parent-child questions.

A random tree of two-letter node names is written one node per line in depth-first order, each line
prefixed by one ``+`` per level ("Tree: QX\\n+BF\\n++KD\\n+MA"). A question names two nodes and asks whether
the first is the second's parent; the answer is ``true`` or ``false``. Reading the answer needs the tree's
structure (a node's parent is the nearest line above it that is one level shallower), not one sentence.

The paper asks about every ordered pair of a tree's nodes, so most answers are ``false`` (a tree of n nodes
has n - 1 parent pairs among n(n - 1)): always answering ``false`` scores 1 - 1/n of that mix (96.7% at 30
nodes). Here questions are **balanced**: each is a parent pair or not with equal chance, so guessing scores 50%.
The context (``Tree: ...``) is what gets compressed; the question stays token by token after it.
"""

from __future__ import annotations

import random
import string

from .task import QAExample, draw_examples

__all__ = [
    "MAX_CHILDREN",
    "MAX_DEPTH",
    "NODE_NAMES",
    "majority_accuracy",
    "relation_examples",
    "sample_relation_example",
]

NODE_NAMES = tuple(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
MAX_DEPTH = 4  # levels below the root, as in the paper's larger trees
MAX_CHILDREN = 3


def _random_tree(rng: random.Random, num_nodes: int) -> tuple[list[str], dict[str, str]]:
    """``num_nodes`` distinct names and each non-root node's parent: every new node hangs under a random
    earlier node that still has room (depth below :data:`MAX_DEPTH`, fewer than :data:`MAX_CHILDREN` children)."""
    names = rng.sample(NODE_NAMES, num_nodes)
    depth, children, parent = {names[0]: 0}, {names[0]: 0}, {}
    for name in names[1:]:
        open_nodes = [n for n in depth if depth[n] < MAX_DEPTH and children[n] < MAX_CHILDREN]
        parent[name] = rng.choice(open_nodes)
        depth[name], children[name] = depth[parent[name]] + 1, 0
        children[parent[name]] += 1
    return names, parent


def _render(names: list[str], parent: dict[str, str], rng: random.Random) -> str:
    """The tree as indented lines in depth-first order, siblings in random order."""
    kids: dict[str, list[str]] = {name: [] for name in names}
    for child, up in parent.items():
        kids[up].append(child)
    lines, stack = [], [(names[0], 0)]
    while stack:
        name, level = stack.pop()
        lines.append("+" * level + name)
        order = kids[name][:]
        rng.shuffle(order)
        stack.extend((child, level + 1) for child in reversed(order))
    return "\n".join(lines)


def _question(first: str, second: str) -> str:
    return f", Task: Parent/Child Relationship, Parent: {first}, Child: {second}, Answer:"


def sample_relation_example(rng: random.Random, num_nodes: int, questions: int = 1) -> QAExample:
    """A random indented tree of ``num_nodes`` nodes and ``questions`` balanced true/false questions about it.

    Each question is, with equal chance, a parent pair (true) or an ordered pair of distinct nodes that is
    not one (false: a child and its parent reversed, siblings, a grandparent, ...); the first is ``question``,
    the others ``follow_ups`` (drawn independently, so a pair may be asked twice). The answer is ``"true"`` or
    ``"false"``.

    Raises:
        ValueError: ``num_nodes`` outside [3, number of node names], or ``questions`` below 1.
    """
    if not 3 <= num_nodes <= len(NODE_NAMES):
        raise ValueError(f"num_nodes must be in [3, {len(NODE_NAMES)}] (in a 2-node tree the only false "
                         f"question is the true one reversed), got {num_nodes}")
    if questions < 1:
        raise ValueError(f"questions must be >= 1, got {questions}")
    names, parent = _random_tree(rng, num_nodes)
    context = "Tree: " + _render(names, parent, rng)
    turns = []
    for _ in range(questions):
        if rng.random() < 0.5:
            child = rng.choice(names[1:])
            turns.append((_question(parent[child], child), "true"))
        else:
            while True:
                first, second = rng.sample(names, 2)
                if parent.get(second) != first:
                    break
            turns.append((_question(first, second), "false"))
    (question, answer), *others = turns
    return QAExample(context, question, answer, follow_ups=tuple(others))


def relation_examples(count: int, min_nodes: int, max_nodes: int, seed: int, questions: int = 1) -> list[QAExample]:
    """``count`` examples with tree sizes drawn uniformly from [min_nodes, max_nodes], reproducible by ``seed``."""
    return draw_examples(sample_relation_example, count, min_nodes, max_nodes, seed, questions)


def majority_accuracy(examples: list[QAExample]) -> float:
    """Accuracy of always giving the commonest answer of ``examples`` (about 50% on balanced questions)."""
    trues = sum(example.answer == "true" for example in examples)
    return max(trues, len(examples) - trues) / len(examples)
