"""The shared merge core: bipartite soft matching and what is done with its result.

Pure tensor functions with no knowledge of any model. A matching function looks at a ``metric``
(B, N, C) once, under ``no_grad``, and returns a :class:`MergePlan`: the index work done once, to be
applied to features, token sizes and sources alike.

Tokens are split into three sets:

* ``keep``: protected tokens (class, distillation, register tokens) that are never merged;
* ``src`` candidates ("a" in the ToMe paper): the ``r`` most similar to a destination are merged into it;
* ``dst`` ("b"): destinations, which receive the merged tokens.

A merged sequence is laid out as ``[keep, unmerged src, dst]``; :meth:`MergePlan.unmerge` puts every
token back at its original position, merged sources taking the value of their destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

__all__ = [
    "MergePlan",
    "bipartite_soft_matching",
    "bipartite_soft_matching_random2d",
    "block_merge",
    "merge_source",
    "merge_wavg",
    "random2d_partition",
    "sequence_partition",
]


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Token rows of ``x`` (B, N, C) at ``idx``: (n,) shared by the batch, or (B, n) per sample."""
    if idx.dim() == 1:
        return x.index_select(1, idx)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class MergePlan:
    """The result of one matching: merge ``r`` tokens of a (B, N, ·) sequence, or undo it.

    Attributes:
        keep_idx: (k,) positions of protected tokens, copied through untouched.
        src_idx: (Na,) positions of the merge candidates.
        dst_idx: (Nb,) positions of the destinations.
        unm: (B, Na - r) indices into the candidates that stay unmerged.
        merged: (B, r) indices into the candidates that are merged away.
        target: (B, r) index into the destinations that each merged candidate joins.
        num_tokens: N, the length of the unmerged sequence.
    """

    keep_idx: Tensor
    src_idx: Tensor
    dst_idx: Tensor
    unm: Tensor
    merged: Tensor
    target: Tensor
    num_tokens: int

    @property
    def r(self) -> int:
        """How many tokens a merge removes."""
        return self.merged.shape[1]

    @property
    def num_merged_tokens(self) -> int:
        """Length of a merged sequence: N - r."""
        return self.num_tokens - self.r

    def __iter__(self) -> Iterator:
        """Unpack as ``merge, unmerge = plan``, the ToMe idiom."""
        return iter((self.merge, self.unmerge))

    def merge(self, x: Tensor, mode: str = "mean") -> Tensor:
        """Merge (B, N, C) -> (B, N - r, C); ``mode`` is a ``scatter_reduce`` reduction (mean, sum, amax)."""
        if self.r == 0:
            return x
        src = _take(x, self.src_idx)  # (B, Na, C)
        dst = _take(x, self.dst_idx)  # (B, Nb, C)
        unm = _take(src, self.unm)  # (B, Na - r, C)
        moving = _take(src, self.merged)  # (B, r, C)
        index = self.target.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        dst = dst.scatter_reduce(1, index, moving, reduce=mode)
        return torch.cat([_take(x, self.keep_idx), unm, dst], dim=1)

    def unmerge(self, x: Tensor) -> Tensor:
        """Undo :meth:`merge` for (B, N - r, C): every token gets back its position and merged sources
        take their destination's value."""
        if self.r == 0:
            return x
        k, n_unm = self.keep_idx.numel(), self.unm.shape[1]
        keep, unm, dst = x[:, :k], x[:, k : k + n_unm], x[:, k + n_unm :]
        batch, channels = x.shape[0], x.shape[-1]
        out = x.new_empty(batch, self.num_tokens, channels)
        out[:, self.keep_idx] = keep
        out[:, self.dst_idx] = dst
        out.scatter_(1, self._positions(self.unm, channels), unm)
        out.scatter_(1, self._positions(self.merged, channels), _take(dst, self.target))
        return out

    def _positions(self, candidates: Tensor, channels: int) -> Tensor:
        """Sequence positions of candidate indices (B, n), expanded to (B, n, C) for scatter."""
        return self.src_idx[candidates].unsqueeze(-1).expand(-1, -1, channels)


def _match(metric: Tensor, keep_idx: Tensor, src_idx: Tensor, dst_idx: Tensor, r: int) -> MergePlan:
    """Bipartite soft matching of candidates to destinations by cosine similarity of ``metric``."""
    batch = metric.shape[0]
    r = max(0, min(r, src_idx.numel()))
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = _take(metric, src_idx) @ _take(metric, dst_idx).transpose(-1, -2)  # (B, Na, Nb)
        best, target = scores.max(dim=-1)  # (B, Na)
        order = best.argsort(dim=-1, descending=True, stable=True)
        merged, unm = order[:, :r], order[:, r:]
        target = target.gather(1, merged)
    if r == 0:
        empty = torch.empty(batch, 0, dtype=torch.long, device=metric.device)
        merged = target = empty
    return MergePlan(keep_idx, src_idx, dst_idx, unm, merged, target, metric.shape[1])


