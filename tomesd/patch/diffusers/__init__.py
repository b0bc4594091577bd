"""Token merging for diffusers models, driven by a block table.

Supported: U-Nets (SD 1.x / 2.x / XL, img2img, inpaint) and ControlNets, and the diffusion transformers
of :mod:`.dit` (PixArt-α/Σ, DiT, SD3/SD3.5, Flux.1, Wan 2.x); every model kind is an entry of
:data:`.table.MODELS`. A diffusers model with transformer blocks but no entry is refused at apply time with
a ``ValueError`` naming it and the supported kinds; a class refused on purpose (Sana) with the reason.

What it modifies, and nothing else: forward hooks on each patched model (to learn the latent size and key
the destination draw by seed and timestep), on each selected block (to see its input) and on the block's
merged submodules (``attn1`` / ``attn2`` / ``ff`` for a U-Net block: merge their input tokens, unmerge their
output). No ``forward`` is replaced and no processor is touched, so any attention processor the user set
(SDPA, xFormers, IP-Adapter, LoRA) keeps working and is still there after ``remove_patch``.

Within a block, ToMe for SD: the block input chooses one destination per ``sy``×``sx`` cell of the token
grid (pseudo-randomly with ``use_rand``, as a pure hash of seed, timestep, block and cell), the ``ratio``
share of tokens most similar to a destination are averaged into it before the merged operation, and copied
back out after it. A block whose grid cannot hold one cell runs unmerged.

Compiling: patch first, then ``torch.compile`` (``fullgraph=True`` works: the patched forward is one graph
with no break and no host sync, and a new timestep does not recompile). On a model compiled *with* the
patch, ``remove_patch`` and re-applying other options recompile on the next call (dynamo guards on the
number of hooks and on every patch setting the graph read), never running a stale graph. A model compiled
*before* patching would keep running its unpatched graph (dynamo does not guard on hooks a module did not
have), so ``apply_patch`` refuses one it can recognise (a ``torch.compile`` wrapper inside a pipeline,
``module.compile()``); a compiled wrapper held elsewhere cannot be seen from the model: patch first.

Adding a block kind (e.g. a DiT block): write one :class:`~.table.BlockKind` (which submodules merge under
which switch, which of them are self-attention, which argument holds the image tokens), add it to the
:class:`~.table.ModelKind` of the models that hold it (or a new ``ModelKind`` with its grid rule, ``locate``,
and the temporal containers to leave alone; where its blocks find their grid or match differently, its
``block_state`` class, and where its submodules are hooked differently, its ``hook_site``, as :mod:`.dit`
does) in :data:`.table.MODELS`, and add its test to
``tests/test_patch_diffusers_*.py``: ratio 0 bit-identical, ``remove_patch`` bit-identical, token counts.

The defaults differ from tomesd 0.1.3 where measurements said so (see the README's frontier section):
blocks are chosen by token count (``min_tokens``) rather than level, the MLP is merged too, and the default
ratio is 0.7. Matching is global (any destination) as in 0.1.3: on the textured demo model it changed fine
detail less than matching within each cell at every speed measured, and at 0.7 it is faster than local
matching at 0.5. Keys and values are not pooled (``kv_downsample=1``): pooling them 2x2 erased fine textures
for little speed at SD 1.5 512 px. 0.1.3's behaviour is ``ratio=0.5, max_downsample=1, min_tokens=0,
merge_mlp=False``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from torch import nn

from ...merge import cells_in_grid
from ..state import PatchState
from .hooks import (level_grid, level_limit, merge_count, merged_submodules, patch_model, pooled_tokens,
                    pools_keys_and_values, selected_blocks)
from .motion import patch_motion_modules
from .options import HELP, OPTIONS, DiffusersOptions
from .table import MODELS, REFUSED, ModelKind, model_kind, motion_levels, temporal_containers
from . import dit  # noqa: F401  (registers the DiT / MMDiT entries in MODELS and REFUSED)

__all__ = ["OPTIONS", "HELP", "DiffusersOptions", "BlockReport", "supports", "apply", "merge_report"]


def supports(model: Any) -> bool:
    """A diffusers pipeline or model (recognised by its class's module, without importing diffusers)."""
    return any(cls.__module__.startswith("diffusers.") for cls in type(model).__mro__)


def apply(model: Any, state: PatchState, **options: Any) -> None:
    """Patch a diffusers pipeline or model with ToMe for SD. Every model of a pipeline that the block
    table knows (the U-Net, each ControlNet) is patched.

    Args:
        model: a ``DiffusionPipeline`` or a diffusers model (``UNet2DConditionModel``, ``ControlNetModel``).
        state: the undo log (given by :func:`tomesd.apply_patch`).
        **options: the fields of :class:`DiffusersOptions` (defaults in :data:`OPTIONS`, one line of help
            each in :data:`HELP`).

    Raises:
        ValueError: an option out of range; a diffusers model with transformer blocks that the table does
            not know (named, with the supported ones); nothing to patch.
        TypeError: an option of the wrong type.
    """
    opts = DiffusersOptions(**options)
    targets = find_targets(model)
    opts.warn_if_capped(stacklevel=3)  # here <- tomesd.apply_patch <- the user's line
    for root, kind in targets:
        _warn_if_no_cell_fits(root, kind, opts)
        patch_model(root, kind, opts, state)
        if kind.motion:
            patch_motion_modules(root, kind, opts, state)


def _warn_if_no_cell_fits(root: nn.Module, kind: ModelKind, opts: DiffusersOptions) -> None:
    """Say so at apply time when, at the model's native latent size (``config.sample_size``), no selected
    block's grid holds one sy×sx cell: nothing would merge there (such blocks run unmerged)."""
    size = getattr(getattr(root, "config", None), "sample_size", None)
    size = (size, size) if isinstance(size, int) else size
    if not size or len(size) != 2:
        return
    levels = set(selected_blocks(root, kind, opts).values())
    grids = {level_grid(size[0], size[1], level) for level in levels}
    if levels and all(cells_in_grid(h, w, opts.sy, opts.sx) == 0 for h, w in grids):
        warnings.warn(
            f"tomesd: at {type(root).__name__}'s native latent size {size[0]}x{size[1]}, no block's token grid "
            f"holds one {opts.sy}x{opts.sx} cell (grids {', '.join(f'{h}x{w}' for h, w in sorted(grids))}): those "
            "blocks run unmerged; lower sx/sy or use a larger resolution",
            UserWarning,
            stacklevel=4,
        )


def find_targets(model: Any) -> list[tuple[nn.Module, ModelKind]]:
    """Every model inside ``model`` (itself, or a pipeline's components) that the table knows, with its
    entry. Nothing is changed.

    Raises:
        ValueError: a component has transformer blocks outside any known model (an unsupported class), or
            there is nothing to patch.
    """
    targets: list[tuple[nn.Module, ModelKind]] = []
    components = _components(model)
    for component in components:  # first: a refusal's reason says more than "unsupported"
        _refuse_on_purpose(component)
    for component in components:
        roots = list(_known_roots(component))
        covered = {id(m) for root, _ in roots for m in root.modules()}
        unknown = [m for m in _untemporal_modules(component) if id(m) not in covered and _is_transformer_block(m)]
        if unknown:
            raise ValueError(
                f"tomesd cannot merge tokens in {type(component).__name__} (it has {type(unknown[0]).__name__} "
                f"blocks): the supported diffusers models are {', '.join(MODELS)}"
            )
        targets += [(root, kind) for root, kind in roots if kind.locate(root, kind)]  # a net with no block: nothing to merge
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no BasicTransformerBlock to merge tokens in: tomesd patches "
            f"{', '.join(MODELS)} (and pipelines holding them), not VAEs or text encoders"
        )
    return targets


