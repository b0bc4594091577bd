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

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

__all__ = [
    "MergePlan",
    "bipartite_soft_matching",
    "bipartite_soft_matching_random2d",
    "block_merge",
    "cells_in_grid",
    "hash32",
    "hashed_cell_choice",
    "merge_source",
    "merge_wavg",
    "mergeable_count",
    "random2d_partition",
    "sequence_partition",
    "spacetime_order",
    "temporal_soft_matching",
]


@dataclass(frozen=True)
class MergePlan:
    """The result of one matching: merge ``r`` tokens of a (B, N, ·) sequence, or undo it.

    Everything :meth:`merge` and :meth:`unmerge` need is computed once, when the plan is made, as plain
    tensors (no lazily cached attributes: ``functools.cached_property`` takes a lock, which
    ``torch.compile`` cannot trace), so a plan is built and used inside one compiled graph.

    Attributes:
        keep_idx: (k,) positions of protected tokens, copied through untouched.
        src_idx: (Na,) positions of the merge candidates.
        dst_idx: (Nb,) positions of the destinations.
        unm: (B, Na - r) indices into the candidates that stay unmerged.
        merged: (B, r) indices into the candidates that are merged away.
        target: (B, r) index into the destinations that each merged candidate joins.
        num_tokens: N, the length of the unmerged sequence.
        rows: (B, N) the row of the merged sequence that each original token goes to (derived).
    """

    keep_idx: Tensor
    src_idx: Tensor
    dst_idx: Tensor
    unm: Tensor
    merged: Tensor
    target: Tensor
    num_tokens: int
    rows: Tensor = field(init=False, repr=False)
    _flat_rows: Tensor = field(init=False, repr=False)  # (B * N,) rows of a (B * (N - r), C) view

    def __post_init__(self) -> None:
        rows = _merged_rows(self.keep_idx, self.src_idx, self.dst_idx, self.unm, self.merged, self.target,
                            self.num_tokens)  # (B, N)
        offsets = torch.arange(rows.shape[0], device=rows.device) * self.num_merged_tokens  # (B,)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_flat_rows", (rows + offsets.unsqueeze(1)).flatten())

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
        """Merge (B, N, C) -> (B, N - r, C) by ``mode``: "mean", "sum" or "amax" of each merged group."""
        if self.r == 0:
            return x
        batch, channels = x.shape[0], x.shape[-1]
        rows = batch * self.num_merged_tokens
        flat = x.reshape(batch * self.num_tokens, channels)
        if mode == "amax":
            index = self._flat_rows.unsqueeze(-1).expand(-1, channels)
            merged = flat.new_full((rows, channels), float("-inf")).scatter_reduce(0, index, flat, reduce="amax")
        elif mode in ("mean", "sum"):
            merged = flat.new_zeros(rows, channels).index_add(0, self._flat_rows, flat)  # (B * (N - r), C)
            if mode == "mean":
                merged = merged / self._group_sizes().to(merged.dtype).unsqueeze(-1)
        else:
            raise ValueError(f"merge mode must be 'mean', 'sum' or 'amax'; got {mode!r}")
        return merged.view(batch, self.num_merged_tokens, channels)

    def unmerge(self, x: Tensor) -> Tensor:
        """Undo :meth:`merge` for (B, N - r, C): every token gets back its position and merged sources
        take their destination's value."""
        if self.r == 0:
            return x
        batch, channels = x.shape[0], x.shape[-1]
        flat = x.reshape(batch * self.num_merged_tokens, channels)
        return flat.index_select(0, self._flat_rows).view(batch, self.num_tokens, channels)

    def _group_sizes(self) -> Tensor:
        """(B * (N - r),) how many original tokens each merged row holds. (An index_add into a tensor of
        known size, not ``bincount``, whose output size needs a device-to-host copy on GPUs.)"""
        counts = self._flat_rows.new_zeros(self.rows.shape[0] * self.num_merged_tokens)
        return counts.index_add_(0, self._flat_rows, torch.ones_like(self._flat_rows))


