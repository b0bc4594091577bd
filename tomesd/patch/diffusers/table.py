"""The block table: one declarative entry per model kind and block kind the diffusers patch knows.

Everything model-specific lives here; :mod:`.hooks` reads these entries and knows no class names. A
diffusers model whose class (or a base class) is not a key of :data:`MODELS` is refused at apply time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from torch import nn


@dataclass(frozen=True)
class BlockKind:
    """How image tokens flow through one kind of transformer block.

    Attributes:
        name: the block's class name.
        merges: (submodule, switch) pairs: the submodule's input tokens are merged (and its output
            unmerged) when the option named ``switch`` is on.
        self_attention: the merged submodules that attend to themselves: their keys/values may be pooled
            (``kv_downsample``) unless a caller passes ``encoder_hidden_states``.
        image_input: the block's argument carrying the image tokens (B, N, C) (its first positional
            argument, or this keyword); the block input is the similarity metric.
    """

    name: str
    merges: tuple[tuple[str, str], ...]
    self_attention: tuple[str, ...] = ()
    image_input: str = "hidden_states"


@dataclass(frozen=True)
class ModelKind:
    """A model the patch hooks, and how each of its blocks finds its token grid.

    Attributes:
        name: the model's class name (a subclass matches too).
        blocks: the block kinds merged inside it.
        locate: ``locate(model, kind) -> {block: downsample factor}``: every block to consider, with the
            factor by which its token grid is smaller than the latent (the grid rule).
        sample: the forward argument holding the latent (first positional, or this keyword).
        frame_dim: the latent's frame dimension for video models (None for images). Spatial blocks see
            (B * frames, h * w, C); their grid is the latent's last two dimensions, downsampled.
        temporal: container classes whose blocks attend over frames (tokens = frames): left alone.
        motion: those of the temporal containers that can run on merged places (one plan for every frame
            of a clip) when ``merge_temporal`` is on: a module taking and returning (B * frames, C, h, w)
            with its own skip connection (see :mod:`~.motion`).
        sample_rank: the least rank of a latent the model's pre-hook reads its size from (4 for an image
            latent; Flux's packed (B, N, C) latent 3, Wan's video latent 5).
        block_state: the per-block state class, i.e. how a block finds its grid and matches (None:
            :class:`~.hooks.BlockState`, the U-Net's 2-D cells).
        hook_site: ``hook_site(state, block, block_state, name, enabled)`` installs the hooks of one
            candidate submodule ``name`` of a block (None: :func:`~.hooks.hook_merge_site`, merge the
            submodule's input and unmerge its output).
    """

    name: str
    blocks: tuple[BlockKind, ...]
    locate: Callable[[nn.Module, "ModelKind"], dict[nn.Module, int]]
    sample: str = "sample"
    frame_dim: int | None = None
    temporal: tuple[str, ...] = ()
    motion: tuple[str, ...] = ()
    sample_rank: int = 4
    block_state: Callable[..., Any] | None = None
    hook_site: Callable[..., None] | None = None

    def block_kind(self, module: nn.Module) -> BlockKind | None:
        """The table entry of ``module``'s class, or None if it is no block of this model kind."""
        return next((kind for kind in self.blocks if type(module).__name__ == kind.name), None)


def unet_levels(root: nn.Module, kind: ModelKind) -> dict[nn.Module, int]:
    """Grid rule of U-Nets: walk the down, mid and up blocks; a block's grid is the 2-D latent divided by
    2 for every downsampler before it (rounded up). Blocks inside ``kind.temporal`` containers are left out."""
    return _walk_levels(root, lambda stage: _spatial_blocks(stage, kind))


def motion_levels(root: nn.Module, kind: ModelKind) -> dict[nn.Module, int]:
    """The motion modules of a video U-Net whose places can merge (classes in ``kind.motion``), with
    their levels, by the U-Net's grid rule."""
    return _walk_levels(root, lambda stage: (m for m in stage.modules() if type(m).__name__ in kind.motion))


def _walk_levels(root: nn.Module, pick: Callable[[nn.Module], Iterator[nn.Module]]) -> dict[nn.Module, int]:
    levels: dict[nn.Module, int] = {}
    factor = 1
    for down in root.down_blocks:
        levels.update(dict.fromkeys(pick(down), factor))
        factor *= 2 if getattr(down, "downsamplers", None) else 1
    if getattr(root, "mid_block", None) is not None:
        levels.update(dict.fromkeys(pick(root.mid_block), factor))
    for up in getattr(root, "up_blocks", []):
        levels.update(dict.fromkeys(pick(up), factor))
        factor //= 2 if getattr(up, "upsamplers", None) else 1
    return levels


def _spatial_blocks(module: nn.Module, kind: ModelKind) -> Iterator[nn.Module]:
    """Blocks of ``kind`` under ``module``, skipping whole subtrees of temporal containers."""
    for child in module.children():
        if type(child).__name__ in kind.temporal:
            continue
        if kind.block_kind(child) is not None:
            yield child
        else:
            yield from _spatial_blocks(child, kind)


#: The U-Net transformer block of SD 1.x/2.x/XL (also the spatial block of the video U-Nets).
BASIC = BlockKind(
    name="BasicTransformerBlock",
    merges=(("attn1", "merge_attn"), ("attn2", "merge_crossattn"), ("ff", "merge_mlp")),
    self_attention=("attn1",),
)

#: Every model kind the patch merges in, by class name.
MODELS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("UNet2DConditionModel", (BASIC,), unet_levels),
        ModelKind("ControlNetModel", (BASIC,), unet_levels),
        # Video U-Nets: the spatial blocks see (B * frames, h * w, C), one frame per row; the motion /
        # temporal blocks (tokens = frames) are left alone. SVD's are another class (TemporalBasicTransformerBlock).
        ModelKind("UNetMotionModel", (BASIC,), unet_levels, frame_dim=2, temporal=("AnimateDiffTransformer3D",),
                  motion=("AnimateDiffTransformer3D",)),
        ModelKind("UNet3DConditionModel", (BASIC,), unet_levels, frame_dim=2, temporal=("TransformerTemporalModel",)),
        ModelKind("I2VGenXLUNet", (BASIC,), unet_levels, frame_dim=2,
                  temporal=("TransformerTemporalModel", "I2VGenXLTransformerTemporalEncoder")),
        ModelKind("UNetSpatioTemporalConditionModel", (BASIC,), unet_levels, frame_dim=1),
    )
}

#: Diffusers classes the patch refuses on purpose, by class name, with the reason the error gives
#: (entries are added by the modules that describe the family, e.g. :mod:`.dit`).
REFUSED: dict[str, str] = {}

#: Attention processors that read ``encoder_hidden_states`` only as the source of keys and values, so
#: pooled keys/values can go in through it. Any other processor (fused QKV, IP-Adapter, custom) may take
#: it as a cross-attention signal: merged self-attention then runs unpooled.
KV_POOLING_PROCESSORS = frozenset({"AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "AttnProcessorNPU"})


def model_kind(module: nn.Module) -> ModelKind | None:
    """The table entry of ``module``'s class or its nearest base class in the table, or None."""
    return next((MODELS[cls.__name__] for cls in type(module).__mro__ if cls.__name__ in MODELS), None)


def temporal_containers() -> frozenset[str]:
    """Every container class some model kind leaves alone (its blocks attend over frames)."""
    return frozenset(name for kind in MODELS.values() for name in kind.temporal)
