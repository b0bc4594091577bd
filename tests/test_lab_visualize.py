"""tomesd.lab.visualize: labels from merge sources, painting, the timm end-to-end helper, the strip of panels,
and its command line (``tomesd visualize-merges``, ``scripts/visualize_merges.py``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")

import tomesd  # noqa: E402
from tomesd.patch import timm as tome_timm  # noqa: E402
from tomesd.cli.visualize_merges import main as visualize_main  # noqa: E402
from tomesd.lab.visualize import (  # noqa: E402
    draw_merge_groups, drawn_images, group_labels, merge_strip, visualize_timm_merges,
)


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


def test_the_strip_shows_the_input_then_one_panel_per_schedule():
    model, image = tiny_vit(), drawn_images(1, 64, seed=3)[0]
    strip = merge_strip(model, image, [1, 2], gap=8)
    assert strip.size == (3 * 64 + 2 * 8, 64)
    panels = [np.asarray(strip)[:, i * 72:i * 72 + 64] for i in range(3)]
    assert np.array_equal(panels[0], image)  # the input, at the model's size already
    assert np.array_equal(panels[1], np.asarray(visualize_timm_merges(model, image, r=1)))
    assert not np.array_equal(panels[1], panels[2])  # more merging, other groups
    assert not tomesd.is_patched(model)
    with pytest.raises(ValueError, match="no merge schedule"):
        merge_strip(model, image, [])


def test_the_command_writes_a_palette_png(tmp_path, capsys):
    out = tmp_path / "merges.png"
    assert visualize_main(["--model", "vit_tiny_patch16_224", "--r", "4", "8", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as strip:
        assert strip.mode == "P" and strip.size == (3 * 224 + 2 * 8, 224)
    assert "the input, then r = 4, 8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--model", "no_such_vit"], "is not a timm model name"),
                                           (["--image", "missing.jpg"], "does not exist")])
def test_the_command_refuses_bad_arguments(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize_main([*argv, "--out", str(tmp_path / "m.png")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err