def _merged_rows(keep_idx: Tensor, src_idx: Tensor, dst_idx: Tensor, unm: Tensor, merged: Tensor, target: Tensor,
                 num_tokens: int) -> Tensor:
    """(B, N): the row of the merged layout ``[keep, unmerged src, dst]`` each original token goes to.

    Integer scatters into a tensor of known size only (no masks, no data-dependent shapes)."""
    k, n_unm, n_dst = keep_idx.numel(), unm.shape[1], dst_idx.numel()
    batch, device = unm.shape[0], unm.device
    rows = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    rows[:, keep_idx] = torch.arange(k, device=device)
    rows[:, dst_idx] = torch.arange(k + n_unm, k + n_unm + n_dst, device=device)
    rows.scatter_(1, src_idx[unm], torch.arange(k, k + n_unm, device=device).expand(batch, -1))
    rows.scatter_(1, src_idx[merged], k + n_unm + target)
    return rows


def _match(
    metric: Tensor, keep_idx: Tensor, src_idx: Tensor, dst_idx: Tensor, r: int, local_target: Tensor | None = None
) -> MergePlan:
    """Bipartite soft matching of candidates to destinations by cosine similarity of ``metric``.

    With ``local_target`` (Na,), each candidate may only join that destination (-1: none), which costs
    O(N·C) instead of the all-pairs O(N²·C); the caller then clamps ``r`` to the candidates that have one
    (known from the grid's shape, so no device-to-host copy is needed to count them).
    """
    batch = metric.shape[0]
    # no destination (only protected tokens after the first, a grid smaller than one cell): nothing can merge
    r = max(0, min(r, src_idx.numel())) if dst_idx.numel() else 0
    if r == 0:  # a plan that merges nothing; no similarity to compute
        unm = torch.arange(src_idx.numel(), device=metric.device).expand(batch, -1)  # (B, Na)
        return MergePlan(keep_idx, src_idx, dst_idx, unm, unm[:, :0], unm[:, :0], metric.shape[1])
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        src, dst = metric.index_select(1, src_idx), metric.index_select(1, dst_idx)  # (B, Na, C), (B, Nb, C)
        if local_target is None:
            best, target = (src @ dst.transpose(-1, -2)).max(dim=-1)  # (B, Na)
        else:
            target = local_target.clamp_min(0).expand(batch, -1)  # (B, Na)
            best = (src * dst.index_select(1, target[0])).sum(-1)  # (B, Na)
            best = best.masked_fill(local_target < 0, float("-inf"))
        order = best.argsort(dim=-1, descending=True, stable=True)
        merged, unm = order[:, :r], order[:, r:]
        target = target.gather(1, merged)
    return MergePlan(keep_idx, src_idx, dst_idx, unm, merged, target, metric.shape[1])


