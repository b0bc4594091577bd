"""Metrics that see fine detail, for images compared with a reference (the unmerged image of the same seed).

PSNR and SSIM weigh every pixel alike, so on pictures of flat colours they say little about what token
merging does to texture. These three look at the fine scale:

* :func:`high_frequency_error`: the energy of the difference above a cut-off frequency, relative to the
  reference's own energy there. 0 when the fine scale is unchanged; ~1 when it is lost (or replaced by
  something as strong); it counts a shifted stripe as a change.
* :func:`high_frequency_retained`: the image's energy above the cut-off relative to the reference's.
  Shift-invariant: 1 when the image has as much fine detail as the reference, below 1 when it is smoother
  (what averaging tokens tends to do), above 1 when it has more (noise).
* :func:`gmsd`: gradient magnitude similarity deviation (Xue et al., 2014): the spread of the pixelwise
  similarity of the two gradient-magnitude maps. 0 when identical; it ignores a uniform brightness change,
  which PSNR punishes, and rises with noise, displaced edges and moderate blur (a blur that removes
  every gradient makes the map uniformly low again, so its spread falls: read it with
  :func:`gradient_similarity`, the map's mean, which only falls).

:func:`detail_scores` gives all four for each image pair and :func:`summarize_detail` reports each as mean
and worst image, the way a setting is reported. Pure numpy (no diffusers import): images are RGB
``PIL.Image`` or uint8 (H, W, 3) arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..demo.detector import to_array

__all__ = [
    "DEFAULT_CUTOFF",
    "GMSD_CONSTANT",
    "METRICS",
    "DetailSummary",
    "detail_scores",
    "gmsd",
    "gradient_similarity",
    "high_frequency_energy",
    "high_frequency_error",
    "high_frequency_retained",
    "summarize",
    "summarize_detail",
]

ImageLike = Image.Image | np.ndarray

#: Cut-off of the high-frequency measures in cycles per pixel (Nyquist is 0.5): periods of 8 px and less,
#: the demo data's stripes and dots included.
DEFAULT_CUTOFF = 0.125
#: GMSD's stability constant for intensities in [0, 255] (the paper's value).
GMSD_CONSTANT = 170.0
#: The metrics of :func:`detail_scores`, and whether a higher value is better.
METRICS: dict[str, bool] = {"hf_error": False, "hf_retained": True, "gmsd": False, "gms_mean": True}


@dataclass(frozen=True)
class DetailSummary:
    """One metric over a set of images: its mean, its median (steadier when one image is far off), its worst
    value and which image (index) gave it."""

    mean: float
    median: float
    worst: float
    worst_index: int


def high_frequency_error(image: ImageLike, reference: ImageLike, cutoff: float = DEFAULT_CUTOFF) -> float:
    """Energy of ``image - reference`` above ``cutoff`` cycles/pixel over the reference's energy there
    (RGB channels summed, each less its mean and Hann-windowed so the image edges add no frequencies).

    Returns:
        0.0 for identical images; ``inf`` when the reference has no energy above the cut-off but the
        difference has.

    Raises:
        TypeError: an image is neither a PIL image nor a numpy array.
        ValueError: an array is not uint8 (H, W, 3), the shapes differ, or ``cutoff`` is not in (0, 0.5).
    """
    a, b = _pair(image, reference)
    return _ratio(_high_energy(a - b, cutoff), _high_energy(b, cutoff))


def high_frequency_retained(image: ImageLike, reference: ImageLike, cutoff: float = DEFAULT_CUTOFF) -> float:
    """The image's energy above ``cutoff`` cycles/pixel over the reference's (RGB summed, Hann-windowed).

    Returns:
        1.0 for identical images (and for shifted copies, up to the window); below 1 for smoother images;
        ``inf`` when only the image has energy above the cut-off (1.0 when neither has).

    Raises:
        TypeError, ValueError: as :func:`high_frequency_error`.
    """
    a, b = _pair(image, reference)
    energy, reference_energy = _high_energy(a, cutoff), _high_energy(b, cutoff)
    return 1.0 if energy == reference_energy == 0 else _ratio(energy, reference_energy)


def high_frequency_energy(image: ImageLike, cutoff: float = DEFAULT_CUTOFF) -> float:
    """The image's spectral energy above ``cutoff`` cycles/pixel (RGB summed, each channel less its mean,
    Hann-windowed): how much fine detail it holds, e.g. to pick the most textured images of a set.

    Raises:
        TypeError, ValueError: as :func:`high_frequency_error`.
    """
    a, _ = _pair(image, image)
    return _high_energy(a, cutoff)


def gmsd(image: ImageLike, reference: ImageLike, constant: float = GMSD_CONSTANT) -> float:
    """Gradient magnitude similarity deviation of the two images' luminance.

    Gradients are 3 x 3 Prewitt filters (divided by 3) over valid positions, at full resolution (the paper
    first averages 2 x 2 for 512-pixel images; here the fine scale is the point). The similarity map is
    ``(2 m_i m_r + c) / (m_i^2 + m_r^2 + c)`` and GMSD is its standard deviation.

    Returns:
        0.0 for identical images (or ones differing by a constant); larger is worse (at most 1).

    Raises:
        TypeError: an image is neither a PIL image nor a numpy array.
        ValueError: an array is not uint8 (H, W, 3), the shapes differ, or an image is under 3 x 3 pixels.
    """
    return float(_gradient_similarity_map(image, reference, constant).std())


def gradient_similarity(image: ImageLike, reference: ImageLike, constant: float = GMSD_CONSTANT) -> float:
    """Mean of :func:`gmsd`'s similarity map (the paper's GMSM): 1.0 for identical images, lower is worse.

    Raises:
        TypeError, ValueError: as :func:`gmsd`.
    """
    return float(_gradient_similarity_map(image, reference, constant).mean())


def _gradient_similarity_map(image: ImageLike, reference: ImageLike, constant: float) -> np.ndarray:
    """Pixelwise gradient magnitude similarity of the luminances, (H - 2, W - 2)."""
    a, b = _pair(image, reference)
    if min(a.shape[:2]) < 3:
        raise ValueError(f"images must be at least 3 x 3 pixels for gradients, got {a.shape[:2]}")
    weights = np.array([0.299, 0.587, 0.114])
    magnitude_a, magnitude_b = _gradient_magnitude(a @ weights), _gradient_magnitude(b @ weights)  # (H-2, W-2)
    return (2 * magnitude_a * magnitude_b + constant) / (magnitude_a**2 + magnitude_b**2 + constant)


def detail_scores(images: Sequence[ImageLike], references: Sequence[ImageLike],
                  cutoff: float = DEFAULT_CUTOFF) -> dict[str, list[float]]:
    """Each metric of :data:`METRICS` for every (image, reference) pair, in order.

    Raises:
        ValueError: the counts differ or there are no images; as the metrics.
        TypeError: as the metrics.
    """
    if len(images) != len(references) or not images:
        raise ValueError(f"need one reference per image and at least one image, got {len(images)} images "
                         f"and {len(references)} references")
    pairs = list(zip(images, references))
    return {
        "hf_error": [high_frequency_error(a, b, cutoff) for a, b in pairs],
        "hf_retained": [high_frequency_retained(a, b, cutoff) for a, b in pairs],
        "gmsd": [gmsd(a, b) for a, b in pairs],
        "gms_mean": [gradient_similarity(a, b) for a, b in pairs],
    }


def summarize(values: Sequence[float], higher_is_better: bool) -> DetailSummary:
    """Mean, median and worst of ``values`` (the lowest if ``higher_is_better``, else the highest).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not len(values):
        raise ValueError("cannot summarize no values")
    array = np.asarray(values, dtype=np.float64)
    index = int(array.argmin() if higher_is_better else array.argmax())
    return DetailSummary(float(array.mean()), float(np.median(array)), float(array[index]), index)


