"""tomesd.quality: PSNR / SSIM on image pairs with known answers, adherence on generator images."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from tomesd.demo.shapes import Scene, draw, random_scene
from tomesd.quality import adherence, adherence_details, psnr, ssim


def _textured(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 226, size=(size, size, 3), dtype=np.uint8)


def _generator_set(count: int, size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    rng = random.Random(seed)
    scenes = [random_scene(rng, "any") for _ in range(count)]
    return [draw(s, size, rng) for s in scenes], [s.caption for s in scenes]


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    image = _textured()
    assert psnr(image, image.copy()) == math.inf
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_known_error_level():
    # every pixel off by exactly 10 -> MSE 100 -> 10 log10(255^2 / 100) dB
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[::2] += 10
    b[1::2] -= 10
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_psnr_of_gaussian_noise_matches_its_variance():
    rng = np.random.default_rng(1)
    a = np.full((128, 128, 3), 128, dtype=np.uint8)
    b = np.clip(128 + rng.normal(0, 5, a.shape).round(), 0, 255).astype(np.uint8)
    expected = 10 * math.log10(255**2 / 25)  # 34.15 dB; sampling error of the variance is ~1 %
    assert psnr(a, b) == pytest.approx(expected, abs=0.1)


def test_ssim_of_flat_images_is_the_luminance_term():
    # with zero variances SSIM reduces to (2 mx my + C1) / (mx^2 + my^2 + C1)
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = np.full((20, 20, 3), 150, dtype=np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1), rel=1e-9)


def test_ssim_falls_as_noise_grows_and_is_symmetric():
    rng = np.random.default_rng(2)
    clean = _textured(3).astype(np.float64)
    noisy = [np.clip(clean + rng.normal(0, s, clean.shape), 0, 255).astype(np.uint8) for s in (5, 20, 60)]
    scores = [ssim(clean.astype(np.uint8), n) for n in noisy]
    assert 1 > scores[0] > scores[1] > scores[2]
    assert ssim(noisy[0], clean.astype(np.uint8)) == pytest.approx(scores[0], abs=1e-12)


def test_pil_and_array_inputs_agree():
    a, b = _textured(4), _textured(5)
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == psnr(a, b)
    assert ssim(Image.fromarray(a), b) == ssim(a, b)


@pytest.mark.parametrize(
    ("a", "b", "error"),
    [
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8), ValueError),
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32), ValueError),
        (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), ValueError),
        ([[0]], [[0]], TypeError),
    ],
)
def test_metrics_reject_bad_images(a, b, error):
    with pytest.raises(error):
        psnr(a, b)
    with pytest.raises(error):
        ssim(a, b)


def test_ssim_rejects_images_smaller_than_its_window():
    tiny = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="window"):
        ssim(tiny, tiny)


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
