"""tomesd.demo.adherence: the demo detector's reading of generator images against their captions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from tomesd.demo.adherence import adherence, adherence_details
from tomesd.demo.shapes import Scene, draw, random_scene


def _generator_set(count: int, size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    rng = random.Random(seed)
    scenes = [random_scene(rng, "any") for _ in range(count)]
    return [draw(s, size, rng) for s in scenes], [s.caption for s in scenes]


@pytest.mark.parametrize("size", [64, 128])
def test_adherence_of_generator_images_with_their_own_captions_is_one(size):
    images, captions = _generator_set(60, size, seed=size)
    assert adherence(images, captions) == 1.0


def test_adherence_with_other_images_captions_is_far_lower():
    images, captions = _generator_set(60, 64, seed=7)
    shifted = captions[1:] + captions[:1]
    assert adherence(images, shifted) < 0.5


def _one_scene(seed: int) -> tuple[Image.Image, Scene]:
    rng = random.Random(seed)
    scene = random_scene(rng)
    return draw(scene, 64, rng), scene


def test_adherence_details_name_what_was_asked_and_seen():
    image, scene = _one_scene(0)
    [result] = adherence_details([image], [scene.caption])
    assert result.asked == scene.asked
    assert result.detected == {"size": scene.size, "colour": scene.colour, "shape": scene.shape,
                               "background": scene.background, "texture": "plain", "background_texture": "plain"}
    assert result.score == 1.0


def test_adherence_counts_asked_attributes_only():
    image, scene = _one_scene(1)
    wrong_colour = next(c for c in ("red", "blue") if c != scene.colour)
    # two attributes asked, one of them right: the size and background the image shows are not counted
    assert adherence([image], [f"a {wrong_colour} {scene.shape}"]) == 0.5


@pytest.mark.parametrize(
    ("images", "prompts", "error"),
    [
        ([np.zeros((16, 16, 3), np.uint8)], ["a red circle", "a blue square"], ValueError),
        ([], [], ValueError),
        ([np.zeros((16, 16, 3), np.uint8)], ["a red dog"], ValueError),
        ([np.zeros((16, 16, 3), np.uint8)], "a red circle", TypeError),
    ],
)
def test_adherence_rejects_bad_input(images, prompts, error):
    with pytest.raises(error):
        adherence(images, prompts)
