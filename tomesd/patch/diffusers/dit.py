"""Block-table entries and hooks for diffusion transformers: DiT, PixArt-α/Σ, SD3/SD3.5, Flux.1 and Wan 2.x.

What merges where (image tokens only; text tokens are never merged):

* PixArt, DiT (``BasicTransformerBlock`` on a patchified latent): ``attn1`` and ``ff`` (``attn2`` with
  ``merge_crossattn``), as in a U-Net block. The token grid is the latent's height and width over the patch
  size, read from the model input's shape.
* SD3/SD3.5 (``JointTransformerBlock``): the image input of the joint ``attn`` (its image output unmerged,
  its text output untouched), SD3.5's image-only ``attn2`` and ``ff``. The text stream stays whole, so text
  queries attend to the merged image tokens plus the full text. Grid as for PixArt.
* Flux.1: double-stream blocks as SD3, with the rotary table of the merged image tokens gathered so that a
  merged token takes its destination's position (an unmerged one keeps its own). Single-stream blocks (text
  and image concatenated): the image part of the normalised tokens is merged after ``norm``, so attention
  and the parallel MLP both run on text + merged image, and the image part is unmerged after ``proj_out``.
  The packed (B, N, C) input carries no grid, so Flux uses a rule that needs none: one destination per
  window of ``sx * sy`` consecutive tokens in sequence order (raster order, so 1 x (sx*sy) strips of a
  row), and one merge plan for the whole batch (the rotary table has no batch dimension).
* Wan 2.x: spatial merging per frame (each frame of the latent is matched on its own (h, w) grid with the
  U-Net's 2-D cells, frames never mix), in ``attn1`` (its 3-D rotary table gathered per sample), ``ffn``
  and, with ``merge_crossattn``, ``attn2``.

Sana is refused at apply time (see :data:`REFUSED`).

All hooks are forward (pre-)hooks on the blocks and their submodules, as for the U-Nets: no forward and no
attention processor is replaced, so the dispatcher backend or processor in use keeps working and
``remove_patch`` leaves the model as it was.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...merge import (
    MergePlan,
    bipartite_soft_matching_random2d,
    cells_in_grid,
    hash32,
    hashed_cell_choice,
    mergeable_count,
)
from ..state import PatchState
from .hooks import SITE, BlockState, MergeInput, MergeSite, UnmergeOutput, _attach, _hook, level_grid, merge_count
from .options import DiffusersOptions
from .table import BASIC, MODELS, REFUSED, BlockKind, ModelKind

# --- the merge plans of a DiT: positions for rotary tables -------------------------------------------


def merged_positions(plan: MergePlan) -> Tensor:
    """(B, N - r): the original position each row of a merged sequence stands for — its own for a kept
    or unmerged token, its destination's for a merged group (rows come as ``[keep | unmerged | dst]``)."""
    batch = plan.unm.shape[0]
    unmerged = plan.src_idx[plan.unm]  # (B, Na - r)
    return torch.cat([plan.keep_idx.expand(batch, -1), unmerged, plan.dst_idx.expand(batch, -1)], dim=1)


def _shared(plan: MergePlan, batch: int) -> MergePlan:
    """A plan matched once (batch 1) applied to every element of a batch of ``batch``."""
    return MergePlan(plan.keep_idx, plan.src_idx, plan.dst_idx, plan.unm.expand(batch, -1),
                     plan.merged.expand(batch, -1), plan.target.expand(batch, -1), plan.num_tokens)


