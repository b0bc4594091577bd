"""The K-token encoder: a learned merge of ``k`` consecutive embeddings that starts as their mean.

``encoder(block) = mean(block) + mlp(concat(block))``: the residual MLP sees the block's embeddings in
order (which the mean cannot), and its output layer starts at zero, so an untrained encoder returns the
mean **exactly** (bit for bit the training-free :func:`tomesd.llm.compress.mean_merge`). Training then
only has to learn a correction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import check_block_length, mean_merge

__all__ = ["KTokenEncoder"]


class KTokenEncoder(nn.Module):
    """Merge every ``k`` consecutive embeddings of a (B, N, C) right-padded sequence into one.

    Args:
        hidden_size: the language model's embedding width C.
        k: block length, >= 1.
        inner_size: width of the residual MLP; ``None`` means ``hidden_size``.

    Raises:
        TypeError: ``k`` is not an int.
        ValueError: ``k`` below 1, or a size below 1.
    """

    def __init__(self, hidden_size: int, k: int, inner_size: int | None = None) -> None:
        super().__init__()
        check_block_length(k)
        inner_size = hidden_size if inner_size is None else inner_size
        if hidden_size < 1 or inner_size < 1:
            raise ValueError(f"hidden_size and inner_size must be >= 1, got {hidden_size} and {inner_size}")
        self.hidden_size, self.k, self.inner_size = hidden_size, k, inner_size
        self.norm = nn.LayerNorm(k * hidden_size)
        self.up = nn.Linear(k * hidden_size, inner_size)
        self.act = nn.GELU()
        self.down = nn.Linear(inner_size, hidden_size)
        # Zero output layer: the correction starts at exactly 0, so the encoder starts as the mean.
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def config(self) -> dict[str, int]:
        """The constructor arguments, to rebuild this encoder from a checkpoint."""
        return {"hidden_size": self.hidden_size, "k": self.k, "inner_size": self.inner_size}

    def check_compatible(self, k: int, hidden_size: int) -> None:
        """Raise ``ValueError`` unless this encoder merges blocks of ``k`` embeddings of width ``hidden_size``."""
        if k != self.k:
            raise ValueError(f"this encoder merges blocks of k={self.k} tokens, but k={k} was asked")
        if hidden_size != self.hidden_size:
            raise ValueError(
                f"encoder hidden size {self.hidden_size} does not match the model's embedding size {hidden_size}; "
                f"build KTokenEncoder(hidden_size={hidden_size}, k={k})"
            )

    def forward(self, embeds: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Merge ``embeds`` (B, N, C), right-padded with ``mask`` (B, N) 1 on real tokens.

        Returns:
            (merged, merged_mask): (B, ceil(N/k), C) and (B, ceil(N/k)) 1 where a block holds a real token.
        """
        if embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"expected embeddings of width {self.hidden_size}, got shape {tuple(embeds.shape)}")
        batch, n, channels = embeds.shape
        if mask is None:
            mask = embeds.new_ones(batch, n, dtype=torch.long)
        mean, merged_mask = mean_merge(embeds, mask, self.k)  # (B, M, C), (B, M)
        blocks = embeds * mask.unsqueeze(-1).to(embeds.dtype)  # padding slots read as zeros
        blocks = nn.functional.pad(blocks, (0, 0, 0, -n % self.k))  # (B, M * k, C)
        blocks = blocks.reshape(batch, mean.shape[1], self.k * channels)  # (B, M, k * C)
        correction = self.down(self.act(self.up(self.norm(blocks))))  # (B, M, C)
        return mean + correction, merged_mask
