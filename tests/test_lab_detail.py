"""tomesd.lab.detail: detail metrics on images with known changes (blur, shift, noise, brightness)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tomesd.demo.shapes import Scene, draw
from tomesd.lab.detail import (
    METRICS, DetailSummary, detail_scores, gmsd, gradient_similarity, high_frequency_energy, high_frequency_error,
    high_frequency_retained, summarize, summarize_detail,
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), for comparison with the detail metrics."""
    return 10 * math.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.fixture(scope="module")
def striped() -> Image.Image:
    scene = Scene("large", "red", "circle", "blue", texture="vertical striped", colour2="yellow",
                  background_texture="dotted")
    return draw(scene, 128, random.Random(0))


def _blur(image: Image.Image, radius: float) -> np.ndarray:
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)))


def test_identical_images_score_exactly_no_change(striped):
    a = np.asarray(striped)
    assert high_frequency_error(a, a.copy()) == 0.0
    assert high_frequency_retained(a, a.copy()) == 1.0
    assert gmsd(a, a.copy()) == 0.0
    assert gradient_similarity(a, a.copy()) == 1.0


def test_fine_detail_energy_orders_images_by_texture(striped):
    flat = draw(Scene("large", "red", "circle", "blue"), 128, random.Random(0))
    blank = Image.new("RGB", (128, 128), (40, 90, 200))
    assert high_frequency_energy(blank) == 0.0  # a uniform image holds no detail at all
    assert high_frequency_energy(striped) > 10 * high_frequency_energy(flat) > 0
    # the blurred copy keeps what high_frequency_retained says it keeps, against the same energy
    blurred = _blur(striped, 1)
    assert high_frequency_energy(blurred) / high_frequency_energy(striped) == pytest.approx(
        high_frequency_retained(blurred, striped))


def test_a_blur_loses_more_detail_than_a_one_pixel_shift_which_psnr_calls_worse(striped):
    reference, blurred = np.asarray(striped), _blur(striped, 1.0)
    shifted = np.roll(reference, 1, axis=1)  # every stripe moved by a pixel, none lost
    # measured: retained 0.43 (blur) vs 0.999 (shift); PSNR 18.3 vs 12.8 dB (SSIM 0.82 vs 0.55)
    assert high_frequency_retained(shifted, reference) == pytest.approx(1.0, abs=0.02)
    assert high_frequency_retained(blurred, reference) < 0.6
    assert psnr(shifted, reference) < psnr(blurred, reference)


def test_stronger_blur_scores_worse_on_every_monotone_metric(striped):
    reference = np.asarray(striped)
    scores = [detail_scores([_blur(striped, r)], [reference]) for r in (0.5, 1.0, 2.0)]
    for name in ("hf_error", "hf_retained", "gms_mean"):
        values = [s[name][0] for s in scores]
        assert values == sorted(values, reverse=METRICS[name]), (name, values)
        assert len(set(values)) == 3
    assert scores[0]["gmsd"][0] < scores[1]["gmsd"][0]  # moderate blur; see the module note on strong blur


def test_noise_adds_high_frequencies_and_a_brightness_offset_changes_no_gradient(striped):
    reference = np.asarray(striped)
    noisy = np.clip(reference + np.random.default_rng(0).normal(0, 8, reference.shape), 0, 255).astype(np.uint8)
    assert high_frequency_retained(noisy, reference) > 1.0
    assert gmsd(noisy, reference) > 0.05
    brighter = np.clip(reference.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    assert reference.max() <= 250  # no clipping: the offset is uniform
    # equal gradients up to the rounding of the luminance weights
    assert gmsd(brighter, reference) < 1e-12 and gradient_similarity(brighter, reference) == pytest.approx(1, abs=1e-12)
    assert high_frequency_error(brighter, reference) < 1e-20  # the offset is the mean, which is removed
    assert psnr(brighter, reference) < 35


def test_flat_references():
    flat = np.full((32, 32, 3), 100, np.uint8)
    assert high_frequency_retained(flat, flat.copy()) == 1.0
    assert high_frequency_error(flat, flat.copy()) == 0.0
    noisy = flat.copy()
    noisy[::2, ::2] = 120
    assert high_frequency_retained(noisy, flat) == math.inf and high_frequency_error(noisy, flat) == math.inf


def test_summaries_give_the_mean_the_median_and_the_worst_image(striped):
    reference = np.asarray(striped)
    images = [reference.copy(), _blur(striped, 1.5), np.roll(reference, 1, axis=0)]
    summary = summarize_detail(images, [reference] * 3)
    assert set(summary) == set(METRICS)
    assert summary["hf_retained"].worst_index == 1  # the blurred one
    assert summary["gms_mean"].worst_index != 0
    assert summarize([3.0, 1.0, 2.0], higher_is_better=True) == DetailSummary(2.0, 2.0, 1.0, 1)
    assert summarize([3.0, 1.0, 2.0], higher_is_better=False) == DetailSummary(2.0, 2.0, 3.0, 0)
    # one image far off moves the mean, not the median
    outlier = summarize([0.1, 0.2, 0.3, 33.0], higher_is_better=False)
    assert outlier.mean == pytest.approx(8.4) and outlier.median == pytest.approx(0.25) and outlier.worst_index == 3


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda a: high_frequency_error(a, a[:16]), ValueError, "same shape"),
    (lambda a: high_frequency_retained(a, a, cutoff=0.5), ValueError, "cutoff"),
    (lambda a: gmsd(a[:2, :2], a[:2, :2]), ValueError, "3 x 3"),
    (lambda a: gmsd(a.astype(np.float32), a), ValueError, "uint8"),
    (lambda a: gmsd(a.tolist(), a), TypeError, "list"),
    (lambda a: detail_scores([a], []), ValueError, "one reference per image"),
    (lambda a: summarize([], higher_is_better=True), ValueError, "no values"),
])
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros((32, 32, 3), np.uint8))


def test_the_metrics_and_the_detector_import_without_diffusers():
    import subprocess
    import sys

    code = ("import sys, tomesd.lab.detail, tomesd.demo.detector; "
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
