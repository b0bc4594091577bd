"""The one hook mechanism: reads a :class:`~.table.ModelKind` and installs forward (pre-)hooks.

Hooks are instances of the small stateless classes below (picklable, no closures); the state lives in
explicit per-model (:class:`~.context.LatentContext`), per-block (:class:`BlockState`) and per-submodule
(:class:`MergeSite`) objects, set as attributes of the modules they belong to (and removed with the patch).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ...merge import MergePlan, bipartite_soft_matching_random2d, cells_in_grid, hash32, hashed_cell_choice, mergeable_count
from ..state import PatchState
from .context import LatentContext
from .options import DiffusersOptions
from .table import KV_POOLING_PROCESSORS, BlockKind, ModelKind


def merge_count(tokens: int, grid: tuple[int, int], options: DiffusersOptions) -> int:
    """The policy: how many of a block's ``tokens`` (per image, on an (h, w) grid) merge away.

    0 at ratio 0, below ``min_tokens``, or where the grid cannot hold one sy×sx cell (the block then runs
    unmerged). Otherwise ``int(tokens * ratio)``, capped at what the strides allow (the cap is what
    :func:`tomesd.patch.diffusers.merge_report` shows as the effective ratio).
    """
    if options.ratio == 0 or tokens < options.min_tokens:
        return 0
    h, w = grid
    return min(int(tokens * options.ratio), mergeable_count(h, w, options.sy, options.sx, options.matching == "local"))


def level_grid(height: int, width: int, level: int) -> tuple[int, int]:
    """The (h, w) grid ``level`` times smaller than a ``height`` x ``width`` latent (rounded up)."""
    return -(-height // level), -(-width // level)


def block_grid(tokens: int, height: int, width: int, level: int) -> tuple[int, int]:
    """The (h, w) token grid of a block ``level`` times smaller than a ``height`` x ``width`` latent.

    Raises:
        RuntimeError: ``tokens`` fits no downsampling of the latent (a layout the table does not describe).
    """
    h, w = level_grid(height, width, level)
    if h * w != tokens:  # a layout we did not foresee: derive the factor from the token count
        level = max(1, round((height * width / max(tokens, 1)) ** 0.5))
        h, w = level_grid(height, width, level)
    if h * w != tokens:
        raise RuntimeError(f"tomesd: cannot place {tokens} tokens on the {height}x{width} latent grid")
    return h, w


def pools_keys_and_values(attention: nn.Module) -> bool:
    """Whether pooled keys/values may be handed to ``attention`` as ``encoder_hidden_states``: only a
    standard processor on unfused projections reads them purely as keys/values."""
    processor = getattr(attention, "processor", None)
    fused = getattr(attention, "fused_projections", False)
    return not fused and type(processor).__name__ in KV_POOLING_PROCESSORS


class BlockState:
    """Per patched block: where it sits (its grid level, its index in the model) and, during its forward,
    the similarity metric (its input) and the merge plan, computed on first use by a submodule."""

    def __init__(self, context: LatentContext, kind: BlockKind, level: int, index: int, options: DiffusersOptions) -> None:
        self.context = context
        self.kind = kind
        self.level = level
        self.index = index
        self.options = options
        self.metric: Tensor | None = None
        self.plan: MergePlan | None = None

    def begin(self, hidden_states: Any) -> None:
        """Start a block forward: its image input (B, N, C) is the metric; forget the previous plan."""
        ok = isinstance(hidden_states, Tensor) and hidden_states.dim() == 3
        self.metric, self.plan = (hidden_states if ok else None), None

    def end(self) -> None:
        """End a block forward: drop the references to its tensors."""
        self.metric = self.plan = None

    def plan_for(self, x: Tensor) -> MergePlan | None:
        """The plan for tokens ``x`` (B, N, C), or None where merging does not apply to them."""
        metric = self.metric
        if metric is None or not self.context.started or x.dim() != 3 or x.shape[:2] != metric.shape[:2]:
            return None
        if self.plan is None:
            self.plan = self._match(metric)
        return self.plan

    def grid(self, tokens: int) -> tuple[int, int]:
        """This block's (h, w) token grid in the current forward."""
        return block_grid(tokens, self.context.height, self.context.width, self.level)

    def _match(self, metric: Tensor) -> MergePlan | None:
        opts = self.options
        h, w = self.grid(metric.shape[1])
        r = merge_count(metric.shape[1], (h, w), opts)
        if r == 0:
            return None
        choice = None
        if opts.use_rand:
            key = hash32(self.context.key ^ self.index)  # (1,): seed, timestep and block
            choice = hashed_cell_choice(key, cells_in_grid(h, w, opts.sy, opts.sx), opts.sy * opts.sx)
        frames = self.context.frames
        shared = opts.share_frames and frames > 1 and metric.shape[0] % frames == 0
        if shared:  # rows are (clip, frame), frame-minor: match the clip's mean frame once
            metric = metric.unflatten(0, (-1, frames)).mean(1)  # (B, N, C)
        plan = bipartite_soft_matching_random2d(metric, w, h, opts.sx, opts.sy, r, choice, opts.matching == "local")
        return repeat_per_frame(plan, frames) if shared else plan

    def pooled_kv(self, x: Tensor) -> Tensor:
        """Keys/values for merged self-attention: ``x`` (B, N, C) average-pooled over kv_downsample²
        patches of its grid (a patch never larger than the grid)."""
        h, w = self.grid(x.shape[1])
        grid = x.transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w)
        kernel = _pool_kernel((h, w), self.options.kv_downsample)
        pooled = torch.nn.functional.avg_pool2d(grid, kernel, ceil_mode=True, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)  # (B, pooled_tokens((h, w), k), C)


