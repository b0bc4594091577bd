"""Prompt compression in embedding space: every ``k`` consecutive context embeddings become one.

A prompt is split into an optional *head* (kept token by token: the tokenizer's BOS, which models such
as Gemma rely on as the first position, and any fixed prefix), a *context* (the long part, compressed)
and an optional *tail* (kept token by token, e.g. the question after a long document). Batches may be left- or right-padded; each sample's
context is compressed from its first real token, so its result does not depend on how much padding the
batch needed. The compressed context and the tail are then packed into one padded sequence with its
attention mask and positions (merged tokens take one position each), ready for a causal LM's
``forward(inputs_embeds=..., attention_mask=..., position_ids=...)`` or ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .blocks import mean_merge, validate_block_length
from .encoder import KTokenEncoder

__all__ = ["CompressedPrompt", "compress_prompt", "pack"]

IGNORE_INDEX = -100
PADDING_SIDES = ("left", "right")


@dataclass
class CompressedPrompt:
    """A compressed prompt, padded as one batch.

    Attributes:
        inputs_embeds: (B, L, C) merged context embeddings followed by the tail's token embeddings.
        attention_mask: (B, L) 1 on real (merged or tail) positions, 0 on padding.
        position_ids: (B, L) 0, 1, 2, ... over the real positions (padding gets 0).
        labels: (B, L) the tail's labels at the tail's positions and ``-100`` elsewhere, or ``None`` when no
            tail labels were given.
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor | None = None


def pack(mask: Tensor, *tensors: Tensor, side: str = "left") -> tuple[Tensor, ...]:
    """Move every sample's real positions to one side, keeping their order.

    Args:
        mask: (B, N) 1 on real positions, 0 on padding.
        tensors: (B, N, ...) tensors reordered like the mask.
        side: ``"left"`` puts the padding first (for generation), ``"right"`` puts it last.

    Returns:
        The reordered mask followed by the reordered tensors.

    Raises:
        ValueError: ``side`` is neither "left" nor "right".
    """
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    # A stable sort of the 0/1 mask moves padding to one end and keeps real tokens in their order.
    order = mask.long().argsort(dim=1, stable=True, descending=side == "right")  # (B, N)
    return tuple(_gather_rows(t, order) for t in (mask, *tensors))


def compress_prompt(
    model: torch.nn.Module,
    input_ids: Tensor,
    k: int,
    attention_mask: Tensor | None = None,
    tail_ids: Tensor | None = None,
    tail_mask: Tensor | None = None,
    tail_labels: Tensor | None = None,
    encoder: KTokenEncoder | None = None,
    padding_side: str = "left",
    head_ids: Tensor | None = None,
) -> CompressedPrompt:
    """Embed a batch of prompts with ``model``'s input embeddings and compress their context.

    Args:
        model: a Hugging Face causal LM (anything with ``get_input_embeddings()``).
        input_ids: (B, N) context token ids, left- or right-padded.
        k: block length: every ``k`` context tokens become one embedding (``k=1`` keeps them all).
        attention_mask: (B, N) 1 on real context tokens; ``None`` means no padding.
        tail_ids: (B, T) token ids kept uncompressed after the context (e.g. the question), or ``None``.
        tail_mask: (B, T) 1 on real tail tokens; ``None`` means no padding.
        tail_labels: (B, T) training labels for the tail (``-100`` where no loss is wanted), or ``None``.
        encoder: a trained :class:`~tomesd.llm.encoder.KTokenEncoder`; ``None`` merges by the mean.
        padding_side: where the result's padding goes: ``"left"`` for generation, ``"right"`` for training.
        head_ids: (B, H) or (1, H) token ids kept uncompressed before the context, the same length in every
            row (e.g. the BOS), or ``None``.

    Returns:
        The :class:`CompressedPrompt`.

    Raises:
        TypeError: ``k`` is not an int.
        ValueError: ``k`` below 1 or larger than a prompt's context, an empty batch or a context without
            any real token, an encoder whose block length or hidden size does not match, an unknown
            padding side, or ``head_ids`` of another shape.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    validate_block_length(k, attention_mask.sum(dim=1))
    embedding = model.get_input_embeddings()
    if encoder is not None:
        encoder.check_compatible(k, embedding.embedding_dim)
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {padding_side!r}")

    merged, merged_mask = _merge_context(embedding, input_ids, attention_mask, k, encoder)  # (B, M, C), (B, M)
    parts_embeds, parts_mask = [merged], [merged_mask]
    if head_ids is not None:
        if head_ids.dim() != 2 or head_ids.shape[0] not in (1, merged.shape[0]):
            raise ValueError(f"head_ids must be (1, H) or (B={merged.shape[0]}, H), got shape {tuple(head_ids.shape)}")
        head_ids = head_ids.expand(merged.shape[0], -1)  # (B, H)
        parts_embeds.insert(0, embedding(head_ids))  # (B, H, C)
        parts_mask.insert(0, torch.ones_like(head_ids, dtype=merged_mask.dtype))
    labels = [torch.full(m.shape, IGNORE_INDEX, dtype=torch.long, device=m.device) for m in parts_mask]
    if tail_ids is not None:
        tail_mask = torch.ones_like(tail_ids) if tail_mask is None else tail_mask
        parts_embeds.append(embedding(tail_ids))  # (B, T, C)
        parts_mask.append(tail_mask.to(merged_mask.dtype))
        given = torch.full_like(tail_ids, IGNORE_INDEX) if tail_labels is None else tail_labels
        labels.append(given.masked_fill(tail_mask == 0, IGNORE_INDEX))
    mask, inputs_embeds, label_ids = pack(
        torch.cat(parts_mask, 1), torch.cat(parts_embeds, 1), torch.cat(labels, 1), side=padding_side
    )
    positions = (mask.long().cumsum(dim=1) - 1).masked_fill(mask == 0, 0)  # (B, L)
    return CompressedPrompt(inputs_embeds, mask, positions, label_ids if tail_labels is not None else None)


def _merge_context(
    embedding: torch.nn.Module, input_ids: Tensor, mask: Tensor, k: int, encoder: KTokenEncoder | None
) -> tuple[Tensor, Tensor]:
    """Embed the context and merge it from each sample's first real token (padding moved to the right)."""
    mask, input_ids = pack(mask, input_ids, side="right")
    embeds = embedding(input_ids)  # (B, N, C)
    if encoder is None:
        return mean_merge(embeds, mask, k)
    return encoder(embeds, mask)


def _gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """Reorder the positions of ``x`` (B, N, ...) by ``order`` (B, N)."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)
