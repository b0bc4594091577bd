"""The deterministic adherence detector: which colours, shape, size, textures and background an image shows.

It reads an image the way the generator in :mod:`tomesd.demo.shapes` draws one:

* the background is what the border shows: every pixel whose colour is near a colour common on the
  border belongs to it (so striped, dotted and gradient backgrounds are background as a whole);
* the object is the largest connected region of the other pixels, with its holes filled; an object that
  covers little of its filled region is an outline. Its shape follows from how much of its bounding box
  the filled region covers (square ~1, circle ~0.79, triangle ~0.5) and its size from the box's side;
* colours are read by snapping pixels to the palette: the object's commonest one or two, the border's
  named colour (:func:`~tomesd.demo.shapes.partner` is the other colour of a textured background);
* a region's texture (:func:`read_texture`) is read from its colours projected on their main axis: too
  little contrast, or no periodic structure stronger than the region's slow shading, is ``plain``; a
  plane that explains the variation is a ``gradient``; otherwise the power spectrum, estimated from the
  region's masked autocorrelation (so the region's outline adds no frequencies of its own), says which
  directions carry the periodic energy: one axis (stripes across it), one diagonal (diagonal stripes),
  both axes (a dot lattice), both diagonals (checks). The spectrum's peak gives the period in pixels.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .shapes import COLOURS, SIZES, TWO_COLOURED, colour_words

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (P, 3)
_NAMES = list(COLOURS)
#: Fill ratio thresholds between triangle (0.5) / circle (pi/4) and circle / square (1).
_TRIANGLE_CIRCLE, _CIRCLE_SQUARE = 0.64, 0.89
#: Box side (fraction of the image) between the two size words' ranges.
_SMALL_LARGE = (SIZES["small"][1] + SIZES["large"][0]) / 2
#: An object smaller than this fraction of the image is taken as noise: nothing detected.
_MIN_AREA = 0.01
#: RGB distance within which a pixel counts as a border colour: half the closest distance between a
#: palette colour and a gradient background's colours (orange to white passes 69 from yellow).
_BACKGROUND_DISTANCE = 32.0
#: Share of the border one palette colour holds when the background is plain.
_PLAIN_BORDER = 0.9
#: Share of the border a colour bin must hold to count as a background colour.
_COMMON_ON_BORDER = 0.01
#: An object whose holes cover more than this share of its filled region is an outline.
_OUTLINE_HOLE = 0.08
#: A pixel this close (RGB distance) to a palette colour is a pure one, not a blend.
_PURE_DISTANCE = 45.0
#: A second object colour must cover this share of the object's pixels.
_SECOND_COLOUR_SHARE = 0.05
#: Texture reading: least contrast (std of the projected colours, RGB units) of a non-plain region; least
#: R^2 of a plane fit for a gradient; least peak / mean power in the band for periodic structure; the
#: band of periods considered (pixels); the lags of the autocorrelation; the partner direction's least
#: share of the strongest for a lattice (dots, checks) rather than stripes.
_MIN_CONTRAST, _MIN_GRADIENT_FIT, _MIN_PEAKINESS = 16.0, 0.8, 6.0
_PERIODS = (4.0, 14.0)
_MAX_LAG, _SPECTRUM_SIDE = 16, 128
_LATTICE_SHARE = 0.5
#: Least pixels of a region whose texture is read (fewer: ``None``).
_MIN_TEXTURE_PIXELS = 48


@dataclass(frozen=True)
class Texture:
    """A region's texture: one of the generator's names (``plain``, ``gradient``, ``horizontal striped``,
    ``vertical striped``, ``diagonal striped``, ``checked``, ``dotted``) and, for the periodic ones, the
    period in pixels (across stripes; along an axis for checks and dots) — None otherwise."""

    name: str
    period: float | None = None


@dataclass(frozen=True)
class Detection:
    """What the detector sees in one image; the object fields are None when no object was found.

    ``colour`` names the object's colours as captions do (``"red"``, ``"red and white"``); ``fill`` is the
    share of the bounding box its (hole-filled) region covers; ``texture`` is the object's texture name
    (``outlined`` for an outline), ``background_texture`` the background's; ``centre`` is the (x, y) pixel
    centre of the object's region."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    fill: float | None
    texture: str | None = None
    background_texture: str | None = None
    texture_period: float | None = None
    background_period: float | None = None
    centre: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, str | None]:
        """The attributes by name, as :func:`tomesd.demo.shapes.parse_caption` names them."""
        return {"background": self.background, "colour": self.colour, "shape": self.shape, "size": self.size,
                "texture": self.texture, "background_texture": self.background_texture}


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
    """Detect background colour and texture, object colours, texture, shape and size in one RGB image.

    Raises:
        TypeError, ValueError: as :func:`to_array`.
    """
    pixels = to_array(image).astype(np.float32)  # (H, W, 3)
    side = pixels.shape[0]
    border = _border_mask(pixels.shape[:2], max(1, side // 32))  # (H, W) bool
    labels = _palette_labels(pixels)  # (H, W)
    background = _background_name(labels[border])
    ground = _near_border_colours(_median3(pixels), border)  # (H, W) bool
    plain = np.bincount(labels[border], minlength=len(_NAMES))
    if plain.max() >= _PLAIN_BORDER * border.sum():  # a plain background: its colour, shaded, is still background
        ground |= labels == plain.argmax()
    region = _largest_region(~ground)  # (H, W) bool
    area = int(region.sum())
    ground_texture = read_texture(pixels, _erode(ground & ~_dilate(region, 2), 1))
    if area < _MIN_AREA * region.size:
        return Detection(background, None, None, None, None, None, ground_texture.name, None, ground_texture.period)
    filled = _fill_holes(region)
    rows, cols = np.nonzero(filled)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = float(filled.sum()) / float(height * width)
    shape = "square" if fill > _CIRCLE_SQUARE else "circle" if fill > _TRIANGLE_CIRCLE else "triangle"
    size = "large" if max(height, width) / side > _SMALL_LARGE else "small"
    if filled.sum() - area > _OUTLINE_HOLE * filled.sum():
        texture = Texture("outlined")
        first, second = _object_colours(pixels, region)
    else:
        inner = _erode(region, 2)
        texture = read_texture(pixels, inner)
        first, second = _object_colours(pixels, inner if inner.sum() >= _MIN_TEXTURE_PIXELS else region)
    colour = colour_words(texture.name, first, second) if texture.name in TWO_COLOURED and second else first
    return Detection(background, colour, shape, size, fill, texture.name, ground_texture.name,
                     texture.period, ground_texture.period, (float(cols.mean()), float(rows.mean())))


def read_texture(pixels: np.ndarray, mask: np.ndarray) -> Texture:
    """The texture of the pixels under ``mask``.

    Args:
        pixels: float or uint8 (H, W, 3) RGB image.
        mask: (H, W) bool, the region to read.

    Returns:
        A :class:`Texture`; ``Texture("plain")`` for a region of fewer than a few dozen pixels.
    """
    if mask.sum() < _MIN_TEXTURE_PIXELS:
        return Texture("plain")
    values = pixels[mask].astype(np.float64)  # (M, 3)
    centred = values - values.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]  # (3,) main colour axis
    projected = centred @ axis  # (M,)
    if projected.std() < _MIN_CONTRAST:
        return Texture("plain")
    rows, cols = np.nonzero(mask)
    design = np.stack([np.ones_like(rows), rows, cols], 1).astype(np.float64)  # (M, 3)
    residual = projected - design @ np.linalg.lstsq(design, projected, rcond=None)[0]
    if 1 - residual.var() / projected.var() > _MIN_GRADIENT_FIT:
        return Texture("gradient")
    signal = np.zeros(mask.shape)
    signal[mask] = projected
    power, kx, ky = _masked_power_spectrum(signal, mask)
    radius = np.hypot(kx, ky)
    band = (radius >= 1 / _PERIODS[1]) & (radius <= 1 / _PERIODS[0])
    slow = (radius > 0) & (radius < 1 / _PERIODS[1])  # shading, not a pattern
    if power[band].max() < max(_MIN_PEAKINESS * power[band].mean(), power[slow].max()):
        return Texture("plain")
    angle = np.degrees(np.arctan2(ky, kx)) % 180  # 0: varies along x; 90: along y
    sectors = [band & (np.abs((angle - centre + 90) % 180 - 90) < 22.5) for centre in (0, 45, 90, 135)]
    energy = np.array([power[s].sum() for s in sectors])  # (4,)
    top = int(energy.argmax())
    lattice = bool(energy[(top + 2) % 4] >= _LATTICE_SHARE * energy[top])
    names = (("vertical striped", "dotted"), ("diagonal striped", "checked"),
             ("horizontal striped", "dotted"), ("diagonal striped", "checked"))
    name = names[top][lattice]
    peak = np.where(sectors[top], power, -np.inf).argmax()
    period = 1 / radius.flat[peak]
    if name == "checked":
        period *= 2**0.5  # the fundamental runs along a diagonal; along an axis the period is sqrt(2) longer
    return Texture(name, float(period))


def _masked_power_spectrum(signal: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrum of a zero-mean ``signal`` known only under ``mask``: the Fourier transform of its
    autocorrelation, each lag averaged over the pixel pairs both inside the mask, Hann-windowed.

    Returns:
        ``(power, kx, ky)``, three (S, S) arrays: power and frequencies in cycles per pixel.
    """
    height, width = signal.shape
    shape = (height + _MAX_LAG + 1, width + _MAX_LAG + 1)  # enough padding for linear (not circular) lags
    weight = mask.astype(np.float64)
    products = np.fft.irfft2(np.abs(np.fft.rfft2(signal * weight, shape)) ** 2, shape)  # (H', W')
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(weight, shape)) ** 2, shape)
    lags = np.r_[0:_MAX_LAG + 1, -_MAX_LAG:0]
    products, pairs = products[np.ix_(lags, lags)], pairs[np.ix_(lags, lags)]  # (2L+1, 2L+1), lag 0 first
    correlation = np.where(pairs > 8, products / np.maximum(pairs, 1), 0.0)
    hann = np.cos(np.pi * lags / (2 * _MAX_LAG + 2)) ** 2  # 1 at lag 0, tapering to the longest lag
    correlation *= hann[:, None] * hann[None, :]
    full = np.zeros((_SPECTRUM_SIDE, _SPECTRUM_SIDE))
    full[np.ix_(lags % _SPECTRUM_SIDE, lags % _SPECTRUM_SIDE)] = correlation
    power = np.fft.fft2(full).real  # the autocorrelation is symmetric: its transform is real
    freqs = np.fft.fftfreq(_SPECTRUM_SIDE)
    ky, kx = np.meshgrid(freqs, freqs, indexing="ij")
    return power, kx, ky


def _object_colours(pixels: np.ndarray, mask: np.ndarray) -> tuple[str, str | None]:
    """The commonest palette colour under ``mask`` and the second commonest if it covers enough; pixels
    far from every palette colour (the blends at a blurred pattern's edges) are not counted, unless
    nothing else is there."""
    values = pixels[mask][None]  # (1, M, 3)
    distances = ((values[:, :, None, :] - _PALETTE) ** 2).sum(-1)[0]  # (M, P)
    labels, pure = distances.argmin(-1), distances.min(-1) <= _PURE_DISTANCE**2
    counts = np.bincount(labels[pure] if pure.sum() >= _MIN_TEXTURE_PIXELS else labels, minlength=len(_NAMES))
    order = np.argsort(-counts, kind="stable")
    second = _NAMES[order[1]] if counts[order[1]] >= _SECOND_COLOUR_SHARE * counts.sum() else None
    return _NAMES[order[0]], second


def _background_name(labels: np.ndarray) -> str:
    """The background's named colour from the border's palette labels: the commonest, except that the
    partner colour of a textured background (white; black for white) gives way to the other colour."""
    counts = np.bincount(labels, minlength=len(_NAMES))
    common = {_NAMES[i] for i in np.nonzero(counts >= 0.1 * counts.sum())[0]}
    if {"white", "black"} <= common:  # black backgrounds are plain: this is a textured white one
        return "white"
    others = [i for i in np.argsort(-counts, kind="stable") if _NAMES[i] != "white" and _NAMES[i] in common]
    return _NAMES[others[0]] if others else _NAMES[int(counts.argmax())]


def _near_border_colours(pixels: np.ndarray, border: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels within :data:`_BACKGROUND_DISTANCE` of a colour common on the border: colours
    binned 16 levels per channel, a bin counting if it holds 1 % of the border (a gradient's bins hold
    several), so that stray pixels, or a shape grazing the border, do not make their colour background."""
    bins, counts = np.unique((pixels[border] // 16).astype(np.int32), axis=0, return_counts=True)
    common = counts >= max(3, _COMMON_ON_BORDER * border.sum())
    centres = bins[common].astype(np.float32) * 16 + 7.5  # (K, 3)
    flat = pixels.reshape(-1, 3)
    nearest = np.full(flat.shape[0], np.inf, np.float32)
    for start in range(0, len(centres), 256):  # (N, 256) distances at a time
        block = centres[start:start + 256]
        distances = ((flat[:, None, :] - block[None]) ** 2).sum(-1).min(1)
        nearest = np.minimum(nearest, distances)
    return (nearest <= _BACKGROUND_DISTANCE**2).reshape(pixels.shape[:2])


def _median3(pixels: np.ndarray) -> np.ndarray:
    """Each channel's median over the 3 x 3 neighbourhood (edges replicated): noise off, 3-pixel lines kept."""
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    shifted = [padded[r:r + height, c:c + width] for r in range(3) for c in range(3)]
    return np.median(np.stack(shifted), axis=0)


def _border_mask(shape: tuple[int, int], width: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return mask


def _palette_labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of every pixel: (H, W, 3) -> (H, W) int."""
    distances = ((pixels[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)  # (H, W, P)
    return distances.argmin(-1)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow a boolean (H, W) mask by ``steps`` pixels (3 x 3 neighbourhood per step)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)
        out = np.zeros_like(out)
        for dr in range(3):
            for dc in range(3):
                out |= padded[dr:dr + mask.shape[0], dc:dc + mask.shape[1]]
    return out


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Shrink a boolean (H, W) mask by ``steps`` pixels (the image edge counts as outside)."""
    return ~_dilate(~mask, steps)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region of its complement that does not reach the image edge added to it."""
    outside = _border_mask(mask.shape, 1) & ~mask
    while True:
        grown = outside | (np.pad(outside, 1)[2:, 1:-1] | np.pad(outside, 1)[:-2, 1:-1]
                           | np.pad(outside, 1)[1:-1, 2:] | np.pad(outside, 1)[1:-1, :-2])
        grown &= ~mask
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


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
