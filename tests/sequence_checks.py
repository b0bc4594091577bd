"""Checks shared by the tests of the sequence families (timm and transformers vision encoders)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def module_attributes(model: torch.nn.Module) -> list:
    """Every instance attribute name and hook count of every submodule: what a clean removal restores."""
    return [
        (name, sorted(vars(module)), len(module._forward_hooks), len(module._forward_pre_hooks))
        for name, module in model.named_modules()
    ]


def record_sdpa_masks(monkeypatch: pytest.MonkeyPatch) -> list:
    """Spy on ``F.scaled_dot_product_attention``: returns the list its ``attn_mask`` of each call goes to."""
    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return masks