def _refuse_on_purpose(module: nn.Module) -> None:
    """Raise the reason of :data:`.table.REFUSED` if ``module`` or a submodule is a refused class."""
    for sub in module.modules():
        reason = next((REFUSED[cls.__name__] for cls in type(sub).__mro__ if cls.__name__ in REFUSED), None)
        if reason is not None:
            raise ValueError(f"tomesd does not merge tokens in {type(sub).__name__}: {reason}")


def _components(model: Any) -> list[nn.Module]:
    components = getattr(model, "components", None)
    candidates = components.values() if isinstance(components, dict) else [model]
    return [m for m in candidates if isinstance(m, nn.Module)]


def _known_roots(module: nn.Module) -> Iterator[tuple[nn.Module, ModelKind]]:
    """The outermost modules under (or equal to) ``module`` with a table entry.

    Raises:
        ValueError: one of them is already compiled: hooks added now would never run in its graph.
    """
    kind = model_kind(module)
    if _is_compiled(module) or (kind is not None and any(_is_compiled(m) for m in module.modules())):
        raise ValueError(
            f"{type(getattr(module, '_orig_mod', module)).__name__} is already compiled: a compiled graph never "
            "sees hooks added later. Patch first, then compile (tomesd.apply_patch(pipe), then "
            "pipe.unet = torch.compile(pipe.unet))"
        )
    if kind is not None:
        yield module, kind
        return
    for child in module.children():
        yield from _known_roots(child)


def _is_compiled(module: nn.Module) -> bool:
    """A ``torch.compile`` wrapper, or a module compiled in place (``module.compile()``)."""
    return hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None


