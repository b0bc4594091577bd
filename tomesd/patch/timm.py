"""ToMe for timm Vision Transformers: merge ``r`` tokens in every block, layer by layer.

Covers timm's ``VisionTransformer`` and its subclasses (ViT, DeiT incl. distilled, DeiT-III with
LayerScale, register tokens, MAE-style average-pooled heads). The patch never replaces a module or
copies timm's forward; it changes, per model:

* each ``Block.forward`` (an instance attribute): the same submodules (``norm1, attn, ls1, drop_path1,
  norm2, mlp, ls2, drop_path2``) run in timm's order, with two additions: ``attn`` gets the
  proportional-attention bias ``log(size)`` through its ``attn_mask`` argument (so timm keeps its fused
  SDPA path), and between attention and MLP the ``r`` most similar tokens are merged by size-weighted
  average (bipartite soft matching on the attention keys averaged over heads);
* a forward hook on each ``attn.k_norm`` (called by timm on the keys, also when it is an ``Identity``)
  to read those keys;
* a forward pre-hook on ``patch_embed`` that starts each forward with unit token sizes;
* ``model.pool`` (an instance attribute): average pooling and attention pooling weighted by token size.

The class, distillation and register tokens (``model.num_prefix_tokens``) are never merged. Change the
schedule after patching with :func:`set_r`; read which input patches each output token holds with
:func:`merge_sources` (``trace_source=True``).

``torch.compile``: a patched model traces as one graph (``fullgraph=True``, no graph break, no host
sync, static shapes for a given input size and schedule). Token counts shrink block by block; one
whole-model graph holds every count, so it compiles once per input shape and patch (a second batch size
adds one dynamic-batch compile that later sizes reuse). Compiled block by block (``block.compile()``),
each block reads only its own r (a :class:`~tomesd.patch.sequence.LayerMerge`), so blocks with the same
r share code: three compilations for any depth with a constant r (the first block, which has no token
sizes yet; the second; then one with a dynamic token count that the rest reuse), one more per further
distinct r. Dynamo guards
on the patch (the schedule's values, the patched forwards and hooks): after :func:`set_r`,
``tomesd.remove_patch`` or a new ``apply_patch`` the next call of a compiled model recompiles
(:func:`set_r` back to an earlier schedule of the same patch reuses its graph) and never runs a stale
graph. Each distinct setting costs one compilation; past ``torch._dynamo.config.recompile_limit`` (8) of
them, ``fullgraph=True`` raises dynamo's ``FailOnRecompileLimitHit`` (without it, the model runs
uncompiled); ``torch._dynamo.reset()`` starts over. Per-forward state (token sizes, the latest keys,
sources) lives on the patch's :class:`~tomesd.patch.sequence.SequenceMerge` and is reset by the pre-hook
at every forward.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from ..merge import bipartite_soft_matching, merge_source, merge_wavg
from . import sequence
from .sequence import LayerMerge, RSchedule, SequenceMerge, log_size_bias, parse_r
from .state import PatchState

__all__ = ["OPTIONS", "apply", "merge_sources", "parse_r", "set_r", "supports"]

OPTIONS: dict[str, Any] = {"r": 8, "proportional_attention": True, "trace_source": False}

_INFO_ATTR = "_tomesd_timm"
_VIT_MODULE = "timm.models.vision_transformer"
# timm model classes built on rotary position embeddings: claimed here only to refuse them clearly.
_ROPE_CLASSES = {"Eva"}


def supports(model: Any) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (or a timm RoPE ViT, refused by :func:`apply`)."""
    for cls in type(model).__mro__:
        if cls.__module__ == _VIT_MODULE and cls.__name__ == "VisionTransformer":
            return True
    return type(model).__module__.startswith("timm.") and type(model).__name__ in _ROPE_CLASSES


def apply(model: nn.Module, state: PatchState, r: RSchedule = 8, proportional_attention: bool = True,
          trace_source: bool = False) -> None:
    """Patch a timm Vision Transformer with ToMe.

    Args:
        model: a timm ``VisionTransformer`` (ViT, DeiT, distilled DeiT, DeiT-III, register-token and
            average-pooled MAE-style models).
        state: the undo log of this patch.
        r: tokens merged per block; see :func:`tomesd.patch.sequence.parse_r`. ToMe's DeiT-S/B setting
            is 13 at 224 px; more is faster and less accurate. Every layer must keep enough tokens: a
            schedule that would merge more than half of a layer's non-protected tokens raises (never
            silently clamped).
        proportional_attention: add ``log(size)`` to the attention logits of merged keys, so a token
            holding s patches weighs like s tokens (ToMe's recommendation; on by default).
        trace_source: record which input patches each token holds, for :func:`merge_sources` and
            :mod:`tomesd.lab.visualize`; costs an (N, N) matrix per image.

    Raises:
        ValueError: a RoPE model or a block / attention type this patch cannot handle correctly, or an
            r schedule the model does not have the tokens for.
        TypeError: ``r`` of the wrong type.
    """
    blocks = _validated_blocks(model)
    schedule = parse_r(r, len(blocks))
    sequence.check_schedule(schedule, _num_tokens(model), model.num_prefix_tokens, r)
    info = SequenceMerge(sequence.layer_merges(schedule), model.num_prefix_tokens, bool(proportional_attention),
                         bool(trace_source), state.options)
    state.set_attr(model, _INFO_ATTR, info)
    state.add_undo(model.patch_embed.register_forward_pre_hook(lambda module, args: info.reset()).remove)
    for block, layer in zip(blocks, info.layers):
        state.add_undo(block.attn.k_norm.register_forward_hook(partial(_keep_metric, info)).remove)
        state.set_attr(block, "forward", partial(_merging_block_forward, block, info, layer))
    state.set_attr(model, "pool", partial(_size_weighted_pool, model, model.pool, info))


def set_r(model: nn.Module, r: RSchedule) -> None:
    """Change the merge schedule of a patched timm model (takes effect at the next forward).

    ``r`` is as for :func:`apply`. Raises TypeError / ValueError as :func:`tomesd.patch.sequence.set_r`
    (a schedule of the wrong form or one the model has not the tokens for), and ValueError on a model
    this family did not patch.
    """
    sequence.set_r(_info(model), r, _num_tokens(model))


def merge_sources(model: nn.Module) -> Tensor | None:
    """Which input tokens each output token of the latest forward holds.

    Returns:
        (B, N, N0) 0/1 membership over the N0 input tokens (prefix tokens first, then patches in
        row-major order), or ``None`` if nothing was merged. Needs ``trace_source=True``.

    Raises:
        ValueError: the model is not patched by this module, or was patched without ``trace_source``.
    """
    return sequence.merge_sources(_info(model))


def _merging_block_forward(block: nn.Module, info: SequenceMerge, layer: LayerMerge, x: Tensor,
                           attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """timm's pre-norm block with a ToMe merge between attention and MLP. x: (B, N, C)."""
    if attn_mask is not None or is_causal:
        raise ValueError("a token-merging ViT cannot take attn_mask / is_causal: masks do not survive merges; "
                         "call tomesd.remove_patch(model) first")
    bias = _proportional_bias(info) if info.proportional_attention else None
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=bias)))  # (B, N, C)
    r = layer.r
    if r > 0:
        sequence.check_layer_tokens(layer, x.shape[1], info.protected, "tomesd.patch.timm.set_r")
        plan = bipartite_soft_matching(info.metric, r, protected=info.protected)
        info.metric = None  # used once: a compiled graph need not return it to the Python object
        if info.trace_source:
            info.source = merge_source(plan, info.source)
        x, info.size = merge_wavg(plan, x, info.size)  # (B, N - r, C), (B, N - r, 1)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _proportional_bias(info: SequenceMerge) -> Tensor | None:
    """(B, 1, 1, N) additive attention bias ``log(size)`` on the keys, or None before any merge."""
    return None if info.size is None else log_size_bias(info.size)


def _keep_metric(info: SequenceMerge, module: nn.Module, args: tuple, keys: Tensor) -> None:
    info.metric = keys.mean(dim=1)  # (B, H, N, D) -> (B, N, D)


def _size_weighted_pool(model: nn.Module, pool: Any, info: SequenceMerge, x: Tensor,
                        pool_type: str | None = None) -> Tensor:
    """timm's ``model.pool`` with average and attention pooling weighted by token size. x: (B, N, C)."""
    if info.size is None or info.size.shape[:2] != x.shape[:2]:
        return pool(x, pool_type)
    start = 0 if model.pool_include_prefix else model.num_prefix_tokens
    tokens, size = x[:, start:], info.size[:, start:]  # (B, n, C), (B, n, 1)
    if model.attn_pool is not None:
        return model.attn_pool(tokens, attn_mask=log_size_bias(size))
    pool_type = model.global_pool if pool_type is None else pool_type
    if pool_type not in ("avg", "avgmax"):
        return pool(x, pool_type)
    mean = (tokens * size).sum(dim=1) / size.sum(dim=1)  # (B, C)
    return mean if pool_type == "avg" else 0.5 * (tokens.amax(dim=1) + mean)


def _validated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, after checking each is a pre-norm timm Block with timm's plain Attention."""
    if type(model).__name__ in _ROPE_CLASSES:
        raise ValueError(f"{type(model).__name__} uses rotary position embeddings (RoPE), which token merging "
                         "cannot keep correct (a merged token has no single position); supported: timm "
                         "VisionTransformer models (ViT, DeiT, DeiT-III, register and MAE-style ViTs)")
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    blocks = list(model.blocks)
    for index, block in enumerate(blocks):
        if type(block) is not Block:
            raise ValueError(f"block {index} is a {type(block).__name__}; token merging supports timm's "
                             "pre-norm vision_transformer.Block only")
        if type(block.attn) is not Attention:
            raise ValueError(f"block {index} uses {type(block.attn).__name__} attention; token merging supports "
                             "timm's layers.attention.Attention only (no RoPE / differential attention)")
    if not blocks:
        raise ValueError("the model has no transformer blocks to patch")
    return blocks


def _num_tokens(model: nn.Module) -> int:
    """Tokens entering the first block at the model's configured image size."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def _info(model: nn.Module) -> SequenceMerge:
    return sequence.patch_info(model, _INFO_ATTR, "timm")
