"""The synthetic textualized-tree task and its offline tokenizer (tomesd.llm.task)."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from tomesd.llm.task import (RECONSTRUCT_QUESTION, QAExample, build_tree_tokenizer, parent_guess_accuracy,
                             sample_tree_example, tree_examples, with_reconstruction)


def test_answer_is_the_parent_stated_in_the_context():
    for example in tree_examples(50, 2, 12, seed=3):
        sentences = [s.split() for s in example.context.split(" .") if s.strip()]
        parent_of = {words[-1]: words[0] for words in sentences}  # "P is the parent of C"
        child = example.question.split()[-2]
        assert parent_of[child] == example.answer
        assert len(parent_of) == len(sentences)  # a tree: every child has exactly one parent


def test_examples_are_reproducible_and_sized():
    assert tree_examples(5, 3, 6, seed=1) == tree_examples(5, 3, 6, seed=1)
    example = sample_tree_example(random.Random(0), 7)
    assert example.context.count(" is the parent of ") == 6


def test_follow_up_questions_ask_distinct_children_of_the_same_tree():
    for example in tree_examples(40, 2, 9, seed=5, questions=4):
        parent_of = {s.split()[-1]: s.split()[0] for s in example.context.split(" .") if s.strip()}
        asked = [question.split()[-2] for question, _ in example.turns()]
        assert len(asked) == min(4, len(parent_of))  # as many as asked for, at most every child once
        assert len(set(asked)) == len(asked)
        assert all(parent_of[child] == answer for child, (_, answer) in zip(asked, example.turns()))
    assert tree_examples(5, 3, 6, seed=1, questions=1)[0].follow_ups == ()
    with pytest.raises(ValueError, match="questions must be >= 1"):
        sample_tree_example(random.Random(0), 5, questions=0)


def test_reconstruction_is_one_more_turn_at_the_end_answered_by_the_context():
    for example in tree_examples(5, 3, 9, seed=4, questions=3):
        extended = with_reconstruction(example)
        # what evaluation asks is untouched; the lookups come first, so (causally) they never see the context spelled out
        assert (extended.context, extended.question, extended.answer) == (example.context, example.question,
                                                                           example.answer)
        assert extended.turns() == [*example.turns(), (RECONSTRUCT_QUESTION, example.context)]
    assert with_reconstruction(QAExample("a b", "q ?", "a"), "again :").follow_ups == (("again :", "a b"),)


def test_tokenizer_covers_the_task_and_survives_save_load(tmp_path):
    tokenizer = build_tree_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    example = tree_examples(1, 8, 8, seed=0)[0]
    text = f"{example.context} {example.question} {example.answer}"
    for tok in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert len(ids) == len(text.split())
        assert tok.decode(ids) == text
        assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)


@pytest.mark.parametrize("nodes", [1, 27])
def test_bad_tree_size(nodes):
    with pytest.raises(ValueError, match="num_nodes must be in"):
        sample_tree_example(random.Random(0), nodes)


def test_parent_guess_accuracy():
    chain = QAExample("A is the parent of B . B is the parent of C .", "who is the parent of C ?", "B")
    star = QAExample("A is the parent of B . A is the parent of C .", "who is the parent of B ?", "A")
    assert parent_guess_accuracy([chain]) == 0.5  # A or B (C is asked about, and is no parent)
    assert parent_guess_accuracy([chain, star]) == 0.75
