"""The diffusers patch's options: one validated dataclass, the single source of defaults, checks and help."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any

MATCHINGS = ("global", "local")


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DiffusersOptions:
    """Validated options of one diffusers patch. Each field's ``metadata["help"]`` is its documentation
    (what :func:`tomesd.patch.diffusers.apply`, the command line and the app show).

    Raises (on construction):
        ValueError: a value out of range.
        TypeError: a value of the wrong type.
    """

    ratio: float = _option(
        0.7,
        "share of the tokens merged away, in [0, 1). Higher is faster and changes the image more. 0.7 (the "
        "default) is, of the ratios measured with global matching (0.3, 0.5, 0.7), the one that keeps SD 1.5 "
        "512 px above 1.3x; 0.5 changes fine detail less and is slower (the README's frontier). Tokens can "
        "only merge into another cell's destination, so at most 1 - 1/(sx*sy) of them go: a higher ratio is "
        "capped there, with a warning (see merge_report for the effective ratio of every block).",
    )
    max_downsample: int | None = _option(
        None,
        "merge in blocks whose latent is downsampled at most this much (1, 2, 4 or 8), as tomesd 0.1.3 did "
        "(its default was 1). A model with no transformer block at that level or finer (SDXL) merges at its "
        "finest level that has one instead. None (the default) chooses by size: every block with at least "
        "min_tokens tokens merges, whatever its level.",
    )
    min_tokens: int = _option(
        1024,
        "blocks with fewer tokens than this (per image, at the current resolution) never merge: the work "
        "saved is too small to pay for it. 1024 (the default) is a 32x32 grid; 0 merges everywhere selected.",
    )
    sx: int = _option(2, "destination stride across: one destination per sy x sx cell. 2x2 is the tested default.")
    sy: int = _option(2, "destination stride down (see sx).")
    use_rand: bool = _option(
        True,
        "draw each cell's destination pseudo-randomly (fewer grid artefacts), as a pure function of seed, "
        "timestep, block and cell: the user's RNG is never touched, equal inputs give equal images, and a "
        "recomputation (gradient checkpointing, a compiled graph) draws the same. False takes each cell's "
        "first token.",
    )
    merge_attn: bool = _option(True, "merge before self-attention (attn1): most of the speed.")
    merge_crossattn: bool = _option(False, "merge before cross-attention (attn2): little speed, more change.")
    merge_mlp: bool = _option(
        True,
        "merge before the feed-forward (ff) too: on SD 1.5 at 512 px the larger part of the speed, on SDXL "
        "most of it. False as in 0.1.3.",
    )
    seed: int = _option(0, "seed of the destination draw.")
    kv_downsample: int = _option(
        1,
        "in merged self-attention, also average-pool the keys and values over kv_downsample x kv_downsample "
        "patches of the unmerged token grid (ToDo-style): attention then costs (1 - ratio) / kv_downsample^2 "
        "of the original. 1 (the default, as in 0.1.3) is off: 2 erases fine textures (stripes, dots) on the "
        "textured demo model for little speed at SD 1.5 512 px (~2%), and with local matching bought ~12% at "
        "1024 px and ~7% on SDXL (the README's frontier). Applies where the attention processor is a standard "
        "one (see merge_report); fused QKV projections and custom processors merge without pooling.",
    )
    matching: str = _option(
        "global",
        "'global' (the default; ToMe, tomesd 0.1.3): a token may join any destination, an all-pairs "
        "similarity of (3/4 N) x (N/4) per image; on the textured demo model it changes fine detail less "
        "than 'local' at every speed measured (the README's frontier). 'local': each token may only join "
        "its own cell's destination, O(N*C) time and memory: for very large grids (SD 1.5 above 1024 px).",
    )
    share_frames: bool = _option(
        False,
        "video U-Nets: match once per clip, on the frames' mean, and merge every frame with that plan "
        "(cheaper matching, the same tokens merged in every frame); False matches each frame on its own.",
    )

    merge_temporal: bool = _option(
        True,
        "AnimateDiff: also run the motion modules on merged places. A motion module attends over the frames "
        "at every place of the grid; with this on (the default), the places merge (one plan for all frames of "
        "a clip, matched on their mean), the module runs on fewer of them, and its output is unmerged with "
        "the skip connection kept exact: 1.85x instead of 1.27x at ratio 0.7 (SD 1.5 + motion adapter, 512 px), "
        "and on the demo motion adapter ~2 dB more change to the clips than merging the spatial blocks alone "
        "(the README's evaluate-motion table). False: motion modules see every place (as in 0.1.3).",
    )

    def __post_init__(self) -> None:
        _check_number("ratio", self.ratio, float)
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be in [0, 1): the share of tokens merged away; got {self.ratio!r}")
        if self.max_downsample is not None:
            _check_number("max_downsample", self.max_downsample, int)
            if self.max_downsample < 1 or self.max_downsample & (self.max_downsample - 1):
                raise ValueError(
                    f"max_downsample must be None (automatic) or a power of two (1, 2, 4, 8); got {self.max_downsample!r}"
                )
        for name in ("min_tokens", "sx", "sy", "seed", "kv_downsample"):
            _check_number(name, getattr(self, name), int)
        for name in ("sx", "sy", "kv_downsample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be 0 or more; got {self.min_tokens!r}")
        for name in ("use_rand", "merge_attn", "merge_crossattn", "merge_mlp", "share_frames", "merge_temporal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {', '.join(map(repr, MATCHINGS))}; got {self.matching!r}")

    def warn_if_capped(self, stacklevel: int) -> None:
        """Warn when ``ratio`` is more than the strides let merge (it is capped at :attr:`max_ratio`). Called
        once per user call (:func:`apply` and :func:`merge_report`), not on every validation, so one request
        warns once; ``stacklevel`` points the warning at the user's line."""
        if self.ratio > self.max_ratio:
            warnings.warn(
                f"tomesd: ratio={self.ratio} is more than sx={self.sx}, sy={self.sy} allow: one token per "
                f"{self.sy}x{self.sx} cell stays, so at most {self.max_ratio:.4g} of the tokens merge (the "
                f"effective ratio); see tomesd.patch.diffusers.merge_report",
                UserWarning,
                stacklevel=stacklevel + 1,
            )

    @property
    def max_ratio(self) -> float:
        """The highest share the strides let merge: all but one token of every sy×sx cell."""
        return 1 - 1 / (self.sx * self.sy)

    @property
    def submodule_switches(self) -> dict[str, bool]:
        """Which merge switch is on, by the switch's name (``merge_attn``...), for the block table."""
        return {"merge_attn": self.merge_attn, "merge_crossattn": self.merge_crossattn, "merge_mlp": self.merge_mlp}


def _check_number(name: str, value: Any, kind: type) -> None:
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise TypeError(f"{name} must be {'a number' if kind is float else 'an integer'}; got {value!r}")


#: The keyword options :func:`tomesd.patch.diffusers.apply` accepts, with their defaults.
OPTIONS: dict[str, Any] = {f.name: f.default for f in fields(DiffusersOptions)}
#: One line of help per option, for command lines and apps.
HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(DiffusersOptions)}
