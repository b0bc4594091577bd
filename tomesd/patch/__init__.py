"""Model families tomesd can patch. Each family module offers the same three names:

* ``supports(model) -> bool``: is this object one of ours (checked by class name, no hard imports);
* ``apply(model, state, **options) -> None``: find and validate every target first (raising
  ``ValueError``/``TypeError`` before anything is changed), then patch through ``state``
  (:class:`tomesd.patch.state.PatchState`), which records every change for ``remove_patch``;
* ``OPTIONS``: the keyword options ``apply`` accepts, with their defaults.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

# Order matters: a SAM model contains ViT-like parts, and a pipeline is checked before bare models;
# transformers comes last, as it recognises only its own listed classes (transformers' SamModel is sam's).
FAMILIES = ("diffusers", "sam", "timm", "transformers")


def family_of(model: Any) -> ModuleType:
    """The family module that can patch ``model``.

    Raises:
        TypeError: no family recognises the object.
    """
    for name in FAMILIES:
        module = importlib.import_module(f"{__name__}.{name}")
        if module.supports(model):
            return module
    raise TypeError(
        f"tomesd cannot patch a {type(model).__module__}.{type(model).__qualname__}: expected a diffusers "
        "pipeline or model with transformer blocks (UNet2DConditionModel, ControlNetModel, ...), a timm "
        "VisionTransformer, a Segment Anything model / image encoder, or a transformers vision encoder "
        "(ViT, DeiT, Dinov2, CLIP / Siglip vision model, VideoMAE, Vivit)"
    )
