"""Tokenizing prompts for K-token merging: contexts and questions as padded id tensors.

Generation (:mod:`tomesd.llm.generate`) and training (:mod:`tomesd.llm.train`) both start here. Padding
is done here, not by the tokenizer, so tokenizers without a pad token (e.g. Llama's) work too.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["chat_parts", "pad_sequences", "special_prefix", "tokenize_prompts"]

_PLACEHOLDER = "\x00DOCUMENT\x00"


def special_prefix(tokenizer: Any) -> list[int]:
    """The special token ids ``tokenizer`` puts before any text (e.g. ``[bos]``), ``[]`` when none."""
    full = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def tokenize_prompts(
    tokenizer: Any,
    context: str | Sequence[str],
    question: str | Sequence[str] | None = None,
    head: str | None = None,
) -> dict[str, Tensor]:
    """Tokenize prompts as head (kept), contexts (to compress) and questions (kept), padded.

    The tokenizer's special prefix (its BOS, if it adds one) goes into the head, never into the
    compressed context: a model such as Gemma expects its BOS alone in the first position.

    Args:
        tokenizer: a Hugging Face tokenizer.
        context: one context or a list of them (the part that gets compressed).
        question: one question per context (kept uncompressed), or ``None`` for none.
        head: text kept uncompressed before every context, after the special prefix (e.g. a chat
            template's opening), or ``None``.

    Returns:
        ``input_ids`` and ``attention_mask`` (B, N) for the contexts; ``head_ids`` (1, H) when the head is
        not empty; ``tail_ids`` and ``tail_mask`` (B, T) when questions are given.

    Raises:
        ValueError: no context; the numbers of contexts and questions differ; a question that tokenizes
            to nothing (pass ``question=None`` to keep no tail).
    """
    contexts = [context] if isinstance(context, str) else list(context)
    if not contexts:
        raise ValueError("no context given: pass a string or a non-empty list of strings")
    context_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"]
    encoded = dict(zip(("input_ids", "attention_mask"), pad_sequences(context_ids)))
    head_ids = special_prefix(tokenizer)
    if head:
        head_ids += tokenizer(head, add_special_tokens=False)["input_ids"]
    if head_ids:
        encoded["head_ids"] = torch.tensor([head_ids], dtype=torch.long)
    if question is not None:
        questions = [question] if isinstance(question, str) else list(question)
        if len(questions) != len(contexts):
            raise ValueError(f"got {len(contexts)} context(s) but {len(questions)} question(s); give one per context")
        tail = tokenizer(questions, add_special_tokens=False)["input_ids"]
        empty = [i for i, ids in enumerate(tail) if not ids]
        if empty:
            raise ValueError(
                f"question {empty[0]} ({questions[empty[0]]!r}) has no tokens; pass a non-empty question, "
                f"or question=None to keep nothing uncompressed after the context"
            )
        encoded["tail_ids"], encoded["tail_mask"] = pad_sequences(tail)
    return encoded


def pad_sequences(sequences: Sequence[Sequence[int]], value: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad lists of ids (or labels) with ``value`` into (B, N) and the (B, N) mask of real entries.

    The pad value never reaches the model, since the mask excludes it. Both tensors are int64 (also when
    every sequence is empty, where ``torch.tensor`` alone would make floats).

    Raises:
        ValueError: no sequence at all.
    """
    if not sequences:
        raise ValueError("no sequence to pad: pass at least one")
    width = max(map(len, sequences))
    ids = torch.tensor([list(s) + [value] * (width - len(s)) for s in sequences], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], dtype=torch.long)
    return ids, mask


def chat_parts(tokenizer: Any, question: str) -> tuple[str | None, str]:
    """(head, tail) that put a document into ``tokenizer``'s chat template as the user's message, followed by
    ``question``: the template's opening (its BOS left out: :func:`tokenize_prompts` keeps it anyway) and the
    question with the template's closing and the assistant's opening. A tokenizer without a chat template
    gets no head and the question as a plain-text tail (``"\\n{question}\\nAnswer:"``).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None, f"\n{question}\nAnswer:"
    text = tokenizer.apply_chat_template([{"role": "user", "content": f"{_PLACEHOLDER}\n{question}"}],
                                         add_generation_prompt=True, tokenize=False)
    head, tail = text.split(_PLACEHOLDER)
    bos = tokenizer.bos_token
    if bos and head.startswith(bos):
        head = head[len(bos) :]
    return head, tail
