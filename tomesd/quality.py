"""Image quality numbers that make a merge ratio's cost measurable.

* :func:`psnr` and :func:`ssim` compare a merged generation with the unmerged one of the same seed;
* :func:`adherence` says how much of what the prompts ask the images show, read by the demo model's
  deterministic detector (:mod:`tomesd.demo.detector`); :func:`adherence_details` gives it per image.

Images are RGB, as ``PIL.Image`` or uint8 (H, W, 3) numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .demo.detector import detect, to_array
from .demo.shapes import parse_caption

__all__ = ["AdherenceResult", "adherence", "adherence_details", "psnr", "ssim"]

ImageLike = Image.Image | np.ndarray


def _pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_array(a), to_array(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(a: ImageLike, b: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB between two RGB images (peak 255); ``inf`` when identical.

    Raises:
        TypeError: an image is neither a PIL image nor a numpy array.
        ValueError: an array is not uint8 (H, W, 3), or the shapes differ.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: ImageLike, b: ImageLike, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of two RGB images, in [-1, 1]; 1 when identical.

    Local means, variances and covariance are taken under a ``window`` x ``window`` Gaussian of std
    ``sigma`` (valid positions only), on each channel with peak 255, ``K1 = 0.01``, ``K2 = 0.03``; the
    SSIM map is averaged over positions and channels.

    Raises:
        TypeError: an image is neither a PIL image nor a numpy array.
        ValueError: an array is not uint8 (H, W, 3), the shapes differ, or an image is smaller than the window.
    """
    a, b = _pair(a, b)
    if min(a.shape[:2]) < window:
        raise ValueError(f"images of {a.shape[0]}x{a.shape[1]} are smaller than the {window}-pixel SSIM window")
    x = torch.tensor(a).permute(2, 0, 1)[:, None].double()  # (3, 1, H, W)
    y = torch.tensor(b).permute(2, 0, 1)[:, None].double()  # (3, 1, H, W)
    kernel = _gaussian_window(window, sigma)
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)  # (3, 1, H', W')
    var_x = F.conv2d(x * x, kernel) - mu_x**2
    var_y = F.conv2d(y * y, kernel) - mu_y**2
    cov = F.conv2d(x * y, kernel) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


@dataclass(frozen=True)
class AdherenceResult:
    """One image judged against its prompt: what was asked, what was seen, which attributes match."""

    prompt: str
    asked: dict[str, str]
    detected: dict[str, str | None]

    @property
    def matched(self) -> dict[str, bool]:
        """For each asked attribute, whether the detector saw it."""
        return {name: self.detected[name] == value for name, value in self.asked.items()}

    @property
    def score(self) -> float:
        """Fraction of this prompt's asked attributes that were detected."""
        return sum(self.matched.values()) / len(self.asked)


def adherence_details(images: Sequence[ImageLike], prompts: Sequence[str]) -> list[AdherenceResult]:
    """Judge each image against its prompt with the demo detector.

    Args:
        images: RGB images (PIL or uint8 (H, W, 3) arrays).
        prompts: one demo-grammar prompt per image, e.g. ``"a small red circle on a yellow background"``.

    Returns:
        One :class:`AdherenceResult` per image, in order.

    Raises:
        ValueError: the counts differ, there are no images, or a prompt is not in the demo grammar.
        TypeError: an image is neither a PIL image nor a numpy array.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, one per image, not a single string")
    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one prompt per image and at least one image, got {len(images)} images "
                         f"and {len(prompts)} prompts")
    asked = [parse_caption(p) for p in prompts]  # fail on a bad prompt before detecting anything
    return [AdherenceResult(p, a, detect(img).as_dict()) for img, p, a in zip(images, prompts, asked)]


def adherence(images: Sequence[ImageLike], prompts: Sequence[str]) -> float:
    """Fraction of all the attributes the prompts ask (colour, shape, and size / background when named)
    that the detector finds in the images: 1.0 when every image shows everything asked.

    Raises:
        ValueError, TypeError: as :func:`adherence_details`.
    """
    results = adherence_details(images, prompts)
    matched = sum(sum(r.matched.values()) for r in results)
    return matched / sum(len(r.asked) for r in results)