class FramedPlan:
    """One 2-D plan per frame of a frame-major (B, F * n, C) sequence: the frames are merged independently
    (a (B * F, n, C) plan underneath) and the merged frames stay in order, (B, F * (n - r), C)."""

    def __init__(self, plan: MergePlan, frames: int) -> None:
        self.plan, self.frames = plan, frames
        self.num_tokens = frames * plan.num_tokens
        self.num_merged_tokens = frames * plan.num_merged_tokens

    @property
    def r(self) -> int:
        """Tokens a merge removes from one sample (all frames)."""
        return self.frames * self.plan.r

    def merge(self, x: Tensor) -> Tensor:
        """(B, F * n, C) -> (B, F * (n - r), C), mean of each merged group."""
        frames = x.reshape(x.shape[0] * self.frames, self.plan.num_tokens, x.shape[-1])
        return self.plan.merge(frames).reshape(x.shape[0], self.num_merged_tokens, x.shape[-1])

    def unmerge(self, x: Tensor) -> Tensor:
        """(B, F * (n - r), C) -> (B, F * n, C)."""
        frames = x.reshape(x.shape[0] * self.frames, self.plan.num_merged_tokens, x.shape[-1])
        return self.plan.unmerge(frames).reshape(x.shape[0], self.num_tokens, x.shape[-1])

    def positions(self) -> Tensor:
        """(B, F * (n - r)): original positions in the whole sequence (see :func:`merged_positions`)."""
        within = merged_positions(self.plan)  # (B * F, n - r)
        offsets = torch.arange(self.frames, device=within.device).repeat(within.shape[0] // self.frames)
        return (within + (offsets * self.plan.num_tokens).unsqueeze(1)).reshape(-1, self.num_merged_tokens)


def plan_positions(plan: MergePlan | FramedPlan) -> Tensor:
    """(B, N - r) original positions of a merged sequence's rows, for either kind of plan."""
    return plan.positions() if isinstance(plan, FramedPlan) else merged_positions(plan)


def gather_rotary(table: Any, plan: MergePlan | FramedPlan) -> Any:
    """The rotary table of a merged sequence: each row takes the rotation of the position it stands for.

    ``table`` is a ``(cos, sin)`` pair, each either (T + N, D) over text then image tokens (Flux: no batch
    dimension, so ``plan`` must be shared by the batch; the T text rows are kept), or (1, N, 1, D) over
    image tokens (Wan: gathered per sample to (B, N - r, 1, D)). Anything else is returned unchanged.
    """
    if not isinstance(table, tuple) or len(table) != 2 or not all(isinstance(t, Tensor) for t in table):
        return table
    positions = plan_positions(plan)  # (B, N - r)
    return tuple(_gather_rows(t, positions, plan.num_tokens) for t in table)


def _gather_rows(t: Tensor, positions: Tensor, num_tokens: int) -> Tensor:
    if t.dim() == 2:  # (T + N, D), text first
        text = t.shape[0] - num_tokens
        return torch.cat([t[:text], t[text:].index_select(0, positions[0])])  # (T + N - r, D)
    return t[0][positions]  # (1, N, 1, D) -> (B, N - r, 1, D)


# --- block states: how each family finds its grid and matches ----------------------------------------


class WindowBlockState(BlockState):
    """Flux: no grid in the input, so destinations are one per window of ``sx * sy`` consecutive tokens
    (a 1 x (sx*sy) grid cell of the sequence), and one plan serves the whole batch."""

    def _match(self, metric: Tensor) -> MergePlan | None:
        opts = self.options
        tokens, window = metric.shape[1], opts.sx * opts.sy
        r = window_merge_count(tokens, opts)
        if r == 0:
            return None
        choice = None
        if opts.use_rand:
            key = hash32(self.context.key ^ self.index)  # (1,): seed, timestep and block
            choice = hashed_cell_choice(key, tokens // window, window)
        with torch.no_grad():  # the plan is indices only: no gradient flows through the matching
            shared = (metric / metric.norm(dim=-1, keepdim=True)).mean(dim=0, keepdim=True)  # (1, N, C)
        plan = bipartite_soft_matching_random2d(shared, tokens, 1, window, 1, r, choice, opts.matching == "local")
        return _shared(plan, metric.shape[0])


def window_merge_count(tokens: int, options: DiffusersOptions) -> int:
    """How many of a Flux block's ``tokens`` merge away: as :func:`~.hooks.merge_count` on a one-row
    grid with windows of ``sx * sy`` tokens."""
    if options.ratio == 0 or tokens < options.min_tokens:
        return 0
    window = options.sx * options.sy
    return min(int(tokens * options.ratio), mergeable_count(1, tokens, 1, window, options.matching == "local"))


class FramedBlockState(BlockState):
    """Wan: a frame-major sequence of F frames of (h, w) tokens; each frame is matched on its own grid."""

    def frame_grid(self, tokens: int) -> tuple[int, int, int]:
        """(frames, h, w) of a block's ``tokens`` in the current forward (h, w from the latent's shape)."""
        h, w = level_grid(self.context.height, self.context.width, self.level)
        frames = tokens // (h * w)
        if frames * h * w != tokens:
            raise RuntimeError(f"tomesd: cannot place {tokens} tokens on frames of {h}x{w}")
        return frames, h, w

    def _match(self, metric: Tensor) -> FramedPlan | None:
        opts = self.options
        frames, h, w = self.frame_grid(metric.shape[1])
        r = merge_count(h * w, (h, w), opts)  # per frame: min_tokens and ratio apply to one frame
        if r == 0:
            return None
        choice = None
        if opts.use_rand:
            key = hash32(self.context.key ^ self.index)
            choice = hashed_cell_choice(key, cells_in_grid(h, w, opts.sy, opts.sx), opts.sy * opts.sx)
        per_frame = metric.reshape(metric.shape[0] * frames, h * w, metric.shape[-1])  # (B * F, h * w, C)
        plan = bipartite_soft_matching_random2d(per_frame, w, h, opts.sx, opts.sy, r, choice, opts.matching == "local")
        return FramedPlan(plan, frames)


# --- hooks -----------------------------------------------------------------------------------------


class RotarySite(MergeSite):
    """The :class:`~.hooks.MergeSite` of an attention that takes a rotary table: where the table is in
    its call (argument ``position`` or keyword ``keyword``)."""

    def __init__(self, block: BlockState, enabled: bool, keyword: str, position: int) -> None:
        super().__init__(block, self_attention=False, enabled=enabled)
        self.keyword, self.position = keyword, position


class RotaryMergeInput(MergeInput):
    """:class:`~.hooks.MergeInput` for an attention that takes a rotary table (its :class:`RotarySite`
    says where): the table is gathered to the merged tokens' positions."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        merged = super().__call__(module, args, kwargs)
        if merged is None:
            return None
        site: RotarySite = getattr(module, SITE)
        return _with_rotary(*merged, site.plan, site.keyword, site.position)


def _with_rotary(args: tuple, kwargs: dict, plan: Any, keyword: str, position: int) -> tuple[tuple, dict]:
    if len(args) > position:
        args = (*args[:position], gather_rotary(args[position], plan), *args[position + 1:])
    elif kwargs.get(keyword) is not None:
        kwargs = {**kwargs, keyword: gather_rotary(kwargs[keyword], plan)}
    return args, kwargs


class UnmergeImageOutputs(UnmergeOutput):
    """:class:`~.hooks.UnmergeOutput` for Flux attention: with an IP-Adapter processor the output is
    (image, text, ip-adapter image) and the third one is per image token too."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        plan = getattr(module, SITE).plan
        unmerged = super().__call__(module, args, kwargs, output)
        if plan is not None and isinstance(output, tuple) and len(output) == 3:
            return (*unmerged[:2], plan.unmerge(output[2]))
        return unmerged


class MergeImageTail:
    """Forward hook on the ``norm`` of a Flux single-stream block: its output (x (B, T + N, C), gate) gets
    the image part (the last N rows) merged; attention and the parallel MLP then run on T + N - r tokens.
    The block's ``norm``, ``attn`` and ``proj_out`` share one :class:`~.hooks.MergeSite`."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        site: MergeSite = getattr(module, SITE)
        site.plan = None
        metric = site.block.metric
        if not site.enabled or metric is None or not isinstance(output, tuple):
            return None
        x, rest = output[0], output[1:]
        tokens = metric.shape[1]
        plan = site.block.plan_for(x[:, -tokens:])
        if plan is None:
            return None
        site.plan = plan
        return (torch.cat([x[:, :-tokens], plan.merge(x[:, -tokens:])], dim=1), *rest)  # (B, T + N - r, C)


class RotaryFromSite:
    """Forward pre-hook on a Flux single-stream block's ``attn``: gather its rotary table to the merged
    image tokens (the plan ``norm``'s hook used)."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan = getattr(module, SITE).plan
        if plan is None:
            return None
        return _with_rotary(args, kwargs, plan, "image_rotary_emb", 3)


class UnmergeImageTail:
    """Forward hook on a Flux single-stream block's ``proj_out``: its output (B, T + N - r, C) gets every
    image token back, (B, T + N, C), before the block's residual."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor | None:
        site: MergeSite = getattr(module, SITE)
        plan, site.plan = site.plan, None
        if plan is None:
            return None
        text = output.shape[1] - plan.num_merged_tokens
        return torch.cat([output[:, :text], plan.unmerge(output[:, text:])], dim=1)


# --- the table entries ------------------------------------------------------------------------------

#: SD3/SD3.5: joint attention (image input merged, image output unmerged, text untouched), SD3.5's
#: image-only second attention, the image MLP. ``ff_context`` and the text norms are never hooked.
JOINT = BlockKind(
    name="JointTransformerBlock",
    merges=(("attn", "merge_attn"), ("attn2", "merge_attn"), ("ff", "merge_mlp")),
)
#: Flux double-stream block: as SD3, plus the rotary table (keyword ``image_rotary_emb``) gathered.
FLUX_DOUBLE = BlockKind(name="FluxTransformerBlock", merges=(("attn", "merge_attn"), ("ff", "merge_mlp")))
#: Flux single-stream block: merged after ``norm`` (attention and MLP run in parallel on the same tokens,
#: so ``merge_attn`` switches both), unmerged after ``proj_out``.
FLUX_SINGLE = BlockKind(name="FluxSingleTransformerBlock", merges=(("norm", "merge_attn"),))
#: Wan: self-attention with 3-D RoPE (fourth argument), cross-attention to the text, the MLP ``ffn``.
WAN = BlockKind(name="WanTransformerBlock", merges=(("attn1", "merge_attn"), ("attn2", "merge_crossattn"), ("ffn", "merge_mlp")))

#: Where a block kind's attention takes a rotary table: block class -> (attention submodule, keyword,
#: positional index of the table in that submodule's call).
ROTARY: dict[str, tuple[str, str, int]] = {
    FLUX_DOUBLE.name: ("attn", "image_rotary_emb", 3),
    WAN.name: ("attn1", "rotary_emb", 3),
}


def patch_size_levels(root: nn.Module, kind: ModelKind) -> dict[nn.Module, int]:
    """Grid rule of patchified 2-D transformers: every block's grid is the latent over ``patch_size``."""
    return dict.fromkeys(root.transformer_blocks, int(root.config.patch_size))


def flux_levels(root: nn.Module, kind: ModelKind) -> dict[nn.Module, int]:
    """Flux's double then single blocks. The grid is not known to the model; 2 is the pipeline's 2x2
    packing of the VAE latent, what :func:`~tomesd.patch.diffusers.merge_report` assumes."""
    return dict.fromkeys([*root.transformer_blocks, *root.single_transformer_blocks], 2)


def wan_levels(root: nn.Module, kind: ModelKind) -> dict[nn.Module, int]:
    """Wan's blocks: each frame's grid is the latent's height and width over the spatial patch size."""
    _, p_h, p_w = root.config.patch_size
    if p_h != p_w:
        raise ValueError(f"tomesd merges Wan models with square spatial patches; got patch_size={root.config.patch_size}")
    return dict.fromkeys(root.blocks, int(p_h))


def hook_dit_site(state: PatchState, block: nn.Module, block_state: BlockState, name: str, enabled: bool) -> None:
    """The hooks of a candidate submodule of a DiT/MMDiT block (the :attr:`~.table.ModelKind.hook_site` of
    its entries): Flux single-stream blocks merge between ``norm`` and ``proj_out`` (one site shared by
    ``norm``, ``attn`` and ``proj_out``), attentions with a rotary table gather it, and every output
    unmerges its image tokens (:class:`UnmergeImageOutputs`)."""
    kind, sub = block_state.kind, getattr(block, name)
    if kind is FLUX_SINGLE:
        site = MergeSite(block_state, self_attention=False, enabled=enabled)
        for module in (sub, block.attn, block.proj_out):
            _attach(state, module, SITE, site)
        _hook(state, sub, MergeImageTail(), pre=False)
        _hook(state, block.attn, RotaryFromSite(), pre=True)
        _hook(state, block.proj_out, UnmergeImageTail(), pre=False)
        return
    rotary = ROTARY.get(kind.name)
    if rotary is not None and rotary[0] == name:
        _attach(state, sub, SITE, RotarySite(block_state, enabled, rotary[1], rotary[2]))
        _hook(state, sub, RotaryMergeInput(), pre=True)
    else:
        _attach(state, sub, SITE, MergeSite(block_state, name in kind.self_attention, enabled))
        _hook(state, sub, MergeInput(), pre=True)
    _hook(state, sub, UnmergeImageOutputs(), pre=False)


#: The diffusion transformers the patch merges in.
DIT_MODELS = (
    ModelKind("PixArtTransformer2DModel", (BASIC,), patch_size_levels, sample="hidden_states", hook_site=hook_dit_site),
    ModelKind("DiTTransformer2DModel", (BASIC,), patch_size_levels, sample="hidden_states", hook_site=hook_dit_site),
    ModelKind("SD3Transformer2DModel", (JOINT,), patch_size_levels, sample="hidden_states", hook_site=hook_dit_site),
    ModelKind("FluxTransformer2DModel", (FLUX_DOUBLE, FLUX_SINGLE), flux_levels, sample="hidden_states",
              sample_rank=3, block_state=WindowBlockState, hook_site=hook_dit_site),
    ModelKind("WanTransformer3DModel", (WAN,), wan_levels, sample="hidden_states", frame_dim=2, sample_rank=5,
              block_state=FramedBlockState, hook_site=hook_dit_site),
)

MODELS.update({kind.name: kind for kind in DIT_MODELS})
REFUSED.update({
    "SanaTransformer2DModel": (
        "Sana's self-attention is linear (no quadratic term for merging to shrink) and its MLP is a convolution "
        "over the full token grid (a merged sequence cannot be laid out on it), so merging could only shorten "
        "the attention projections, about 44% of a Sana-1.6B block's multiply-adds; use it unpatched"
    ),
})
