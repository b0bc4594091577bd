"""Token merging for diffusers U-Nets (SD 1.x / 2.x / XL, img2img, inpaint, ControlNet).

What it modifies, and nothing else: forward hooks on each patched ``BasicTransformerBlock`` (to see its
input), on its ``attn1`` / ``attn2`` / ``ff`` submodules (merge their input tokens, unmerge their output)
and on each U-Net-like model (to learn the latent size and seed the destination draw). No ``forward`` is
replaced and no processor is touched, so any attention processor the user set (SDPA, xFormers, IP-Adapter,
LoRA) keeps working and is still there after ``remove_patch``.

Within a block, ToMe for SD: the block input chooses one destination per ``sy``×``sx`` cell of the token
grid (randomly with ``use_rand``), the ``ratio`` share of tokens most similar to a destination are
averaged into it before the merged operation, and copied back out after it.

The defaults differ from tomesd 0.1.3 where measurements said so (see the README's performance section):
blocks are chosen by token count (``min_tokens``) rather than level, the MLP is merged too, matching stays
within each cell, and merged self-attention pools its keys and values 2x2. 0.1.3's behaviour is
``max_downsample=1, min_tokens=0, merge_mlp=False, kv_downsample=1, matching="global"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..merge import MergePlan, bipartite_soft_matching_random2d
from .state import PatchState

OPTIONS: dict[str, Any] = {
    "ratio": 0.5,
    "max_downsample": None,
    "min_tokens": 1024,
    "sx": 2,
    "sy": 2,
    "use_rand": True,
    "merge_attn": True,
    "merge_crossattn": False,
    "merge_mlp": True,
    "seed": 0,
    "kv_downsample": 2,
    "matching": "local",
}

MATCHINGS = ("global", "local")

_BLOCK_CLASS = "BasicTransformerBlock"


def supports(model: Any) -> bool:
    """A diffusers pipeline or model (recognised by its class's module, without importing diffusers)."""
    return any(cls.__module__.startswith("diffusers.") for cls in type(model).__mro__)


@dataclass(frozen=True)
class DiffusersOptions:
    """Validated options of one patch (see :func:`apply` for their meaning)."""

    ratio: float
    max_downsample: int | None
    min_tokens: int
    sx: int
    sy: int
    use_rand: bool
    merge_attn: bool
    merge_crossattn: bool
    merge_mlp: bool
    seed: int
    kv_downsample: int
    matching: str

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
        for name in ("use_rand", "merge_attn", "merge_crossattn", "merge_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {', '.join(map(repr, MATCHINGS))}; got {self.matching!r}")


def _check_number(name: str, value: Any, kind: type) -> None:
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise TypeError(f"{name} must be {'a number' if kind is float else 'an integer'}; got {value!r}")


class LatentContext:
    """Per U-Net-like model: the latent grid of the current forward and the destination generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator = torch.Generator()
        self.height = self.width = 0
        self.calls = 0

    def begin(self, sample: Tensor, timestep: Any) -> None:
        """Start a forward: remember the latent size, reseed so equal timesteps draw equal destinations."""
        self.height, self.width = sample.shape[-2:]
        self.calls += 1
        step = _as_int(timestep)
        self.generator.manual_seed(self.seed * 1_000_003 + (self.calls if step is None else step))


def _as_int(timestep: Any) -> int | None:
    """The timestep as a seed component (the first entry of a tensor), or None if there is none."""
    if timestep is None:
        return None
    if isinstance(timestep, Tensor):
        timestep = timestep.flatten()[0].item() if timestep.numel() else 0
    return int(float(timestep) * 1000)


class BlockMerger:
    """Per transformer block: the merge plan of the current forward, computed on first use."""

    def __init__(self, context: LatentContext, downsample: int, options: DiffusersOptions) -> None:
        self.context = context
        self.downsample = downsample
        self.options = options
        self._input: Tensor | None = None
        self._plan: MergePlan | None = None

    def begin(self, hidden_states: Tensor) -> None:
        """Start a block forward: its input is the similarity metric; forget the previous plan."""
        self._input, self._plan = hidden_states, None

    def plan_for(self, x: Tensor) -> MergePlan | None:
        """The plan for tokens ``x`` (B, N, C), or None where merging does not apply to them."""
        metric = self._input
        if metric is None or x.dim() != 3 or x.shape[:2] != metric.shape[:2]:
            return None
        if self.options.ratio == 0 or metric.shape[1] < self.options.min_tokens:  # exact / would not pay
            return None
        if self._plan is None:
            self._plan = self._match(metric)
        return self._plan

    def pooled_kv(self, x: Tensor) -> Tensor | None:
        """Keys/values for merged self-attention: ``x`` (B, N, C) average-pooled over
        kv_downsample² patches of its grid, or None when pooling is off or does not apply."""
        k = self.options.kv_downsample
        if k == 1 or self._input is None or x.shape[:2] != self._input.shape[:2]:
            return None
        h, w = self.grid(x.shape[1])
        grid = x.transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w)
        pooled = torch.nn.functional.avg_pool2d(grid, k, ceil_mode=True, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)  # (B, ceil(h/k) * ceil(w/k), C)

    def _match(self, metric: Tensor) -> MergePlan:
        opts = self.options
        h, w = self.grid(metric.shape[1])
        generator = self.context.generator if opts.use_rand else None
        r = int(metric.shape[1] * opts.ratio)
        local = opts.matching == "local"
        return bipartite_soft_matching_random2d(metric, w, h, opts.sx, opts.sy, r, generator, local)

    def grid(self, tokens: int) -> tuple[int, int]:
        """The (h, w) token grid of this block, from the latent size and the block's downsample factor."""
        ctx, down = self.context, self.downsample
        h, w = -(-ctx.height // down), -(-ctx.width // down)
        if h * w != tokens:  # a layout we did not foresee: derive the factor from the token count
            down = math.ceil(math.sqrt(ctx.height * ctx.width / tokens))
            h, w = -(-ctx.height // down), -(-ctx.width // down)
        if h * w != tokens:
            raise RuntimeError(f"tomesd: cannot place {tokens} tokens on the {ctx.height}x{ctx.width} latent grid")
        return h, w


def apply(
    model: Any,
    state: PatchState,
    ratio: float = 0.5,
    max_downsample: int | None = None,
    min_tokens: int = 1024,
    sx: int = 2,
    sy: int = 2,
    use_rand: bool = True,
    merge_attn: bool = True,
    merge_crossattn: bool = False,
    merge_mlp: bool = True,
    seed: int = 0,
    kv_downsample: int = 2,
    matching: str = "local",
) -> None:
    """Patch a diffusers pipeline or model with ToMe for SD. Every model of a pipeline that has transformer
    blocks (the U-Net, each ControlNet) is patched.

    Args:
        model: a ``DiffusionPipeline`` or a diffusers model (``UNet2DConditionModel``, ``ControlNetModel``,
            ``Transformer2DModel``...).
        state: the undo log (given by :func:`tomesd.apply_patch`).
        ratio: share of the tokens merged away, in [0, 1). Higher is faster and changes the image more;
            0.5 is a good start, past 0.6 details suffer. Tokens can only merge into another cell's
            destination, so at most ``1 - 1/(sx*sy)`` of them go.
        max_downsample: merge in blocks whose latent is downsampled at most this much (1, 2, 4 or 8), as
            tomesd 0.1.3 did (its default was 1: full latent resolution only). A model with no transformer
            block at that level or finer (SDXL has none at full resolution) merges at its finest level
            that has one instead, so merging always happens. None (the default) chooses by size instead:
            every block with at least ``min_tokens`` tokens merges, whatever its level.
        min_tokens: blocks with fewer tokens than this (per image, at the current resolution) never
            merge: there the work merging saves is too small to pay for it, and each token stands for a
            large part of the image. 1024 (the default) is a 32x32 grid; 0 merges everywhere selected.
        sx, sy: destination stride: one destination per ``sy``×``sx`` cell. 2×2 is the tested default.
        use_rand: draw each cell's destination at random (tomesd's default, fewer grid artefacts), from a
            generator of the patch's own, seeded by ``seed`` and the timestep: the user's RNG is never
            touched and equal inputs give equal images. False takes each cell's first token.
        merge_attn: merge before self-attention (``attn1``): most of the speed.
        merge_crossattn: merge before cross-attention (``attn2``): little speed, more change.
        merge_mlp: merge before the feed-forward (``ff``) too (default True): on SD 1.5 at 512 px it is the
            larger part of the speed, on SDXL most of it (its 32x32 level is MLP-heavy). False as in 0.1.3.
        seed: seed of the destination generator.
        kv_downsample: in merged self-attention, also average-pool the keys and values over
            ``kv_downsample``×``kv_downsample`` patches of the (unmerged) token grid (ToDo-style): attention
            then costs (1 - ratio) / kv_downsample² of the original. 2 by default; 1 is off (as in 0.1.3).
        matching: "local" (default): each candidate may only join its own cell's destination, O(N·C),
            merging only within cells; "global" (ToMe, tomesd 0.1.3): any destination, an all-pairs
            similarity that costs about as much as a small attention at high resolution.

    Raises:
        ValueError: an option out of range, or no transformer block to patch.
        TypeError: an option of the wrong type.
    """
    options = DiffusersOptions(
        ratio, max_downsample, min_tokens, sx, sy, use_rand, merge_attn, merge_crossattn, merge_mlp, seed,
        kv_downsample, matching,
    )
    targets = list(_latent_models(model))
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no {_BLOCK_CLASS} to merge tokens in: tomesd patches U-Net pipelines "
            "and models (Stable Diffusion 1.x/2.x/XL, ControlNet), not VAEs, text encoders or DiT transformers"
        )
    for root, levels in targets:
        _patch_latent_model(root, levels, options, state)


def _latent_models(model: Any) -> Iterator[tuple[nn.Module, dict[nn.Module, int]]]:
    """Each U-Net-like model inside ``model`` with its transformer blocks and their downsample factors."""
    components = getattr(model, "components", None)
    modules = [m for m in components.values() if isinstance(m, nn.Module)] if isinstance(components, dict) else [model]
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        roots = [m for m in module.modules() if hasattr(m, "down_blocks")] or [module]
        for root in roots:
            levels = _block_levels(root)
            if levels:
                yield root, levels


def _block_levels(root: nn.Module) -> dict[nn.Module, int]:
    """Downsample factor of every transformer block of ``root``, walking its down, mid and up blocks."""
    if not hasattr(root, "down_blocks"):
        return {block: 1 for block in _blocks(root)}
    levels: dict[nn.Module, int] = {}
    factor = 1
    for down in root.down_blocks:
        levels.update({block: factor for block in _blocks(down)})
        factor *= 2 if getattr(down, "downsamplers", None) else 1
    if getattr(root, "mid_block", None) is not None:
        levels.update({block: factor for block in _blocks(root.mid_block)})
    for up in getattr(root, "up_blocks", []):
        levels.update({block: factor for block in _blocks(up)})
        factor //= 2 if getattr(up, "upsamplers", None) else 1
    return levels


def _blocks(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if type(m).__name__ == _BLOCK_CLASS]


def _patch_latent_model(root: nn.Module, levels: dict[nn.Module, int], options: DiffusersOptions, state: PatchState) -> None:
    """Hook ``root`` and its blocks at the levels ``max_downsample`` selects."""
    context = LatentContext(options.seed)
    _hook(state, root, _begin_latent(context), pre=True)
    finest = min(levels.values())
    limit = max(levels.values()) if options.max_downsample is None else max(options.max_downsample, finest)
    for block, level in levels.items():
        if level <= limit:
            _patch_block(block, BlockMerger(context, level, options), options, state)


def _patch_block(block: nn.Module, merger: BlockMerger, options: DiffusersOptions, state: PatchState) -> None:
    _hook(state, block, _begin_block(merger), pre=True)
    merged = {"attn1": options.merge_attn, "attn2": options.merge_crossattn, "ff": options.merge_mlp}
    for name, enabled in merged.items():
        sub = getattr(block, name, None)
        if enabled and sub is not None:
            inputs: list[MergePlan | None] = []
            _hook(state, sub, _merge_input(merger, inputs, self_attention=name == "attn1"), pre=True)
            _hook(state, sub, _unmerge_output(inputs), pre=False)


def _hook(state: PatchState, module: nn.Module, fn: Any, pre: bool) -> None:
    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    handle = register(fn, with_kwargs=True)
    state.add_undo(handle.remove)


def _first_input(args: tuple, kwargs: dict, name: str) -> Any:
    return args[0] if args else kwargs.get(name)


def _begin_latent(context: LatentContext):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = _first_input(args, kwargs, "sample" if "sample" in kwargs else "hidden_states")
        timestep = args[1] if len(args) > 1 and hasattr(module, "down_blocks") else kwargs.get("timestep")
        if isinstance(sample, Tensor) and sample.dim() == 4:
            context.begin(sample, timestep)

    return hook


def _begin_block(merger: BlockMerger):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        merger.begin(_first_input(args, kwargs, "hidden_states"))

    return hook


def _merge_input(merger: BlockMerger, plans: list[MergePlan | None], self_attention: bool):
    """Pre-hook: merge the first input's tokens (and, in self-attention, pool the keys/values); remember
    the plan (or None) for the output hook."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = _first_input(args, kwargs, "hidden_states")
        is_self = self_attention and kwargs.get("encoder_hidden_states") is None
        masked = is_self and kwargs.get("attention_mask") is not None
        plan = None if masked or not isinstance(x, Tensor) else merger.plan_for(x)
        plans.append(plan)
        if plan is None:
            return None
        if is_self:
            kv = merger.pooled_kv(x)
            kwargs = kwargs if kv is None else {**kwargs, "encoder_hidden_states": kv}
        merged = plan.merge(x)  # (B, N - r, C)
        return ((merged, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": merged})

    return hook


def _unmerge_output(plans: list[MergePlan | None]):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        plan = plans.pop()
        if plan is None:
            return None
        if isinstance(output, tuple):
            return (plan.unmerge(output[0]), *output[1:])
        return plan.unmerge(output)  # (B, N, C)

    return hook
