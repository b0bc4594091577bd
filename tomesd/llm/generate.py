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
from .tokens import tokenize_prompts

__all__ = ["generate_compressed", "generate_text"]


@torch.no_grad()
def generate_compressed(
    model: Any,
    input_ids: Tensor,
    k: int,
    attention_mask: Tensor | None = None,
    tail_ids: Tensor | None = None,
    tail_mask: Tensor | None = None,
    encoder: KTokenEncoder | None = None,
    head_ids: Tensor | None = None,
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
        head_ids: (1, H) or (B, H) token ids kept uncompressed before the context (e.g. the BOS), or ``None``.
        **generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``, ...).

    Returns:
        (B, G) the generated token ids only (no prompt), padded with the pad token after an end of sequence.

    Raises:
        TypeError, ValueError: as :func:`tomesd.llm.compress.compress_prompt`.
    """
    prompt = compress_prompt(
        model, input_ids, k, attention_mask, tail_ids, tail_mask, encoder=encoder, padding_side="left",
        head_ids=head_ids,
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
    head: str | None = None,
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
        head: text kept uncompressed before every context (after the tokenizer's BOS, which is always kept
            uncompressed), e.g. a chat template's opening; ``None`` for none.
        **generate_kwargs: passed to ``model.generate``.

    Returns:
        One decoded string of new tokens per prompt (special tokens skipped).

    Raises:
        ValueError: no context, an empty question, as many questions as contexts not given, or as
            :func:`tomesd.llm.compress.compress_prompt` (e.g. a context shorter than ``k``).
        TypeError: as :func:`tomesd.llm.compress.compress_prompt`.
    """
    encoded = tokenize_prompts(tokenizer, context, question, head)
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
        head_ids=encoded.get("head_ids"),
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