def _untemporal_modules(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and its descendants, skipping subtrees of temporal containers (frames as tokens)."""
    if type(module).__name__ in temporal_containers():
        return
    yield module
    for child in module.children():
        yield from _untemporal_modules(child)


def _is_transformer_block(module: nn.Module) -> bool:
    """A diffusers module with an attention module as a direct child: a transformer block of some kind
    (a VAE's attention sits in a list, not directly in its mid block)."""
    if not type(module).__module__.startswith("diffusers."):
        return False
    return any("Attention" in {cls.__name__ for cls in type(child).__mro__} or type(child).__name__.endswith("Attention")
               for child in module.children())


@dataclass(frozen=True)
class BlockReport:
    """What the patch does in one block for one latent size (see :func:`merge_report`).

    Attributes:
        model: class name of the patched model holding the block.
        name: the block's module path inside that model.
        level: its downsampling factor against the latent.
        tokens: its tokens per image (h * w).
        grid: its (h, w) token grid.
        submodules: the submodules that merge (empty: the block runs unmerged).
        merged: tokens merged away per image (r).
        requested_ratio: the ``ratio`` option.
        effective_ratio: merged / tokens: what really happens. Below the requested ratio where the
            strides cap it (at most 1 - 1/(sx*sy); with local matching, tokens outside whole cells stay).
        kv_tokens: keys/values per image in merged self-attention (tokens when not pooled).
        reason: why the block runs unmerged ("" when it merges).
    """

    model: str
    name: str
    level: int
    tokens: int
    grid: tuple[int, int]
    submodules: tuple[str, ...]
    merged: int
    requested_ratio: float
    effective_ratio: float
    kv_tokens: int
    reason: str


def merge_report(model: Any, latent_size: tuple[int, int], **options: Any) -> list[BlockReport]:
    """Which blocks and submodules would merge, and how much, for ``model`` under ``options`` at a latent
    of ``latent_size`` = (height, width) (pixels / the VAE's scale factor, 8 for SD). The same policy the
    hooks apply: a benchmark or an app can show it without re-implementing it.

    Args:
        model: a pipeline or diffusers model (patched or not; nothing is changed).
        latent_size: the latent's (height, width).
        **options: patch options (defaults: :data:`OPTIONS`).

    Returns:
        One :class:`BlockReport` per transformer block of every model the patch would hook, in module
        order (blocks left out by ``max_downsample`` included, with their reason), then one per motion
        module of a video U-Net that ``merge_temporal`` can merge.

    Raises:
        ValueError / TypeError: as :func:`apply` would.
    """
    opts = DiffusersOptions(**options)
    targets = find_targets(model)  # a model the patch refuses is refused before any warning about the ratio
    opts.warn_if_capped(stacklevel=2)
    height, width = latent_size
    reports = []
    for root, kind in targets:
        selected = selected_blocks(root, kind, opts)
        names = {module: name for name, module in root.named_modules()}
        for block, level in kind.locate(root, kind).items():
            reports.append(_block_report(root, names[block], block, kind, level, block in selected, height, width, opts))
        levels = motion_levels(root, kind) if kind.motion else {}
        reports += [_motion_report(root, names[module], level, level <= level_limit(levels, opts), height, width, opts)
                    for module, level in levels.items()]
    return reports


def _motion_report(root: nn.Module, name: str, level: int, selected: bool, height: int, width: int,
                   opts: DiffusersOptions) -> BlockReport:
    """A motion module's row: its places merge as a whole module when ``merge_temporal`` is on."""
    grid = level_grid(height, width, level)
    tokens = grid[0] * grid[1]
    merged = merge_count(tokens, grid, opts) if selected and opts.merge_temporal else 0
    reason = "" if merged else ("motion module: merge_temporal=False" if not opts.merge_temporal
                                else _reason(selected, tokens, grid, merged, opts))
    return BlockReport(type(root).__name__, name, level, tokens, grid, ("the whole motion module",) if merged else (),
                       merged, opts.ratio, merged / tokens, tokens - merged, reason)


def _block_report(root: nn.Module, name: str, block: nn.Module, kind: ModelKind, level: int, selected: bool,
                  height: int, width: int, opts: DiffusersOptions) -> BlockReport:
    grid = level_grid(height, width, level)  # as the hooks see it (block_grid)
    tokens = grid[0] * grid[1]
    block_kind = kind.block_kind(block)
    merged = merge_count(tokens, grid, opts) if selected else 0
    submodules = tuple(name for name, _ in merged_submodules(block, block_kind, opts)) if merged else ()
    kv_tokens = tokens
    pooling = [getattr(block, n) for n in submodules if n in block_kind.self_attention]
    if opts.kv_downsample > 1 and pooling and pools_keys_and_values(pooling[0]):
        kv_tokens = pooled_tokens(grid, opts.kv_downsample)
    reason = "" if submodules else _reason(selected, tokens, grid, merged, opts)
    return BlockReport(type(root).__name__, name, level, tokens, grid, submodules, merged, opts.ratio,
                       merged / tokens, kv_tokens, reason)


def _reason(selected: bool, tokens: int, grid: tuple[int, int], merged: int, opts: DiffusersOptions) -> str:
    if not selected:
        return f"level above max_downsample={opts.max_downsample}"
    if opts.ratio == 0:
        return "ratio 0"
    if tokens < opts.min_tokens:
        return f"{tokens} tokens < min_tokens={opts.min_tokens}"
    if grid[0] < opts.sy or grid[1] < opts.sx:
        return f"the {grid[0]}x{grid[1]} grid holds no {opts.sy}x{opts.sx} cell"
    if merged == 0:
        return "ratio too small to merge one token here"
    return "no merged submodule (merge_attn, merge_crossattn, merge_mlp all off)"
