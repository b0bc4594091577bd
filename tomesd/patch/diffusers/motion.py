"""Merged places in the motion modules of a video U-Net (AnimateDiff), behind ``merge_temporal``.

A motion module attends over the frames at every place of the (h, w) grid: its tokens are frames, and
merging them would mix time. What can merge are the places. With one plan for every frame of a clip
(matched once, on the frames' mean), the module is handed its input laid out as a grid of the merged
places, ``(B * frames, C, h * w - r, 1)``, so its attention, projections and MLP run on fewer places;
its output is unmerged again. The module adds its own input back (``output = branch + input``): the exit
hook takes that merged input away before unmerging, and adds the unmerged input instead, so the skip
connection stays exact and only the branch is approximated (as in every merged block). Its group norm
sees the merged places (statistics over fewer, averaged tokens: part of the approximation).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...merge import MergePlan, bipartite_soft_matching_random2d, cells_in_grid, hash32, hashed_cell_choice
from ..state import PatchState
from .context import LatentContext
from .hooks import CONTEXT, _attach, _first, _hook, level_limit, merge_count, repeat_per_frame
from .options import DiffusersOptions
from .table import ModelKind, motion_levels

MOTION = "_tomesd_motion"
#: Motion modules draw their destinations with indices apart from the blocks' (0, 1, ...).
INDEX_BASE = 1 << 16


class MotionState:
    """Per motion module: its level and index, whether it merges under the options, and, during its
    forward, the plan with the unmerged and merged inputs the exit hook needs."""

    def __init__(self, context: LatentContext, level: int, index: int, options: DiffusersOptions,
                 enabled: bool) -> None:
        self.context, self.level, self.index, self.options, self.enabled = context, level, index, options, enabled
        self.plan: MergePlan | None = None
        self.input: Tensor | None = None
        self.merged: Tensor | None = None

    def plan_for(self, x: Tensor) -> MergePlan | None:
        """One plan for the places of every frame of each clip in ``x`` (B * frames, C, h, w), or None."""
        frames = self.context.frames
        if not self.enabled or not self.context.started or x.dim() != 4 or x.shape[0] % frames:
            return None
        h, w = x.shape[-2:]
        opts = self.options
        r = merge_count(h * w, (h, w), opts)
        if r == 0:
            return None
        choice = None
        if opts.use_rand:
            key = hash32(self.context.key ^ (INDEX_BASE + self.index))
            choice = hashed_cell_choice(key, cells_in_grid(h, w, opts.sy, opts.sx), opts.sy * opts.sx)
        metric = places(x).unflatten(0, (-1, frames)).mean(1)  # (B, h * w, C): the clip's mean frame
        plan = bipartite_soft_matching_random2d(metric, w, h, opts.sx, opts.sy, r, choice, opts.matching == "local")
        return repeat_per_frame(plan, frames)


def places(x: Tensor) -> Tensor:
    """(B * frames, C, h, w) as tokens, one per place: (B * frames, h * w, C)."""
    return x.flatten(2).transpose(1, 2)


class MotionEnter:
    """Forward pre-hook on a motion module: hand it the merged places as a (h * w - r) x 1 grid."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state: MotionState = getattr(module, MOTION)
        x = _first(args, kwargs, "hidden_states")
        plan = state.plan_for(x) if isinstance(x, Tensor) else None
        state.plan = plan
        if plan is None:
            return None
        merged = plan.merge(places(x)).transpose(1, 2).unsqueeze(-1)  # (B * frames, C, h * w - r, 1)
        state.input, state.merged = x, merged
        return ((merged, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": merged})


class MotionExit:
    """Forward hook on a motion module: unmerge its branch onto the unmerged input (the skip kept exact)."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        state: MotionState = getattr(module, MOTION)
        plan, x, merged = state.plan, state.input, state.merged
        state.plan = state.input = state.merged = None
        if plan is None:
            return None
        branch = (output - merged).squeeze(-1).transpose(1, 2)  # (B * frames, h * w - r, C)
        return x + plan.unmerge(branch).transpose(1, 2).reshape(x.shape)


def patch_motion_modules(root: nn.Module, kind: ModelKind, options: DiffusersOptions, state: PatchState) -> None:
    """Hook every motion module of ``root`` that ``kind.motion`` names (after :func:`~.hooks.patch_model`,
    whose latent context they read). The hooks go on whatever the options; ``merge_temporal`` and
    ``max_downsample`` decide, as state, which modules merge."""
    context: LatentContext = getattr(root, CONTEXT)
    levels = motion_levels(root, kind)
    for index, (module, level) in enumerate(levels.items()):
        enabled = options.merge_temporal and level <= level_limit(levels, options)
        _attach(state, module, MOTION, MotionState(context, level, index, options, enabled))
        _hook(state, module, MotionEnter(), pre=True)
        _hook(state, module, MotionExit(), pre=False)
