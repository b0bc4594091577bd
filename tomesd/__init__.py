"""tomesd: token merging for faster transformer inference, with no retraining.

``apply_patch`` recognises the model family (diffusers pipelines and U-Nets, timm Vision Transformers,
Segment Anything encoders) and patches it through the shared merge core; ``remove_patch`` restores it
exactly. See each family's options in :mod:`tomesd.patch.diffusers`, :mod:`tomesd.patch.timm` and
:mod:`tomesd.patch.sam`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .patch import family_of
from .patch.state import PatchState

__version__ = "0.2.0"
__all__ = ["apply_patch", "remove_patch", "is_patched", "__version__"]

_STATE_ATTR = "_tomesd"
Model = TypeVar("Model")


def apply_patch(model: Model, **options: Any) -> Model:
    """Patch ``model`` with token merging, in place, and return it.

    Diffusers pipelines and models (SD 1.x/2.x/XL, img2img, inpaint, ControlNet) take tomesd 0.1.3's
    option names and a few more: ``ratio=0.5, max_downsample=None, min_tokens=1024, sx=2, sy=2,
    use_rand=True, merge_attn=True, merge_crossattn=False, merge_mlp=True, seed=0, kv_downsample=2,
    matching="local"`` (see :func:`tomesd.patch.diffusers.apply`). timm Vision
    Transformers take ``r`` (see :func:`tomesd.patch.timm.apply`); Segment Anything encoders see
    :func:`tomesd.patch.sam.apply`.

    A model that is already patched is unpatched first, so applying twice equals applying once with the
    new options. On any error the model is left as it was (with its previous patch, if any).

    Raises:
        TypeError: the model is of no supported family, or an option is unknown for its family.
        ValueError: an option's value is out of range, or the model has nothing to patch.
    """
    family = family_of(model)
    options = _with_defaults(family, options)
    previous = getattr(model, "__dict__", {}).get(_STATE_ATTR)
    remove_patch(model)
    state = PatchState(family.__name__.rsplit(".", 1)[-1], options)
    try:
        family.apply(model, state, **options)
    except BaseException:
        state.undo()
        if previous is not None:  # put back the patch the model had: nothing lost
            apply_patch(model, **previous.options)
        raise
    setattr(model, _STATE_ATTR, state)
    return model


def remove_patch(model: Model) -> Model:
    """Undo :func:`apply_patch` completely: every processor, module and attribute it changed is restored,
    every attribute it added deleted. Does nothing on an unpatched model. Returns ``model``."""
    state = getattr(model, "__dict__", {}).get(_STATE_ATTR)
    if state is not None:
        state.undo()
        delattr(model, _STATE_ATTR)
    return model


def is_patched(model: Any) -> bool:
    """Whether ``model`` currently carries a tomesd patch."""
    return isinstance(getattr(model, "__dict__", {}).get(_STATE_ATTR), PatchState)


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

