"""Image quality numbers that make a merge ratio's cost measurable, against the unmerged generation.

* :func:`psnr` and :func:`ssim` compare a merged generation with the unmerged one of the same seed;
* :func:`against_baseline` averages both over images paired with their baselines: the one "metrics against
  the baseline" figure of the ratio sweep, the benchmarks and the demo evaluation.

Images are RGB, as ``PIL.Image`` or uint8 (H, W, 3) numpy arrays. Nothing here needs diffusers; the demo
model's prompt adherence lives with the demo (:mod:`tomesd.demo.adherence`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["BaselineMetrics", "against_baseline", "psnr", "ssim"]

ImageLike = Image.Image | np.ndarray


def _rgb(image: ImageLike) -> np.ndarray:
    """``image`` as a uint8 (H, W, 3) array; a TypeError or ValueError for anything else. (The demo detector
    checks its images alike, but importing it would pull in diffusers.)"""
    array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a PIL.Image or a uint8 (H, W, 3) numpy array, got {type(image).__name__}")
    if array.dtype != np.uint8 or array.shape[2:] != (3,) or array.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {array.dtype} of shape {array.shape}")
    return array


def _pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _rgb(a), _rgb(b)
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
class BaselineMetrics:
    """How far a set of images is from its baseline images, averaged over the pairs.

    Attributes:
        psnr: mean PSNR in dB (``inf`` as soon as one pair is identical and none is worse than ``inf``:
            ``inf`` only when every image equals its baseline).
        ssim: mean SSIM (1.0 when every image equals its baseline).
    """

    psnr: float
    ssim: float


def against_baseline(baseline: Sequence[ImageLike], images: Sequence[ImageLike]) -> BaselineMetrics:
    """Mean PSNR and SSIM of each image against the baseline image at the same position (same prompt and
    seed, unmerged).

    Args:
        baseline: the reference images, e.g. ratio 0's.
        images: as many images of the setting being measured, in the same order.

    Returns:
        A :class:`BaselineMetrics`.

    Raises:
        ValueError: the counts differ or there are no images; or as :func:`psnr` / :func:`ssim`.
        TypeError: as :func:`psnr` / :func:`ssim`, or a single image given instead of a sequence.
    """
    if isinstance(baseline, (Image.Image, np.ndarray)) or isinstance(images, (Image.Image, np.ndarray)):
        raise TypeError("against_baseline takes sequences of images (e.g. [image]), not a single image")
    if len(baseline) != len(images) or not images:
        raise ValueError(f"need one baseline per image and at least one image, got {len(baseline)} baselines "
                         f"and {len(images)} images")
    pairs = list(zip(baseline, images))
    return BaselineMetrics(psnr=statistics.fmean(psnr(a, b) for a, b in pairs),
                           ssim=statistics.fmean(ssim(a, b) for a, b in pairs))
