"""What every family that merges a token sequence layer by layer shares (timm, transformers).

A sequence family merges ``r`` tokens after some layers of an encoder whose first ``protected`` tokens
(class, distillation, register tokens) are never merged. This module holds, once for all of them:

* the ``r`` schedule: :func:`parse_r` turns the option into one r per layer, :func:`check_schedule`
  refuses a schedule the model has not the tokens for (at patch time) and :func:`check_layer_tokens`
  does the same at run time for inputs of another size;
* the per-layer setting (:class:`LayerMerge`) and the per-forward state (:class:`SequenceMerge`: token
  sizes, sources, the latest keys), with :func:`set_r` and :func:`merge_sources` working on it;
* the proportional-attention bias ``log(size)`` (:func:`log_size_bias`).

A family says how it finds its layers and its token count; the bookkeeping here does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from torch import Tensor, nn

__all__ = ["LayerMerge", "RSchedule", "SequenceMerge", "check_layer_tokens", "check_schedule", "layer_merges",
           "log_size_bias", "merge_sources", "mergeable", "parse_r", "patch_info", "set_r"]

RSchedule = Union[int, tuple, Sequence[int]]


@dataclass
class LayerMerge:
    """One patched layer's own setting: its index (for messages) and how many tokens it merges.

    An object per layer rather than an index into a shared schedule, so that a compiled graph depends on
    the layer's r only: layers merging the same r can share compiled code (layer-by-layer compilation).
    """

    index: int
    r: int


@dataclass
class SequenceMerge:
    """What the patched layers of one model share during a forward."""

    layers: list[LayerMerge]  # one per layer, in order
    protected: int
    proportional_attention: bool
    trace_source: bool
    options: dict[str, Any]  # the patch's recorded options (PatchState.options), kept in step by set_r
    size: Tensor | None = None  # (B, N, 1) input tokens held by each current token
    source: Tensor | None = None  # (B, N, N0) membership of current tokens in the input tokens
    metric: Tensor | None = None  # (B, N, C) keys of the latest attention, averaged over heads

    def reset(self) -> None:
        """Forget the previous forward's state (called at the start of every forward)."""
        self.size = self.source = self.metric = None


def layer_merges(schedule: list[int]) -> list[LayerMerge]:
    """One :class:`LayerMerge` per entry of a parsed schedule, indexed in order."""
    return [LayerMerge(index, layer_r) for index, layer_r in enumerate(schedule)]


def parse_r(r: RSchedule, num_layers: int) -> list[int]:
    """Turn an ``r`` option into the number of tokens each layer removes.

    Args:
        r: an ``int`` (the same r in every layer); a ``tuple`` ``(r, inflection)`` with inflection in
            [-1, 1], a linear schedule averaging r that goes from ``r * (1 - inflection)`` in the first
            layer to ``r * (1 + inflection)`` in the last (positive: merge more in late layers); or a
            ``list`` with one int per layer.
        num_layers: how many layers the model has.

    Returns:
        One non-negative int per layer.

    Raises:
        TypeError: ``r`` is none of the accepted forms.
        ValueError: a negative r, an inflection outside [-1, 1], or a list of the wrong length.
    """
    if isinstance(r, tuple):
        if len(r) != 2 or not _is_int(r[0]) or isinstance(r[1], bool) or not isinstance(r[1], (int, float)):
            raise TypeError(f"an r schedule tuple must be (r: int, inflection: float), got {r!r}")
        base, inflection = r
        if not -1.0 <= inflection <= 1.0:
            raise ValueError(f"the inflection of r=({base}, {inflection}) must be in [-1, 1]")
        _check_non_negative(base)
        step = 2 * inflection / max(num_layers - 1, 1)
        schedule = [round(base * (1 - inflection + step * layer)) for layer in range(num_layers)]
    elif _is_int(r):
        _check_non_negative(r)
        schedule = [int(r)] * num_layers
    elif isinstance(r, list) and all(_is_int(value) for value in r):
        if len(r) != num_layers:
            raise ValueError(f"an r list needs one value per layer: got {len(r)} values for {num_layers} layers")
        for value in r:
            _check_non_negative(value)
        schedule = [int(value) for value in r]
    else:
        raise TypeError(f"r must be an int, an (r, inflection) tuple or a list of ints per layer, got {r!r}")
    return schedule