def _pool_kernel(grid: tuple[int, int], k: int) -> tuple[int, int]:
    """The kv pooling patch on an (h, w) grid: k x k, never larger than the grid."""
    return min(k, grid[0]), min(k, grid[1])


def pooled_tokens(grid: tuple[int, int], k: int) -> int:
    """How many keys/values :meth:`BlockState.pooled_kv` leaves of an (h, w) grid pooled ``k`` x ``k``."""
    ky, kx = _pool_kernel(grid, k)
    return -(-grid[0] // ky) * -(-grid[1] // kx)


def repeat_per_frame(plan: MergePlan, frames: int) -> MergePlan:
    """A per-clip plan (B rows) as the plan of its B * frames frame rows, each frame merged alike."""
    return dataclasses.replace(plan, unm=plan.unm.repeat_interleave(frames, 0),
                               merged=plan.merged.repeat_interleave(frames, 0),
                               target=plan.target.repeat_interleave(frames, 0))


class MergeSite:
    """A mergeable submodule's part of its block: the block, whether the submodule is self-attention,
    whether it merges under the current options, and the plan its merge pre-hook used, handed to its
    unmerge hook."""

    def __init__(self, block: BlockState, self_attention: bool, enabled: bool) -> None:
        self.block, self.self_attention, self.enabled = block, self_attention, enabled
        self.plan: MergePlan | None = None


# The hooks below keep no state of their own: they read it from the module they are called on, under these
# attribute names. Dynamo does not guard on a module's hook objects (only on how many there are), but it
# does guard on what a traced forward reads from the module: so a compiled model re-patched with other
# options recompiles instead of running the old graph, and a deep copy's hooks use the copy's own state.
CONTEXT, BLOCK, SITE = "_tomesd_context", "_tomesd_block", "_tomesd_site"


def _first(args: tuple, kwargs: dict, name: str) -> Any:
    return args[0] if args else kwargs.get(name)


class ModelEnter:
    """Forward pre-hook on a patched model: start its :class:`LatentContext` from the latent and timestep
    (where they sit in the call is the context's: any argument layout)."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context: LatentContext = getattr(module, CONTEXT)
        sample = _first(args, kwargs, context.sample_arg)
        position = context.timestep_position
        timestep = args[position] if position is not None and len(args) > position else kwargs.get("timestep")
        if isinstance(sample, Tensor) and sample.dim() >= context.sample_rank:
            context.begin(sample, timestep)


def timestep_position(model: nn.Module) -> int | None:
    """The positional index of ``timestep`` in ``model``'s forward (None if it has no such argument)."""
    names = [name for name in inspect.signature(type(model).forward).parameters if name != "self"]
    return names.index("timestep") if "timestep" in names else None


class BlockEnter:
    """Forward pre-hook on a block: its image input becomes the metric."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        block: BlockState = getattr(module, BLOCK)
        block.begin(_first(args, kwargs, block.kind.image_input))


class BlockExit:
    """Forward hook on a block: drop its metric and plan."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        getattr(module, BLOCK).end()


class MergeInput:
    """Forward pre-hook on a merged submodule: merge its first input's tokens and, in self-attention with
    pooling on, hand it pooled keys/values (as ``encoder_hidden_states``, where the processor allows)."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        site: MergeSite = getattr(module, SITE)
        x = _first(args, kwargs, "hidden_states")
        is_self = site.self_attention and kwargs.get("encoder_hidden_states") is None
        masked = is_self and kwargs.get("attention_mask") is not None
        plan = site.block.plan_for(x) if site.enabled and not masked and isinstance(x, Tensor) else None
        site.plan = plan
        if plan is None:
            return None
        if is_self and site.block.options.kv_downsample > 1 and pools_keys_and_values(module):
            kwargs = {**kwargs, "encoder_hidden_states": site.block.pooled_kv(x)}
        merged = plan.merge(x)  # (B, N - r, C)
        return ((merged, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": merged})


class UnmergeOutput:
    """Forward hook on a merged submodule: give its output back every token position."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        site: MergeSite = getattr(module, SITE)
        plan, site.plan = site.plan, None
        if plan is None:
            return None
        if isinstance(output, tuple):
            return (plan.unmerge(output[0]), *output[1:])
        return plan.unmerge(output)  # (B, N, C)


def selected_blocks(root: nn.Module, kind: ModelKind, options: DiffusersOptions) -> dict[nn.Module, int]:
    """The blocks of ``root`` that get hooks, with their levels: those at or below ``max_downsample`` (or
    the finest level with a block, if none is that fine); every block when it is None."""
    levels = kind.locate(root, kind)
    limit = level_limit(levels, options)
    return {block: level for block, level in levels.items() if level <= limit}


def level_limit(levels: dict[nn.Module, int], options: DiffusersOptions) -> int:
    """The coarsest level that merges under ``max_downsample`` among ``levels`` (blocks or motion modules by
    their level): every level when it is None, else the option or the finest level present, whichever is
    coarser."""
    if options.max_downsample is None or not levels:
        return max(levels.values(), default=0)
    return max(options.max_downsample, min(levels.values()))


def merged_submodules(block: nn.Module, kind: BlockKind, options: DiffusersOptions) -> list[tuple[str, nn.Module]]:
    """The (name, submodule) pairs of ``block`` whose switch is on."""
    switches = options.submodule_switches
    return [(name, getattr(block, name)) for name, switch in kind.merges
            if switches[switch] and getattr(block, name, None) is not None]


def patch_model(root: nn.Module, kind: ModelKind, options: DiffusersOptions, state: PatchState) -> None:
    """Hook ``root``, every block it holds and each block's mergeable submodules, recording each change in
    ``state``. The same hooks go on whatever the options: which blocks and submodules merge is state the
    hooks read (so a compiled model re-patched with other options sees the change through dynamo's guards
    on that state, which it would not through hooks added to a module that had none). What differs between
    model kinds comes from the entry: the block state class (grid and matching) and how a submodule is
    hooked (:attr:`~.table.ModelKind.block_state`, :attr:`~.table.ModelKind.hook_site`)."""
    context = LatentContext(options.seed, kind.frame_dim, kind.sample, timestep_position(root), kind.sample_rank)
    _attach(state, root, CONTEXT, context)
    _hook(state, root, ModelEnter(), pre=True)
    block_class, hook_site = kind.block_state or BlockState, kind.hook_site or hook_merge_site
    selected = selected_blocks(root, kind, options)
    for index, (block, level) in enumerate(kind.locate(root, kind).items()):
        block_kind = kind.block_kind(block)
        block_state = block_class(context, block_kind, level, index, options)
        _attach(state, block, BLOCK, block_state)
        _hook(state, block, BlockEnter(), pre=True)
        _hook(state, block, BlockExit(), pre=False)
        enabled = {name for name, _ in merged_submodules(block, block_kind, options)} if block in selected else set()
        for name, _switch in block_kind.merges:
            if getattr(block, name, None) is not None:
                hook_site(state, block, block_state, name, name in enabled)


def hook_merge_site(state: PatchState, block: nn.Module, block_state: BlockState, name: str, enabled: bool) -> None:
    """The default hooks of a candidate submodule ``name`` of ``block``: its :class:`MergeSite`, a pre-hook
    merging its input and a hook unmerging its output."""
    sub = getattr(block, name)
    _attach(state, sub, SITE, MergeSite(block_state, name in block_state.kind.self_attention, enabled))
    _hook(state, sub, MergeInput(), pre=True)
    _hook(state, sub, UnmergeOutput(), pre=False)


def _attach(state: PatchState, module: nn.Module, name: str, value: Any) -> None:
    """Set a patch attribute on ``module`` (none of these exists unpatched); the undo deletes it. The undo
    is a ``partial`` of ``delattr``, not a lambda, so the patch state pickles with the model."""
    setattr(module, name, value)
    state.add_undo(functools.partial(delattr, module, name))


def _hook(state: PatchState, module: nn.Module, hook: Any, pre: bool) -> None:
    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    handle = register(hook, with_kwargs=True)
    state.add_undo(handle.remove)