def sequence_partition(num_tokens: int, protected: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe's alternating split of a token sequence after ``protected`` leading tokens.

    Returns (keep, src, dst) position tensors: keep = the first ``protected`` positions, then
    alternately a candidate and a destination.
    """
    positions = torch.arange(num_tokens, device=device)
    return positions[:protected], positions[protected::2], positions[protected + 1 :: 2]


_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # spreads consecutive cell indices over the hash input


def hash32(x: Tensor) -> Tensor:
    """A pure integer hash of an int64 tensor, elementwise, onto [0, 2**32).

    Plain tensor arithmetic (xor, shift, multiply, mask) that never leaves int64 range, so it traces
    under ``torch.compile`` and gives the same bits on every device: the destination draw's randomness.
    """
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def hashed_cell_choice(key: Tensor, cells: int, cell_size: int) -> Tensor:
    """(cells,) a pseudo-random position in [0, cell_size) for every cell, a pure function of ``key``.

    Args:
        key: int64 tensor whose first entry seeds the draw (e.g. a hash of seed, timestep and block).
        cells: how many cells to draw for.
        cell_size: positions per cell (sy * sx).

    Returns:
        An int64 tensor on ``key``'s device. No generator, no host copy: a recomputation (gradient
        checkpointing, a compiled graph) with the same key draws the same positions.
    """
    index = torch.arange(cells, device=key.device)
    return hash32(hash32(key.reshape(-1)[:1]) + index * _GOLDEN) % cell_size


def random2d_partition(
    h: int,
    w: int,
    sy: int,
    sx: int,
    choice: Tensor | torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe-for-SD split of an h×w token grid: one destination per ``sy``×``sx`` cell.

    Positions come from arithmetic on the cell grid (no boolean masks, no ``nonzero``): the shapes depend
    only on (h, w, sy, sx), so the split traces under ``torch.compile`` with static shapes.

    Args:
        h, w: the token grid, row-major.
        sy, sx: cell size.
        choice: each cell's destination inside the cell, in [0, sy*sx) row-major: a (cells,) tensor (see
            :func:`hashed_cell_choice`), a dedicated ``torch.Generator`` to draw it from (never the global
            RNG), or None for each cell's first token.
        device: where the position tensors go.

    Returns:
        (keep, src, dst) position tensors: keep is empty; dst holds one position per cell in the cells'
        row-major order; src every other position, ascending (tokens outside the last whole cell, when
        h or w is not a multiple of the stride, are candidates).
    """
    cells_y, cells_x = h // sy, w // sx
    cells, size = cells_y * cells_x, sy * sx
    if choice is None:
        choice = torch.zeros(cells, dtype=torch.long, device=device)
    elif not isinstance(choice, Tensor):  # a generator (tested last: dynamo cannot trace that isinstance)
        choice = torch.randint(size, (cells,), generator=choice, device=choice.device)
    choice = choice.reshape(cells).to(device=device, dtype=torch.long)
    cell = torch.arange(cells, device=device)
    corner = (cell // cells_x) * (sy * w) + (cell % cells_x) * sx  # (cells,) top-left position of each cell
    dst = corner + _offset(choice, w, sx)
    others = torch.arange(size - 1, device=device)
    others = others + (others >= choice.unsqueeze(1)).long()  # (cells, size - 1): every offset but the choice
    inside = (corner.unsqueeze(1) + _offset(others, w, sx)).flatten()
    src = torch.cat([inside, _outside_cells(h, w, cells_y * sy, cells_x * sx, device)]).sort().values
    return torch.empty(0, dtype=torch.long, device=device), src, dst


def _offset(within: Tensor, w: int, sx: int) -> Tensor:
    """Flat-grid offset of row-major positions ``within`` a cell of width ``sx``, on a grid ``w`` wide."""
    return (within // sx) * w + within % sx


def _outside_cells(h: int, w: int, covered_h: int, covered_w: int, device: torch.device | None) -> Tensor:
    """Positions right of and below the whole cells (which cover ``covered_h`` x ``covered_w``)."""
    right = torch.arange(covered_h, device=device).unsqueeze(1) * w + torch.arange(covered_w, w, device=device)
    return torch.cat([right.flatten(), torch.arange(covered_h * w, h * w, device=device)])


def cells_in_grid(h: int, w: int, sy: int, sx: int) -> int:
    """How many whole ``sy``×``sx`` cells (destinations) an h×w grid holds."""
    return (h // sy) * (w // sx)


def mergeable_count(h: int, w: int, sy: int, sx: int, local: bool) -> int:
    """The most tokens a 2-D matching can remove from an h×w grid: every candidate with a destination
    (``local``: only candidates inside whole cells, which can reach their own cell's destination)."""
    cells = cells_in_grid(h, w, sy, sx)
    if cells == 0:
        return 0
    return cells * (sy * sx - 1) if local else h * w - cells


def _cell_of(positions: Tensor, w: int, sy: int, sx: int) -> Tensor:
    """Row-major cell index of flat grid positions (cells of sy×sx, w // sx of them per row)."""
    return (positions // w // sy) * (w // sx) + (positions % w) // sx


def _own_cell_destination(src: Tensor, h: int, w: int, sy: int, sx: int) -> Tensor:
    """For each candidate position, the index of its own cell's destination, or -1 outside whole cells."""
    inside = (src // w < (h // sy) * sy) & (src % w < (w // sx) * sx)
    return torch.where(inside, _cell_of(src, w, sy, sx), -1)


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
    choice: Tensor | torch.Generator | None = None,
    local: bool = False,
) -> MergePlan:
    """ToMe-for-SD matching for an h×w grid of spatial tokens: destinations are one token per sy×sx cell.

    Args:
        metric: (B, h*w, C) similarity features (usually the normed hidden states).
        w, h: the token grid, row-major.
        sx, sy: destination strides.
        r: tokens to remove, clamped to :func:`mergeable_count` (callers that must not cap silently
            compare against it first); 0 on a grid with no whole sy×sx cell, which gives a do-nothing plan.
        choice: each cell's destination (see :func:`random2d_partition`); ``None`` takes the cell's first
            token.
        local: each candidate may only join its own cell's destination: O(N·C) matching instead of
            all-pairs O(N²·C), at the cost of never merging across cells. Tokens outside whole cells
            (sizes that are not multiples of the strides) then stay unmerged.

    Returns:
        A :class:`MergePlan` for sequences of length h*w.
    """
    keep, src, dst = random2d_partition(h, w, sy, sx, choice, metric.device)
    r = min(r, mergeable_count(h, w, sy, sx, local))
    if not local:
        return _match(metric, keep, src, dst, r)
    return _match(metric, keep, src, dst, r, _own_cell_destination(src, h, w, sy, sx))


def merge_wavg(plan: MergePlan, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge of features ``x`` (B, N, C) carrying ``size`` (B, N, 1) tokens each.

    Returns the merged features and merged sizes; ``size=None`` means every token has size 1.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = plan.merge(x * size, mode="sum")
    size = plan.merge(size, mode="sum")
    return x / size, size


def merge_source(plan: MergePlan, source: Tensor | None) -> Tensor:
    """Trace which original tokens each merged token holds.

    Args:
        plan: the merge being applied.
        source: (B, N, N0) 0/1 membership of the current tokens in the N0 original ones, or ``None`` at
            the first merge (identity over N tokens).

    Returns:
        (B, N - r, N0) membership after the merge.
    """
    if source is None:
        batch, n = plan.unm.shape[0], plan.num_tokens
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


def spacetime_order(positions: Tensor, protected: int = 0) -> Tensor:
    """The order that puts video tokens place by place, each place's frames in time order.

    Args:
        positions: (B, N, 3) ``(frame, y, x)`` of each token (in tubelets / patches; a merged token
            carries the size-weighted mean of its members'). The first ``protected`` rows are ignored.
        protected: leading tokens (class tokens) that keep their place at the front.

    Returns:
        (B, N) long indices: gather a sequence with them to sort its non-protected tokens by
        ``(y, x, frame)``, lexicographically (three stable sorts, innermost key first).
    """
    batch, n = positions.shape[:2]
    order = torch.arange(protected, n, device=positions.device).expand(batch, -1)  # (B, N - p)
    for axis in (0, 2, 1):  # frame, then x, then y: the last sort is the most significant key
        key = positions[..., axis].gather(1, order)  # (B, N - p)
        order = order.gather(1, key.argsort(dim=1, stable=True))
    prefix = torch.arange(protected, device=positions.device).expand(batch, -1)
    return torch.cat([prefix, order], dim=1)


def temporal_soft_matching(metric: Tensor, r: int, protected: int = 0) -> MergePlan:
    """Space-time matching for video tokens in :func:`spacetime_order`: merge a token into its neighbour
    in that order, which is the same place in the next frame (temporal redundancy).

    The sequence after ``protected`` alternates candidate, destination: each candidate may only join the
    destination right after it (the last candidate of an odd count joins the one before), and the ``r``
    pairs with the most similar ``metric`` are merged. That costs O(N·C) instead of the all-pairs
    O(N²·C) of :func:`bipartite_soft_matching`, and it never merges across places in one step; across
    layers, merged tokens keep their (mean) place and frame, and re-sorting pairs them again.

    Args:
        metric: (B, N, C) similarity features of tokens already in :func:`spacetime_order`.
        r: pairs to merge; clamped to the number of candidates (needs at least one destination).
        protected: leading tokens never merged.

    Returns:
        A :class:`MergePlan` for sequences of length N.
    """
    keep, src, dst = sequence_partition(metric.shape[1], protected, metric.device)
    if dst.numel() == 0:
        return _match(metric, keep, src, dst, 0)
    partner = torch.arange(src.numel(), device=metric.device).clamp_max(dst.numel() - 1)  # (Na,)
    return _match(metric, keep, src, dst, r, local_target=partner)
