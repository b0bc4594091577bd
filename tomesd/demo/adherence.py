"""Prompt adherence of images drawn by the demo model: how much of what each prompt asks the image shows,
read by the deterministic detector (:mod:`tomesd.demo.detector`).

Images are RGB, as ``PIL.Image`` or uint8 (H, W, 3) numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .detector import Detection, detect
from .shapes import parse_caption

__all__ = ["AdherenceResult", "adherence", "adherence_details", "judge_detections", "pooled_adherence"]


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


def adherence_details(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> list[AdherenceResult]:
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
    _check_pairs(images, prompts)
    asked = [parse_caption(p) for p in prompts]  # fail on a bad prompt before detecting anything
    return [AdherenceResult(p, a, detect(img).as_dict()) for img, p, a in zip(images, prompts, asked)]


def judge_detections(detections: Sequence[Detection], prompts: Sequence[str]) -> list[AdherenceResult]:
    """:func:`adherence_details` for images already detected (e.g. when their centres are wanted too).

    Raises:
        ValueError, TypeError: as :func:`adherence_details`.
    """
    _check_pairs(detections, prompts)
    return [AdherenceResult(p, parse_caption(p), d.as_dict()) for d, p in zip(detections, prompts)]


def pooled_adherence(results: Sequence[AdherenceResult]) -> float:
    """Fraction of all the attributes asked in ``results`` that were detected (what :func:`adherence` returns)."""
    return sum(sum(r.matched.values()) for r in results) / sum(len(r.asked) for r in results)


def _check_pairs(items: Sequence[object], prompts: Sequence[str]) -> None:
    """Raise unless ``prompts`` is a sequence of strings with one per item, and there is an item."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, one per image, not a single string")
    if len(items) != len(prompts) or not items:
        raise ValueError(f"need one prompt per image and at least one image, got {len(items)} images "
                         f"and {len(prompts)} prompts")


def adherence(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> float:
    """Fraction of all the attributes the prompts ask (colour, shape, and size / background when named)
    that the detector finds in the images: 1.0 when every image shows everything asked.

    Raises:
        ValueError, TypeError: as :func:`adherence_details`.
    """
    return pooled_adherence(adherence_details(images, prompts))