def set_r(info: SequenceMerge, r: RSchedule, num_tokens: int) -> None:
    """Give every layer of a patch its r from a new schedule, after checking the model has the tokens.

    Args:
        info: the patch's shared state.
        r: the new schedule (see :func:`parse_r`).
        num_tokens: tokens entering the first layer at the model's configured input size.

    Raises:
        TypeError, ValueError: as :func:`parse_r` and :func:`check_schedule`; nothing changes then.
    """
    schedule = parse_r(r, len(info.layers))
    check_schedule(schedule, num_tokens, info.protected, r)
    for layer, layer_r in zip(info.layers, schedule):
        layer.r = layer_r
    info.options["r"] = r


def merge_sources(info: SequenceMerge) -> Tensor | None:
    """The (B, N, N0) sources of the latest forward, or ``None`` if nothing was merged.

    Raises:
        ValueError: the patch was made without ``trace_source``.
    """
    if not info.trace_source:
        raise ValueError("merge_sources needs the model patched with trace_source=True")
    return info.source


def patch_info(model: nn.Module, attr: str, family: str) -> Any:
    """The state a family's patch stored on ``model`` under ``attr``.

    Raises:
        ValueError: ``model`` is not patched by that family.
    """
    info = getattr(model, "__dict__", {}).get(attr)
    if info is None:
        raise ValueError(f"this {type(model).__name__} is not patched by tomesd's {family} family; "
                         "call tomesd.apply_patch(model, r=...) first")
    return info


def log_size_bias(size: Tensor) -> Tensor:
    """(B, 1, 1, N) additive attention bias ``log(size)`` on the keys, from token sizes (B, N, 1)."""
    return size.log().squeeze(-1)[:, None, None, :]


def mergeable(num_tokens: int, protected: int) -> int:
    """How many merge candidates ToMe's alternating split offers (every other non-protected token)."""
    return (num_tokens - protected + 1) // 2


def check_schedule(schedule: list[int], num_tokens: int, protected: int, r: RSchedule) -> None:
    """Raise ValueError if some layer would merge more tokens than it has candidates.

    Args:
        schedule: one r per layer (from :func:`parse_r`).
        num_tokens: tokens entering the first layer.
        protected: leading tokens never merged.
        r: the option the schedule came from, for the message.
    """
    held = num_tokens
    for layer, layer_r in enumerate(schedule):
        if layer_r > mergeable(held, protected):
            raise ValueError(
                f"r={r!r} merges {layer_r} tokens in layer {layer}, which has only "
                f"{mergeable(held, protected)} mergeable of {held}; the largest constant r "
                f"for this model is {_largest_constant_r(len(schedule), num_tokens, protected)}"
            )
        held -= layer_r


def check_layer_tokens(layer: LayerMerge, num_tokens: int, protected: int, set_r_name: str) -> None:
    """The run-time form of :func:`check_schedule`, for inputs of another size than configured.

    Args:
        layer: the layer about to merge.
        num_tokens: tokens it holds now.
        protected: leading tokens never merged.
        set_r_name: the family's ``set_r`` to suggest (e.g. ``"tomesd.patch.timm.set_r"``).

    Raises:
        ValueError: the layer has fewer than ``layer.r`` candidates.
    """
    if layer.r > mergeable(num_tokens, protected):
        raise ValueError(f"layer {layer.index} would merge r={layer.r} of {num_tokens} tokens (at most "
                         f"{mergeable(num_tokens, protected)}): lower r with {set_r_name}")


def _largest_constant_r(num_layers: int, num_tokens: int, protected: int) -> int:
    """The largest r that every layer of the model can merge."""
    for r in range(mergeable(num_tokens, protected), 0, -1):
        # layer l holds num_tokens - l*r tokens; the last layer is the tightest
        if r <= mergeable(num_tokens - (num_layers - 1) * r, protected):
            return r
    return 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_non_negative(value: int) -> None:
    if value < 0:
        raise ValueError(f"r must be >= 0 (tokens merged per layer), got {value}")
