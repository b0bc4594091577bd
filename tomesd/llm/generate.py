"""Generation from a compressed prompt through the model's own ``generate`` and KV cache.

The compressed prefix goes in as ``inputs_embeds`` with its left-padded attention mask; ``generate``
derives the positions from that mask (each merged token takes one position) and continues in the normal
token space. With only embeddings as input, ``generate`` returns the new tokens alone, so the decoded text
never repeats the prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .compress import compress_prompt
from .encoder import KTokenEncoder

__all__ = ["generate_compressed", "generate_text", "pad_sequences", "tokenize_prompts"]


@torch.no_grad()
def generate_compressed(
    model: Any,
    input_ids: Tensor,
    k: int,
    attention_mask: Tensor | None = None,
    tail_ids: Tensor | None = None,
    tail_mask: Tensor | None = None,
    encoder: KTokenEncoder | None = None,
    **generate_kwargs: Any,
) -> Tensor:
    """Compress a batch of prompts and generate their continuations.

    Args:
        model: a Hugging Face causal LM with ``generate``.
        input_ids: (B, N) context token ids (left- or right-padded).
        k: block length of the compression (``k=1``: uncompressed).
        attention_mask: (B, N) 1 on real context tokens; ``None`` means no padding.
        tail_ids: (B, T) token ids kept uncompressed after the context (the question), or ``None``.
        tail_mask: (B, T) 1 on real tail tokens; ``None`` means no padding.
        encoder: a trained K-token encoder; ``None`` merges by the mean (training-free).
        **generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``, ...).

    Returns:
        (B, G) the generated token ids only (no prompt), padded with the pad token after an end of sequence.

    Raises:
        TypeError, ValueError: as :func:`tomesd.llm.compress.compress_prompt`.
    """
    prompt = compress_prompt(
        model, input_ids, k, attention_mask, tail_ids, tail_mask, encoder=encoder, padding_side="left"
    )
    return model.generate(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask, **generate_kwargs)


def generate_text(
    model: Any,
    tokenizer: Any,
    context: str | Sequence[str],
    question: str | Sequence[str] | None = None,
    k: int = 4,
    encoder: KTokenEncoder | None = None,
    max_new_tokens: int = 32,
    **generate_kwargs: Any,
) -> list[str]:
    """Compress ``context`` by ``k``, keep ``question`` uncompressed after it, and decode the answers.

    Args:
        model: a Hugging Face causal LM (local; nothing is downloaded).
        tokenizer: any Hugging Face tokenizer of that model.
        context: the long part of each prompt, compressed.
        question: the part kept token by token after the context, or ``None``.
        k: block length (``k=1``: uncompressed).
        encoder: a trained K-token encoder; ``None`` merges by the mean.
        max_new_tokens: generation budget.
        **generate_kwargs: passed to ``model.generate``.

    Returns:
        One decoded string of new tokens per prompt (special tokens skipped).
    """
    encoded = tokenize_prompts(tokenizer, context, question)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_kwargs.setdefault("pad_token_id", pad_id)
    new_tokens = generate_compressed(
        model,
        encoded["input_ids"],
        k,
        encoded["attention_mask"],
        encoded.get("tail_ids"),
        encoded.get("tail_mask"),
        encoder=encoder,
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def tokenize_prompts(
    tokenizer: Any, context: str | Sequence[str], question: str | Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Tokenize contexts (with the tokenizer's special tokens, e.g. a BOS) and questions (without), padded.

    Returns:
        ``input_ids`` and ``attention_mask`` (B, N) for the contexts, plus ``tail_ids`` and ``tail_mask``
        (B, T) when questions are given.

    Raises:
        ValueError: the numbers of contexts and questions differ.
    """
    contexts = [context] if isinstance(context, str) else list(context)
    encoded = dict(zip(("input_ids", "attention_mask"), pad_sequences(tokenizer(contexts)["input_ids"])))
    if question is not None:
        questions = [question] if isinstance(question, str) else list(question)
        if len(questions) != len(contexts):
            raise ValueError(f"got {len(contexts)} context(s) but {len(questions)} question(s); give one per context")
        tail = tokenizer(questions, add_special_tokens=False)["input_ids"]
        encoded["tail_ids"], encoded["tail_mask"] = pad_sequences(tail)
    return encoded


def pad_sequences(sequences: Sequence[Sequence[int]], value: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad lists of ids (or labels) with ``value`` into (B, N) and the (B, N) mask of real entries.

    Padding here, not in the tokenizer, works for tokenizers without a pad token (e.g. Llama's); the pad
    value never reaches the model, since the mask excludes it.
    """
    width = max(map(len, sequences))
    ids = torch.tensor([list(s) + [value] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask
