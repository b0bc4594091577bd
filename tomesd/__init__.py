"""tomesd: token merging for faster transformer inference, with no retraining.

``apply_patch`` recognises the model family (diffusers pipelines and models: U-Nets, video U-Nets, DiT
and MMDiT transformers; timm Vision Transformers; Segment Anything encoders; Hugging Face transformers
vision encoders) and patches it through the shared merge core; ``remove_patch`` restores it exactly. See
each family's options in :mod:`tomesd.patch.diffusers`, :mod:`tomesd.patch.timm`, :mod:`tomesd.patch.sam`
and :mod:`tomesd.patch.transformers`.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from .patch import family_of
from .patch.state import PatchState, hook_counts, mark, models_of, patches_within, state_of

__version__ = "0.2.0"
__all__ = ["apply_patch", "remove_patch", "is_patched", "__version__"]

Model = TypeVar("Model")


def apply_patch(model: Model, **options: Any) -> Model:
    """Patch ``model`` with token merging, in place, and return it.

    Diffusers pipelines and models (SD 1.x/2.x/XL, img2img, inpaint, ControlNet, the video U-Nets of
    AnimateDiff, SVD, text-to-video and I2VGen-XL, and the transformers of PixArt-α/Σ, DiT, SD3/SD3.5,
    Flux.1 and Wan 2.x; Sana is refused with its reason) take tomesd 0.1.3's option names and a few more:
    ``ratio=0.7, max_downsample=None, min_tokens=1024, sx=2, sy=2, use_rand=True, merge_attn=True,
    merge_crossattn=False, merge_mlp=True, seed=0, kv_downsample=1, matching="global", share_frames=False,
    merge_temporal=True``
    (see :mod:`tomesd.patch.diffusers`, whose ``OPTIONS`` and ``HELP`` hold the defaults and their
    meaning). timm Vision Transformers take ``r`` (see :func:`tomesd.patch.timm.apply`); Segment Anything
    encoders see :func:`tomesd.patch.sam.apply`; Hugging Face vision encoders take ``r`` and ``matching``
    (see :mod:`tomesd.patch.transformers`).

    One model carries at most one patch, wherever it was applied from: any patch already on ``model``, on
    the models of a pipeline ``model``, or on a module inside them (or on the pipeline holding them) is
    removed first, so applying twice equals applying once with the new options, and patching a pipeline
    after its U-Net (or the other way round) leaves the newer patch only. On any error the model is left
    as it was (with its previous patches, if any).

    Copies: ``copy.deepcopy`` of a patched pipeline or model (also of a model a pipeline patch reached) is
    patched the same way with its own, independent patch (``remove_patch`` on the copy works and leaves
    the original patched); a copy of a module inside a patched model is unpatched. ``pickle`` and
    ``torch.save`` store the unpatched model with the options, and loading re-applies the patch. Both
    briefly remove the original's patch while they copy: do not copy a model that another thread is running.

    Raises:
        TypeError: the model is of no supported family, or an option is unknown for its family.
        ValueError: an option's value is out of range, or the model has nothing to patch.
    """
    family = family_of(model)
    options = _with_defaults(family, options)
    previous = [(state.owner, state.options) for state in patches_within(model)]
    for owner, _ in previous:
        remove_patch(owner)
    state = PatchState(family.__name__.rsplit(".", 1)[-1], options, owner=model)
    try:
        counts = hook_counts(model)
        family.apply(model, state, **options)
        mark(model, state, counts, _patched_copy, _unpatched_copy, _reduce_patched, _reduce_unpatched)
    except BaseException:
        state.undo()
        for owner, owner_options in previous:  # put back the patches there were: nothing lost
            apply_patch(owner, **owner_options)
        raise
    return model


def remove_patch(model: Model) -> Model:
    """Undo :func:`apply_patch` completely: every processor, module and attribute it changed is restored,
    every attribute it added deleted. ``model`` may be the object the patch was applied to or any model it
    touched: removing through a pipeline's U-Net removes the pipeline's patch (from all its models, as
    removing through the pipeline does). Does nothing on an unpatched model. Returns ``model``."""
    state = state_of(model)
    if state is not None:
        state.undo()
    return model


def is_patched(model: Any) -> bool:
    """Whether ``model`` currently carries a tomesd patch (applied to it, or to a pipeline holding it)."""
    return state_of(model) is not None


def _unpatched_copy(obj: Any, state: PatchState, memo: dict) -> Any:
    """``copy.deepcopy(obj)`` as if the patch were not there: the owner's patch is removed while copying and
    put back after."""
    owner, options = state.owner, state.options
    remove_patch(owner)
    try:
        return copy.deepcopy(obj, memo)
    finally:
        apply_patch(owner, **options)


def _patched_copy(obj: Any, state: PatchState, memo: dict) -> Any:
    """A deep copy of a patched model or pipeline, patched the same way with its own state."""
    options = dict(state.options)
    return apply_patch(_unpatched_copy(obj, state, memo), **options)


def _reduce_unpatched(obj: Any, state: PatchState, protocol: int) -> Any:
    """Pickle ``obj`` as if unpatched: reduce a copy made without the patch that shares its tensors."""
    return _unpatched_copy(obj, state, _own_tensors(obj)).__reduce_ex__(protocol)


def _reduce_patched(obj: Any, state: PatchState, protocol: int) -> Any:
    """Pickle a patched model or pipeline as its unpatched self and its options; loading re-applies them."""
    return _repatch, (_unpatched_copy(obj, state, _own_tensors(obj)), dict(state.options))


def _own_tensors(obj: Any) -> dict[int, Any]:
    """A deepcopy memo mapping every parameter and buffer of ``obj``'s models to itself: a copy made with it
    shares them, so pickling through it costs no second copy of the weights."""
    return {id(t): t for model in models_of(obj) for t in (*model.parameters(), *model.buffers())}


def _repatch(model: Model, options: dict[str, Any]) -> Model:
    """Unpickling a patched model: the unpatched model, patched again with its options."""
    return apply_patch(model, **options)


def _with_defaults(family: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The family's defaults overridden by ``options``; an unknown option raises ``TypeError``."""
    unknown = sorted(set(options) - set(family.OPTIONS))
    if unknown:
        name = family.__name__.rsplit(".", 1)[-1]
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for a {name} model; "
            f"accepted: {', '.join(family.OPTIONS)}"
        )
    return {**family.OPTIONS, **options}

