"""tomesd.lab.quality: PSNR / SSIM on image pairs with known answers, their average against a baseline, and
an import that needs no diffusers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tomesd.lab.quality import BaselineMetrics, against_baseline, psnr, ssim


def _textured(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 226, size=(size, size, 3), dtype=np.uint8)


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


def test_the_baseline_average_is_the_mean_of_each_pair():
    base = [_textured(6), _textured(7)]
    noisy = [np.clip(b.astype(int) + 9 * (np.arange(b.size).reshape(b.shape) % 2) - 4, 0, 255).astype(np.uint8)
             for b in base]
    metrics = against_baseline(base, [base[0], noisy[1]])
    assert metrics == BaselineMetrics(math.inf, (1.0 + ssim(base[1], noisy[1])) / 2)  # one identical pair: inf
    metrics = against_baseline(base, noisy)
    assert metrics.psnr == pytest.approx((psnr(base[0], noisy[0]) + psnr(base[1], noisy[1])) / 2, rel=1e-12)
    assert metrics.ssim == pytest.approx((ssim(base[0], noisy[0]) + ssim(base[1], noisy[1])) / 2, rel=1e-12)
    assert against_baseline([base[0]], [base[0]]) == BaselineMetrics(math.inf, 1.0)


@pytest.mark.parametrize(("baseline", "images", "error"), [
    ([], [], ValueError),
    ([np.zeros((16, 16, 3), np.uint8)], [], ValueError),
    (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), TypeError),
])
def test_the_baseline_average_rejects_unpaired_input(baseline, images, error):
    with pytest.raises(error):
        against_baseline(baseline, images)


def test_the_metrics_import_without_diffusers():
    code = ("import sys; import tomesd.lab.quality; "
            "print(sorted(m for m in ('diffusers', 'transformers', 'tomesd.demo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
