"""ToMe for Hugging Face ``transformers`` vision encoders: merge ``r`` tokens after every layer.

Covers ViT, DeiT (class + distillation tokens), DINOv2 (with or without registers), the CLIP and SigLIP
vision towers (alone, with projection, or inside a ``CLIPModel`` / ``SiglipModel``), VideoMAE and ViViT.
TimeSformer is recognised only to be refused (its divided space-time attention reshapes the tokens into a
fixed frames × patches grid, which merging breaks). The patch never copies a layer's forward; per model
it changes:

* each attention module's ``config`` (an instance attribute) becomes a view of the model's config whose
  ``_attn_implementation`` is ``"tomesd"``, so the layer's own ``ALL_ATTENTION_FUNCTIONS`` lookup calls
  :func:`_merging_attention`. That keeps the keys averaged over heads (the matching metric), passes the
  proportional-attention bias ``log(size)`` as the attention mask, and calls the model's own eager or
  SDPA function (read from the real config at each call, so the fused SDPA path stays in use);
* a forward hook on each encoder layer (run before any other hook) merges the ``r`` most similar tokens
  of the layer's output by size-weighted average. ToMe merges between attention and MLP; a hook can only
  reach the layer's boundary, so here each MLP still sees the tokens its attention saw and the merge
  lands one MLP later (the next layer runs on N - r tokens, as in the paper);
* a forward pre-hook on the embeddings that starts each forward with unit token sizes;
* pooling heads that average tokens: SigLIP's attention-pooling head gets the ``log(size)`` bias and
  VideoMAE's mean pooling is weighted by token size. Class-token heads need nothing.

Video models can use ``matching="spacetime"``: before each merge the tokens are sorted by place, then
frame (:func:`tomesd.merge.spacetime_order`, on positions each token carries as the size-weighted mean
(frame, y, x) of its tubelets) and each token may join its neighbour in that order, the same place in
the next frame (:func:`tomesd.merge.temporal_soft_matching`). ``matching="global"`` is the paper's
bipartite matching over all tokens.

Protected prefix tokens (class, distillation, register tokens) are never merged. Change the schedule
after patching with :func:`set_r`; read which input tokens each output token holds with
:func:`merge_sources` (``trace_source=True``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..merge import bipartite_soft_matching, merge_source, merge_wavg, spacetime_order, temporal_soft_matching
from . import sequence
from .sequence import LayerMerge, RSchedule, SequenceMerge, log_size_bias, parse_r
from .state import PatchState

__all__ = ["MATCHINGS", "OPTIONS", "TransformersOptions", "apply", "merge_sources", "protected_tokens", "set_r",
           "supports", "token_grid"]

MATCHINGS = ("global", "spacetime")
ATTENTION_NAME = "tomesd"
_INFO_ATTR = "_tomesd_transformers"
_ROUTE_ATTR = "_tomesd_route"
_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass(frozen=True)
class TransformersOptions:
    """The options of a transformers patch: the single source of their defaults and checks.

    Attributes:
        r: tokens merged per layer: an int, an ``(r, inflection)`` schedule or one int per layer (see
            :func:`tomesd.patch.sequence.parse_r`). ToMe's ViT-B setting is 13 at 224 px (197 tokens).
        proportional_attention: add ``log(size)`` to the attention logits of merged keys, so a token
            holding s patches weighs like s tokens (ToMe's recommendation).
        trace_source: record which input tokens each token holds, for :func:`merge_sources`; costs a
            (N, N0) matrix per sample.
        matching: ``"global"`` (ToMe's bipartite matching over all tokens) or ``"spacetime"`` (video
            models only: each token may merge with the same place in the neighbouring frame).
    """

    r: RSchedule = 8
    proportional_attention: bool = True
    trace_source: bool = False
    matching: str = "global"

    def __post_init__(self) -> None:
        for name in ("proportional_attention", "trace_source"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {', '.join(map(repr, MATCHINGS))}, got {self.matching!r}")
        parse_r(self.r, len(self.r) if isinstance(self.r, list) else 1)  # type and sign; length at apply


OPTIONS: dict[str, Any] = {field.name: field.default for field in fields(TransformersOptions)}


@dataclass(frozen=True)
class _Tower:
    """One supported encoder class: where its layers are and what it puts before the patch tokens."""

    layers: str  # attribute path of the layer list
    layer_class: str
    attention_class: str  # the module that calls the attention interface
    prefix: int  # class / distillation tokens (registers are added from config.num_register_tokens)
    video: bool = False


_TOWERS = {
    "ViTModel": _Tower("layers", "ViTLayer", "ViTAttention", 1),
    "DeiTModel": _Tower("layers", "DeiTLayer", "DeiTAttention", 2),
    "Dinov2Model": _Tower("encoder.layer", "Dinov2Layer", "Dinov2Attention", 1),
    "Dinov2WithRegistersModel": _Tower("encoder.layer", "Dinov2WithRegistersLayer", "Dinov2WithRegistersAttention", 1),
    "CLIPVisionModel": _Tower("encoder.layers", "CLIPEncoderLayer", "CLIPAttention", 1),
    "SiglipVisionModel": _Tower("encoder.layers", "SiglipEncoderLayer", "SiglipAttention", 0),
    "VideoMAEModel": _Tower("encoder.layer", "VideoMAELayer", "VideoMAESelfAttention", 0, video=True),
    "VivitModel": _Tower("layers", "VivitLayer", "VivitAttention", 1, video=True),
}
# models holding a tower: the attribute it is under
_WRAPPERS = {
    "ViTForImageClassification": "vit",
    "DeiTForImageClassification": "deit",
    "DeiTForImageClassificationWithTeacher": "deit",
    "CLIPVisionModelWithProjection": "vision_model",
    "CLIPModel": "vision_model",
    "SiglipModel": "vision_model",
    "VideoMAEForVideoClassification": "videomae",
    "VivitForVideoClassification": "vivit",
}
_TIMESFORMER = ("its divided space-time attention reshapes the tokens into a fixed frames x patches grid in every "
                "layer, which merged tokens no longer fill")
_REFUSED = {"TimesformerModel": _TIMESFORMER, "TimesformerForVideoClassification": _TIMESFORMER}


@dataclass(kw_only=True)
class _MergeInfo(SequenceMerge):
    """The shared state of a sequence patch, plus what encoders of images and videos need besides."""

    grid: tuple[int, int, int]  # (frames, rows, cols) of patch tokens
    matching: str
    positions: Tensor | None = None  # (B, N, 3) mean (frame, y, x) of each token, for spacetime matching
    last: Tensor | None = None  # (B, N, C) output of the last layer, for size-weighted mean pooling

    def reset(self) -> None:
        """Forget the previous forward's state, positions and last output included."""
        super().reset()
        self.positions = self.last = None

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first layer at the configured input size."""
        frames, rows, cols = self.grid
        return self.protected + frames * rows * cols

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """(B, 1, 1, N) additive attention bias ``log(size)`` on the keys, or None when nothing is merged."""
        if not self.proportional_attention or self.size is None:
            return None
        return log_size_bias(self.size).to(dtype)


@dataclass(frozen=True)
class _Route:
    """What :func:`_merging_attention` needs from one attention module."""

    info: _MergeInfo
    config: Any  # the model's own config: its attention implementation is read at each call
    eager: Callable  # the model file's own eager attention function
    sdpa: Callable  # transformers' SDPA attention function


class _RoutedConfig:
    """A patched attention module's config: the model's config, except that attention goes to tomesd.

    Reads and writes go to the model's config (so ``model.set_attn_implementation`` after patching
    changes the implementation :func:`_merging_attention` calls), while the attention module itself keeps
    reading ``"tomesd"``.
    """

    _attn_implementation = ATTENTION_NAME

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_config", config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_config"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_config"], name, value)


def supports(model: Any) -> bool:
    """Whether ``model`` is one of the transformers classes this family patches (or refuses clearly)."""
    return _class_name(model) is not None


def apply(model: nn.Module, state: PatchState, r: RSchedule = OPTIONS["r"],
          proportional_attention: bool = OPTIONS["proportional_attention"],
          trace_source: bool = OPTIONS["trace_source"], matching: str = OPTIONS["matching"]) -> None:
    """Patch a transformers vision encoder with ToMe.

    Args:
        model: ``ViTModel`` / ``ViTForImageClassification``, ``DeiTModel`` / ``DeiTForImageClassification``
            (``WithTeacher``), ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``CLIPVisionModel`` (``WithProjection``),
            ``CLIPModel`` (its vision tower), ``SiglipVisionModel``, ``SiglipModel`` (its vision tower),
            ``VideoMAEModel`` / ``VideoMAEForVideoClassification``, ``VivitModel`` / ``VivitForVideoClassification``.
        state: the undo log of this patch.
        r, proportional_attention, trace_source, matching: see :class:`TransformersOptions`. A schedule
            that would merge more than half of a layer's non-protected tokens raises (never clamped).

    Raises:
        ValueError: TimeSformer, an attention implementation other than eager / SDPA, gradient
            checkpointing (its recomputation would see later token sizes), a layer this patch does
            not know, spacetime matching on an image model, or an r schedule the model does not have
            the tokens for.
        TypeError: an option of the wrong type.
    """
    options = TransformersOptions(r, proportional_attention, trace_source, matching)
    tower, spec = _validated_tower(model, options)
    layers = _layers(tower, spec)
    attentions = [_attention_of(layer, spec, index) for index, layer in enumerate(layers)]
    protected = spec.prefix + getattr(tower.config, "num_register_tokens", 0)
    sdpa = _register_attention()
    schedule = parse_r(r, len(layers))
    info = _MergeInfo(sequence.layer_merges(schedule), protected, proportional_attention, trace_source, state.options,
                      grid=_grid(tower, spec), matching=matching)
    sequence.check_schedule(schedule, info.num_tokens, protected, r)

    state.set_attr(tower, _INFO_ATTR, info)
    if model is not tower:
        state.set_attr(model, _INFO_ATTR, info)
    state.add_undo(tower.embeddings.register_forward_pre_hook(lambda module, args: info.reset()).remove)
    eager = sys.modules[type(attentions[0]).__module__].eager_attention_forward
    for layer, attention, merge in zip(layers, attentions, info.layers):
        state.set_attr(attention, _ROUTE_ATTR, _Route(info, attention.config, eager, sdpa))
        state.set_attr(attention, "config", _RoutedConfig(attention.config))
        hook = partial(_merge_layer_output, info, merge, merge.index == len(layers) - 1)
        state.add_undo(layer.register_forward_hook(hook, prepend=True).remove)
    _patch_pooling(model, _class_name(model), tower, info, state)


def set_r(model: nn.Module, r: RSchedule) -> None:
    """Change the merge schedule of a patched transformers encoder (takes effect at the next forward).

    ``r`` is as for :func:`apply`. Raises TypeError / ValueError as :func:`tomesd.patch.sequence.set_r`
    (a schedule of the wrong form or one the model has not the tokens for), and ValueError on a model
    this family did not patch.
    """
    info = _info(model)
    sequence.set_r(info, r, info.num_tokens)


def merge_sources(model: nn.Module) -> Tensor | None:
    """Which input tokens each output token of the latest forward holds.

    Returns:
        (B, N, N0) 0/1 membership over the N0 input tokens (prefix tokens first, then patches in the
        embeddings' order: frame, row, column), or ``None`` if nothing was merged. Output tokens are in
        the order of the model's last hidden state. Needs ``trace_source=True``.

    Raises:
        ValueError: the model is not patched by this module, or was patched without ``trace_source``.
    """
    return sequence.merge_sources(_info(model))


def token_grid(model: nn.Module) -> tuple[int, int, int]:
    """(frames, rows, cols) of the patch tokens of a patched model (frames is 1 for image models)."""
    return _info(model).grid


def protected_tokens(model: nn.Module) -> int:
    """How many leading tokens (class, distillation, register) a patched model never merges."""
    return _info(model).protected


def _merging_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """The attention function patched modules dispatch to. query, key, value: (B, H, N, D)."""
    route: _Route = getattr(module, _ROUTE_ATTR)
    if attention_mask is not None:
        raise ValueError("a token-merging encoder cannot take an attention_mask: masks do not survive merges; "
                         "call tomesd.remove_patch(model) first")
    route.info.metric = key.detach().mean(dim=1)  # (B, N, D): matching needs no gradient
    implementation = route.config._attn_implementation
    if implementation == "sdpa":
        attend = route.sdpa
    elif implementation == "eager":
        attend = route.eager
    else:
        raise ValueError(f"token merging runs with attn_implementation 'eager' or 'sdpa', not {implementation!r}")
    return attend(module, query, key, value, route.info.bias(query.dtype), **kwargs)


def _merge_layer_output(info: _MergeInfo, layer: LayerMerge, is_last: bool, module: nn.Module, args: tuple,
                        output: Any) -> Any:
    """Forward hook of an encoder layer: merge ``r`` of its output tokens. output: (B, N, C) or a tuple."""
    hidden = output[0] if isinstance(output, tuple) else output
    r = layer.r
    if r > 0:
        hidden = _merge(info, layer, hidden)
    if is_last:
        info.last = hidden
    if r == 0:
        return None
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _merge(info: _MergeInfo, layer: LayerMerge, x: Tensor) -> Tensor:
    """Merge ``layer.r`` tokens of ``x`` (B, N, C) by the patch's matching; updates sizes, sources, positions."""
    sequence.check_layer_tokens(layer, x.shape[1], info.protected, "tomesd.patch.transformers.set_r")
    r = layer.r
    if info.matching == "spacetime":
        x = _sort_by_place(info, x)
        plan = temporal_soft_matching(info.metric, r, protected=info.protected)
        info.positions, _ = merge_wavg(plan, info.positions, info.size)
    else:
        plan = bipartite_soft_matching(info.metric, r, protected=info.protected)
    if info.trace_source:
        info.source = merge_source(plan, info.source)
    x, info.size = merge_wavg(plan, x, info.size)  # (B, N - r, C), (B, N - r, 1)
    return x


def _sort_by_place(info: _MergeInfo, x: Tensor) -> Tensor:
    """Put ``x`` and every per-token record in :func:`spacetime_order`; returns the sorted ``x``."""
    if info.positions is None:
        if x.shape[1] != info.num_tokens:
            raise ValueError(f"spacetime matching needs the configured {info.num_tokens} tokens "
                             f"({info.grid[0]} frames x {info.grid[1]} x {info.grid[2]} patches), got {x.shape[1]}; "
                             "it cannot take bool_masked_pos or other input sizes: use matching='global'")
        info.positions = _grid_positions(info, x)
    order = spacetime_order(info.positions, info.protected)  # (B, N)

    def gather(tensor: Tensor) -> Tensor:
        return tensor.gather(1, order.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))

    info.positions, info.metric = gather(info.positions), gather(info.metric)
    if info.size is not None:
        info.size = gather(info.size)
    if info.trace_source:
        if info.source is None:
            info.source = torch.eye(x.shape[1], device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        info.source = gather(info.source)
    return gather(x)


def _grid_positions(info: _MergeInfo, x: Tensor) -> Tensor:
    """(B, N, 3) (frame, y, x) of the input tokens, patches in frame-major order; prefix rows are zero."""
    frames, rows, cols = info.grid
    t, y, w = torch.meshgrid(torch.arange(frames, device=x.device), torch.arange(rows, device=x.device),
                             torch.arange(cols, device=x.device), indexing="ij")
    patches = torch.stack([t, y, w], dim=-1).reshape(-1, 3).to(x.dtype)  # (T*H*W, 3)
    prefix = patches.new_zeros(info.protected, 3)
    return torch.cat([prefix, patches]).expand(x.shape[0], -1, -1)


def _patch_pooling(model: nn.Module, name: str, tower: nn.Module, info: _MergeInfo, state: PatchState) -> None:
    """Weight the heads that pool over tokens by token size (SigLIP attention pooling, VideoMAE mean)."""
    head = getattr(tower, "head", None) if getattr(tower, "use_head", False) else None
    if head is not None:
        hook = partial(_size_biased_pooling, info, head.attention.num_heads)
        state.add_undo(head.attention.register_forward_pre_hook(hook, with_kwargs=True).remove)
    fc_norm = model.fc_norm if name == "VideoMAEForVideoClassification" else None
    if fc_norm is not None:
        state.add_undo(fc_norm.register_forward_pre_hook(partial(_size_weighted_mean, info)).remove)


def _size_biased_pooling(info: _MergeInfo, num_heads: int, module: nn.Module, args: tuple,
                         kwargs: dict) -> tuple[tuple, dict] | None:
    """Pre-hook of SigLIP's pooling ``nn.MultiheadAttention``: the probe attends with the log-size bias."""
    keys = args[1] if len(args) > 1 else kwargs["key"]  # (B, N, C)
    if info.size is None or info.size.shape[1] != keys.shape[1]:
        return None
    bias = info.size.log().to(keys.dtype).transpose(1, 2)  # (B, 1, N)
    return args, {**kwargs, "attn_mask": bias.repeat_interleave(num_heads, dim=0)}  # (B * heads, 1, N)


def _size_weighted_mean(info: _MergeInfo, module: nn.Module, args: tuple) -> tuple | None:
    """Pre-hook of VideoMAE's ``fc_norm``: its input, the token mean, becomes the size-weighted mean."""
    if info.size is None or info.last is None or info.size.shape[1] != info.last.shape[1]:
        return None
    return ((info.last * info.size).sum(dim=1) / info.size.sum(dim=1),)  # (B, C)


def _validated_tower(model: nn.Module, options: TransformersOptions) -> tuple[nn.Module, _Tower]:
    """The encoder tower to patch and its table entry, after every check that needs no layer."""
    name = _class_name(model)
    if name in _REFUSED:
        raise ValueError(f"{name} cannot be token-merged: {_REFUSED[name]}; supported video models: VideoMAE, ViViT")
    tower = getattr(model, _WRAPPERS[name]) if name in _WRAPPERS else model
    spec = _TOWERS[_class_name(tower)]
    implementation = tower.config._attn_implementation
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"{name} uses attn_implementation={implementation!r}; token merging supports 'eager' and "
                         "'sdpa' (model.set_attn_implementation('sdpa'))")
    if name == "VideoMAEForVideoClassification" and model.fc_norm is None:
        raise ValueError("VideoMAEForVideoClassification with use_mean_pooling=False classifies its first patch "
                         "token, which merging moves; supported: use_mean_pooling=True (the default)")
    if options.matching == "spacetime" and not spec.video:
        raise ValueError(f"matching='spacetime' needs a video model (VideoMAE, ViViT), not {name}; use 'global'")
    return tower, spec