def sequence_partition(num_tokens: int, protected: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe's alternating split of a token sequence after ``protected`` leading tokens.

    Returns (keep, src, dst) position tensors: keep = the first ``protected`` positions, then
    alternately a candidate and a destination.
    """
    positions = torch.arange(num_tokens, device=device)
    return positions[:protected], positions[protected::2], positions[protected + 1 :: 2]


def random2d_partition(
    h: int, w: int, sy: int, sx: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe-for-SD split of an h×w token grid: one destination per ``sy``×``sx`` cell.

    The destination inside each cell is drawn with ``generator`` (a dedicated one, never the global RNG);
    ``generator=None`` takes each cell's first token. Tokens outside the last whole cell (sizes that are
    not multiples of the strides) are candidates. Returns (keep, src, dst) position tensors (keep is empty).
    """
    cells_y, cells_x = h // sy, w // sx
    if generator is None:
        choice = torch.zeros(cells_y, cells_x, dtype=torch.long)
    else:
        choice = torch.randint(sy * sx, (cells_y, cells_x), generator=generator, device=generator.device).cpu()
    is_dst = torch.zeros(cells_y, cells_x, sy * sx, dtype=torch.bool)
    is_dst.scatter_(2, choice.unsqueeze(-1), True)
    is_dst = is_dst.view(cells_y, cells_x, sy, sx).transpose(1, 2).reshape(cells_y * sy, cells_x * sx)
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[: cells_y * sy, : cells_x * sx] = is_dst
    flat = grid.flatten()
    dst = flat.nonzero().squeeze(1)
    src = (~flat).nonzero().squeeze(1)
    keep = torch.empty(0, dtype=torch.long)
    return keep.to(device), src.to(device), dst.to(device)


def bipartite_soft_matching(metric: Tensor, r: int, protected: int = 0) -> MergePlan:
    """ToMe's matching for sequences (ViT tokens): alternate candidates and destinations.

    Args:
        metric: (B, N, C) similarity features, usually the attention keys averaged over heads.
        r: tokens to remove; clamped to the number of candidates, ``r <= 0`` returns a do-nothing plan.
        protected: leading tokens never merged (class, distillation, register tokens).

    Returns:
        A :class:`MergePlan` for sequences of length N.
    """
    keep, src, dst = sequence_partition(metric.shape[1], protected, metric.device)
    return _match(metric, keep, src, dst, r)


def bipartite_soft_matching_random2d(
    metric: Tensor,
    w: int,
    h: int,
    sx: int,
    sy: int,
    r: int,
    generator: torch.Generator | None = None,
) -> MergePlan:
    """ToMe-for-SD matching for an h×w grid of spatial tokens: destinations are one token per sy×sx cell.

    Args:
        metric: (B, h*w, C) similarity features (usually the normed hidden states).
        w, h: the token grid, row-major.
        sx, sy: destination strides.
        r: tokens to remove (clamped to the number of candidates).
        generator: draws the destination inside each cell; ``None`` takes the cell's first token.

    Returns:
        A :class:`MergePlan` for sequences of length h*w.
    """
    keep, src, dst = random2d_partition(h, w, sy, sx, generator, metric.device)
    return _match(metric, keep, src, dst, r)


def merge_wavg(plan: MergePlan, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge of features ``x`` (B, N, C) carrying ``size`` (B, N, 1) tokens each.

    Returns the merged features and merged sizes; ``size=None`` means every token has size 1.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = plan.merge(x * size, mode="sum")
    size = plan.merge(size, mode="sum")
    return x / size, size


def merge_source(plan: MergePlan, source: Tensor | None, num_tokens: int | None = None) -> Tensor:
    """Trace which original tokens each merged token holds.

    Args:
        plan: the merge being applied.
        source: (B, N, N0) 0/1 membership of the current tokens in the N0 original ones, or ``None`` at
            the first merge (identity over N tokens).
        num_tokens: unused unless ``source`` is None, in which case it defaults to the plan's N.

    Returns:
        (B, N - r, N0) membership after the merge.
    """
    if source is None:
        batch = plan.unm.shape[0]
        n = num_tokens or plan.num_tokens
        source = torch.eye(n, device=plan.src_idx.device).expand(batch, n, n)
    return plan.merge(source, mode="amax")


def block_merge(x: Tensor, k: int, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Merge every ``k`` consecutive tokens of (B, N, C) into one, by weighted mean.

    Args:
        x: (B, N, C) features; a last partial block of fewer than ``k`` tokens is merged on its own.
        k: block length, >= 1.
        weight: (B, N) per-token weights (token sizes, or an attention mask so padding counts 0);
            ``None`` weights every token 1.

    Returns:
        (merged, block_weight): (B, ceil(N/k), C) block means and (B, ceil(N/k)) total weight per block.
        A block whose weight is 0 (all padding) comes out as zeros.

    Raises:
        ValueError: ``k`` below 1.
    """
    if k < 1:
        raise ValueError(f"block length k must be >= 1, got {k}")
    batch, n, channels = x.shape
    if weight is None:
        weight = x.new_ones(batch, n)
    pad = -n % k
    weight = torch.nn.functional.pad(weight.to(x.dtype), (0, pad))  # (B, N + pad)
    x = torch.nn.functional.pad(x, (0, 0, 0, pad))  # (B, N + pad, C)
    blocks = n // k + (pad > 0)
    weight = weight.view(batch, blocks, k)
    total = weight.sum(-1)  # (B, blocks)
    summed = (x.view(batch, blocks, k, channels) * weight.unsqueeze(-1)).sum(2)  # (B, blocks, C)
    return summed / total.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1), total
