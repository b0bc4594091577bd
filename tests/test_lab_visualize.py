"""Merge visualisation: labels from merge sources, painting, and the timm end-to-end helper."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")

import tomesd  # noqa: E402
from tomesd.patch import timm as tome_timm  # noqa: E402
from tomesd.lab.visualize import draw_merge_groups, drawn_images, group_labels, visualize_timm_merges  # noqa: E402


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=4, img_size=64).eval()


def test_group_labels_follow_the_merge_source():
    model = tomesd.apply_patch(tiny_vit(), r=2, trace_source=True)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    source = tome_timm.merge_sources(model)[0]  # (2 + 8, 2 + 16)
    labels = group_labels(source, model.num_prefix_tokens, (4, 4))
    assert labels.shape == (4, 4)
    for patch, token in enumerate(labels.flatten().tolist()):
        assert source[token, model.num_prefix_tokens + patch] == 1
    assert labels.unique().numel() == source.shape[0] - model.num_prefix_tokens


def test_group_labels_reject_a_wrong_grid_or_a_non_partition():
    source = torch.eye(5)
    with pytest.raises(ValueError, match="3x3 grid"):
        group_labels(source, 1, (3, 3))
    source[1, 2] = 1  # patch 1 (column 2) now in two tokens
    with pytest.raises(ValueError, match="exactly one output token"):
        group_labels(source, 1, (2, 2))


def test_merged_groups_are_painted_and_singletons_left_alone():
    grey = np.full((32, 32, 3), 100, dtype=np.uint8)
    labels = torch.tensor([[0, 0], [1, 2]])  # the top row is one group, the bottom patches alone
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    drawn = np.asarray(draw_merge_groups(grey, labels, alpha=0.5))
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)
    assert drawn.shape == (32, 32, 3)
    top = drawn[2:14, 2:30]
    assert (top != 100).any(-1).all() and (top == top[0, 0]).all()  # one colour over the whole group
    assert (drawn[18:32, 0:15] == 100).all() and (drawn[18:32, 17:32] == 100).all()
    assert (drawn[16] == 255).all()  # outline between the group and the patches below it
    with pytest.raises(ValueError, match="alpha"):
        draw_merge_groups(grey, labels, alpha=1.5)


def test_visualize_timm_merges_writes_a_png_and_restores_the_patch(tmp_path):
    model = tomesd.apply_patch(tiny_vit(), r=1)
    image = drawn_images(1, 96, seed=3)[0]
    drawn = visualize_timm_merges(model, image, r=3, path=tmp_path / "merges.png")
    assert drawn.size == (64, 64) and (tmp_path / "merges.png").exists()
    assert tomesd.is_patched(model) and model._tomesd.options == {"r": 1, "proportional_attention": True,
                                                                     "trace_source": False}
    assert not np.array_equal(np.asarray(drawn), np.asarray(visualize_timm_merges(model, image, r=0)))


def test_drawn_images_are_seeded():
    first, again, other = drawn_images(2, 48, seed=1), drawn_images(2, 48, seed=1), drawn_images(2, 48, seed=2)
    assert first.shape == (2, 48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