def _layers(tower: nn.Module, spec: _Tower) -> list[nn.Module]:
    layers = tower
    for part in spec.layers.split("."):
        layers = getattr(layers, part)
    layers = list(layers)
    if not layers:
        raise ValueError(f"the {type(tower).__name__} has no layers to patch")
    for index, layer in enumerate(layers):
        if type(layer).__name__ != spec.layer_class:
            raise ValueError(f"layer {index} of the {type(tower).__name__} is a {type(layer).__name__}; token merging "
                             f"supports {spec.layer_class} there")
        if getattr(layer, "gradient_checkpointing", False):
            raise ValueError(f"the {type(tower).__name__} has activation (gradient) checkpointing on, whose "
                             "recomputation in the backward pass would see a later layer's token sizes; call "
                             "model.activation_checkpointing_disable() first")
    return layers


def _attention_of(layer: nn.Module, spec: _Tower, index: int) -> nn.Module:
    found = [module for module in layer.modules() if type(module).__name__ == spec.attention_class]
    if len(found) != 1:
        raise ValueError(f"layer {index} holds {len(found)} {spec.attention_class} modules; token merging expects one")
    return found[0]


def _grid(tower: nn.Module, spec: _Tower) -> tuple[int, int, int]:
    """(frames, rows, cols) of patch tokens at the configured input size."""
    config = tower.config
    image = _pair(config.image_size)
    if type(tower).__name__ == "VivitModel":
        frames, patch_h, patch_w = config.tubelet_size
        return config.num_frames // frames, image[0] // patch_h, image[1] // patch_w
    patch = _pair(config.patch_size)
    frames = config.num_frames // config.tubelet_size if spec.video else 1
    return frames, image[0] // patch[0], image[1] // patch[1]


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _class_name(model: Any) -> str | None:
    """The supported transformers class ``model`` is (or derives from), or None."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.models.") and (
                cls.__name__ in _TOWERS or cls.__name__ in _WRAPPERS or cls.__name__ in _REFUSED):
            return cls.__name__
    return None


def _info(model: nn.Module) -> _MergeInfo:
    return sequence.patch_info(model, _INFO_ATTR, "transformers")


def _register_attention() -> Callable:
    """Make ``"tomesd"`` an attention implementation transformers can dispatch to (idempotent; done at
    each patch, so that recognising a model never imports transformers). Returns the SDPA function."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    AttentionInterface.register(ATTENTION_NAME, _merging_attention)
    return ALL_ATTENTION_FUNCTIONS["sdpa"]

