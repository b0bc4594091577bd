"""The deterministic adherence detector: which colour, shape, size and background an image shows.

It reads an image the way the generator in :mod:`tomesd.demo.shapes` draws one: every pixel is snapped
to the nearest palette colour; the background is the commonest colour of the border; the object is the
largest connected region of the commonest other colour. Its shape follows from how much of its bounding
box it fills (square ~1, circle ~0.79, triangle ~0.5) and its size from the box's side.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .shapes import COLOURS, SIZES

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (P, 3)
_NAMES = list(COLOURS)
#: Fill ratio thresholds between triangle (0.5) / circle (pi/4) and circle / square (1).
_TRIANGLE_CIRCLE, _CIRCLE_SQUARE = 0.64, 0.89
#: Box side (fraction of the image) between the two size words' ranges.
_SMALL_LARGE = (SIZES["small"][1] + SIZES["large"][0]) / 2
#: An object smaller than this fraction of the image is taken as noise: nothing detected.
_MIN_AREA = 0.01


@dataclass(frozen=True)
class Detection:
    """What the detector sees in one image; the object fields are None when no object was found."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    fill: float | None

    def as_dict(self) -> dict[str, str | None]:
        """The four attributes by name, as :func:`tomesd.demo.shapes.parse_caption` names them."""
        return {"background": self.background, "colour": self.colour, "shape": self.shape, "size": self.size}


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB image as a uint8 (H, W, 3) array.

    Raises:
        TypeError: ``image`` is neither a PIL image nor a numpy array.
        ValueError: the array is not uint8 of shape (H, W, 3).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL.Image or a uint8 (H, W, 3) numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} of shape {image.shape}")
    return image


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Detect background colour, object colour, shape and size in one RGB image."""
    labels = _palette_labels(to_array(image))  # (H, W)
    side = labels.shape[0]
    border = max(1, side // 32)
    frame = np.concatenate([labels[:border].ravel(), labels[-border:].ravel(),
                            labels[:, :border].ravel(), labels[:, -border:].ravel()])
    background = int(np.bincount(frame, minlength=len(_NAMES)).argmax())
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))
    counts[background] = 0
    colour = int(counts.argmax())
    region = _largest_region(labels == colour)  # (H, W) bool
    area = int(region.sum())
    if area < _MIN_AREA * labels.size:
        return Detection(_NAMES[background], None, None, None, None)
    rows, cols = np.nonzero(region)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = area / float(height * width)
    shape = "square" if fill > _CIRCLE_SQUARE else "circle" if fill > _TRIANGLE_CIRCLE else "triangle"
    size = "large" if max(height, width) / side > _SMALL_LARGE else "small"
    return Detection(_NAMES[background], _NAMES[colour], shape, size, fill)


def _palette_labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of every pixel: (H, W, 3) uint8 -> (H, W) int."""
    distances = ((pixels[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)  # (H, W, P)
    return distances.argmin(-1)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean (H, W) mask, as a mask of the same shape."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [], deque([start])
        while queue:
            r, c = queue.popleft()
            region.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        out[tuple(np.array(best).T)] = True
    return out
