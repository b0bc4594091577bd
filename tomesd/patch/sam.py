"""Token merging for Segment Anything image encoders (segment-anything and transformers' ``SamModel``).

SAM's ViT image encoder works on a (64, 64) token grid at 1024 px. Most blocks attend inside 14×14
windows; a few (4 of 12 in ViT-B) attend globally over all 4096 tokens, unfused and with decomposed
relative-position terms, and take about three quarters of the encoder's time. That is where merging pays.

Inside each targeted block, the patch changes only the attention call (its ``forward``, an instance
attribute; SAM's own attention runs unchanged inside it), and the MLP call the same way with
``merge_mlp=True``:

1. ToMe-for-SD matching on the attention input: one destination per ``sy``×``sx`` cell of the token grid,
   every other token merged (mean) into its most similar destination, anywhere in the image;
2. the destinations keep their cell's place, so the merged tokens form a (h/sy, w/sx) grid and SAM's
   attention runs on it as on a smaller image (its relative-position tables are interpolated to the
   coarser grid, as SAM does for any input size);
3. the attention output is unmerged: every token gets its group's output back, so the residual stream,
   the MLP and the encoder output keep their exact shape and the mask decoder works unchanged.

Why not keys/values-only reduction: it leaves all 4096 queries, their (4096 × keys) logits, the softmax
and the relative-position terms (all computed per query) in place, and those dominate SAM's global
attention; merging the queries too shrinks every one of them (by (sy*sx)^2 for the logits).

``torch.compile``: a patched encoder traces as one graph (``fullgraph=True``, no graph break, no host
sync): the destinations are fixed (each cell's first token: :func:`tomesd.merge.random2d_partition` with no choice), so the
merged grid's shape depends on the input size and strides only. Dynamo guards on the patched forwards:
after ``tomesd.remove_patch`` or a new ``apply_patch`` a compiled encoder recompiles, never runs a stale graph.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from torch import Tensor, nn

from ..merge import bipartite_soft_matching_random2d
from .state import PatchState

__all__ = ["OPTIONS", "apply", "supports"]

OPTIONS: dict[str, Any] = {"sx": 2, "sy": 2, "blocks": "global", "merge_mlp": False}

_SEGMENT_ANYTHING = {"Sam": "image_encoder", "ImageEncoderViT": ""}
_TRANSFORMERS = {"SamModel": "vision_encoder", "SamVisionModel": "vision_encoder", "SamVisionEncoder": ""}
_BLOCK_CHOICES = ("global", "all")


def supports(model: Any) -> bool:
    """Whether ``model`` is a segment-anything ``Sam`` / ``ImageEncoderViT`` or a transformers ``SamModel``
    / ``SamVisionModel`` / ``SamVisionEncoder``."""
    return _encoder_path(model) is not None


def apply(model: nn.Module, state: PatchState, sx: int = 2, sy: int = 2, blocks: str = "global",
          merge_mlp: bool = False) -> None:
    """Merge tokens inside the attention (and optionally the MLP) of SAM's image encoder blocks.

    Args:
        model: a segment-anything ``Sam`` (from ``sam_model_registry``) or ``ImageEncoderViT``, or a
            transformers ``SamModel``, ``SamVisionModel`` or ``SamVisionEncoder``.
        state: the undo log of this patch.
        sx, sy: the destination stride: attention runs on (h/sy)×(w/sx) merged tokens, i.e.
            ``1 - 1/(sx*sy)`` of the tokens are merged (0.75 at the default 2×2). ``sx=sy=1`` merges
            nothing and is exact.
        blocks: ``"global"`` (default) merges in the global-attention blocks only, where attention
            costs most; ``"all"`` also merges inside every window of the windowed blocks (little extra
            speed: their attention is a small part of their cost).
        merge_mlp: also run the MLP of each targeted block on merged tokens (matched afresh on the MLP
            input, unmerged after): faster, further from the unpatched output.

    Raises:
        ValueError: a stride below 1, an unknown ``blocks`` choice, or no block to patch.
        TypeError: a stride that is not an int.
    """
    for name, stride in (("sx", sx), ("sy", sy)):
        if not isinstance(stride, int) or isinstance(stride, bool):
            raise TypeError(f"{name} must be an int (destination stride in tokens), got {stride!r}")
        if stride < 1:
            raise ValueError(f"{name} must be >= 1 (1 = no merging along that axis), got {stride}")
    if blocks not in _BLOCK_CHOICES:
        raise ValueError(f"blocks must be one of {_BLOCK_CHOICES}, got {blocks!r}")
    targets = _target_blocks(_image_encoder(model), blocks)
    for block in targets:
        for module in (block.attn, block.mlp) if merge_mlp else (block.attn,):
            state.set_attr(module, "forward", partial(_run_merged, module.forward, sx, sy))


def _run_merged(forward: Callable[..., Any], sx: int, sy: int, *args: Any, **kwargs: Any) -> Any:
    """Run SAM's attention or MLP ``forward`` on tokens merged to one per sy×sx cell, then unmerge.

    The tokens x (B, h, w, C) come first, or as ``hidden_states=`` (transformers); other arguments pass on.
    """
    x = args[0] if args else kwargs.pop("hidden_states")
    args = args[1:]
    batch, h, w, channels = x.shape
    grid_h, grid_w = h // sy, w // sx
    if grid_h == 0 or grid_w == 0:
        return forward(x, *args, **kwargs)
    tokens = x.reshape(batch, h * w, channels)  # (B, h*w, C)
    plan = bipartite_soft_matching_random2d(tokens, w, h, sx, sy, r=h * w - grid_h * grid_w)  # choice None: first tokens
    merged = plan.merge(tokens).view(batch, grid_h, grid_w, channels)  # (B, h/sy, w/sx, C)
    result = forward(merged, *args, **kwargs)
    # transformers' SAM attention returns (output, weights); weights over merged tokens are not returned
    output = result[0] if isinstance(result, tuple) else result
    output = plan.unmerge(output.reshape(batch, grid_h * grid_w, channels)).view(batch, h, w, channels)
    return (output, None) if isinstance(result, tuple) else output


def _encoder_path(model: Any) -> str | None:
    """The attribute holding the image encoder of a supported model ("" for the encoder itself), else None."""
    cls = type(model)
    if cls.__module__.startswith("segment_anything."):
        return _SEGMENT_ANYTHING.get(cls.__name__)
    if cls.__module__.startswith("transformers.models.sam."):
        return _TRANSFORMERS.get(cls.__name__)
    return None


def _image_encoder(model: nn.Module) -> nn.Module:
    path = _encoder_path(model)
    return getattr(model, path) if path else model


def _target_blocks(encoder: nn.Module, blocks: str) -> list[nn.Module]:
    """The encoder blocks to patch: global-attention ones (``window_size == 0``), or all."""
    layers = encoder.blocks if hasattr(encoder, "blocks") else encoder.layers
    targets = [block for block in layers if blocks == "all" or block.window_size == 0]
    if not targets:
        raise ValueError(f"this {type(encoder).__name__} has no global-attention block to merge in; "
                         "use blocks='all' to merge inside the windowed blocks")
    return targets
