"""Blocks of ``k`` consecutive embeddings: the block length's checks and the training-free block mean.

Both the prompt compression (:mod:`tomesd.llm.compress`) and the learned merge
(:mod:`tomesd.llm.encoder`) build on these, so neither needs the other's module for them.
"""

from __future__ import annotations

from torch import Tensor

from tomesd.merge import block_merge

__all__ = ["check_block_length", "mean_merge", "validate_block_length"]


def check_block_length(k: int) -> None:
    """Check that a block length is an int of at least 1.

    Raises:
        TypeError: ``k`` is not an int (a bool is not accepted either).
        ValueError: ``k`` below 1.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"block length k must be an int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"block length k must be >= 1, got {k}")


def validate_block_length(k: int, lengths: Tensor) -> None:
    """Check a block length against the real lengths (B,) of the prompts it will compress.

    Raises:
        TypeError: ``k`` is not an int.
        ValueError: ``k`` below 1; no prompt at all; a prompt without any real token; ``k`` larger than
            some prompt.
    """
    check_block_length(k)
    if lengths.numel() == 0:
        raise ValueError("no prompt to compress: the batch is empty; pass at least one context")
    shortest, sample = int(lengths.min()), int(lengths.argmin())
    if shortest == 0:
        raise ValueError(
            f"prompt {sample} has no real token (its attention mask is all 0, or its context is empty); "
            f"every context needs at least one token: pass a non-empty context, or drop that prompt"
        )
    if k > shortest:
        raise ValueError(
            f"block length k={k} is larger than prompt {sample}, which has {shortest} real token(s); "
            f"use k <= {shortest} or a longer context"
        )


def mean_merge(embeds: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Training-free merge: the mean of every ``k`` consecutive real embeddings, padding excluded.

    Args:
        embeds: (B, N, C) right-padded embeddings.
        mask: (B, N) 1 on real tokens.
        k: block length.

    Returns:
        (merged, merged_mask): (B, ceil(N/k), C) block means and (B, ceil(N/k)) 1 where a block holds a
        real token.
    """
    merged, weight = block_merge(embeds, k, mask)
    return merged, (weight > 0).to(mask.dtype)