def summarize_detail(images: Sequence[ImageLike], references: Sequence[ImageLike],
                     cutoff: float = DEFAULT_CUTOFF) -> dict[str, DetailSummary]:
    """:func:`detail_scores` reduced to mean, median and worst image per metric — one setting's report.

    Raises:
        ValueError, TypeError: as :func:`detail_scores`.
    """
    scores = detail_scores(images, references, cutoff)
    return {name: summarize(values, METRICS[name]) for name, values in scores.items()}


def _pair(image: ImageLike, reference: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (H, W, 3) arrays of the same shape."""
    a, b = to_array(image), to_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def _high_energy(pixels: np.ndarray, cutoff: float) -> float:
    """Spectral energy of a (H, W, 3) array at radial frequencies of at least ``cutoff`` cycles/pixel."""
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    height, width = pixels.shape[:2]
    window = np.hanning(height)[:, None] * np.hanning(width)[None, :]  # (H, W)
    centred = pixels - pixels.mean((0, 1))  # a uniform offset is no detail: without it, none leaks through the window
    spectrum = np.fft.rfft2(centred * window[:, :, None], axes=(0, 1))  # (H, W // 2 + 1, 3)
    ky, kx = np.meshgrid(np.fft.fftfreq(height), np.fft.rfftfreq(width), indexing="ij")
    high = np.hypot(kx, ky) >= cutoff  # (H, W // 2 + 1)
    return float((np.abs(spectrum[high]) ** 2).sum())


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else math.inf
    return numerator / denominator


def _gradient_magnitude(luminance: np.ndarray) -> np.ndarray:
    """Prewitt gradient magnitude over valid positions: (H, W) -> (H - 2, W - 2)."""
    rows = luminance[:, 2:] - luminance[:, :-2]  # (H, W - 2): horizontal differences
    cols = luminance[2:, :] - luminance[:-2, :]  # (H - 2, W)
    gx = (rows[:-2] + rows[1:-1] + rows[2:]) / 3
    gy = (cols[:, :-2] + cols[:, 1:-1] + cols[:, 2:]) / 3
    return np.hypot(gx, gy)
