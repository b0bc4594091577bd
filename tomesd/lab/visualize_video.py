"""Video merge visualisation: which tubelets ended up in the same token, frame by frame, in one strip.

A transformers video model patched with ``trace_source=True`` (see :mod:`tomesd.patch.transformers`)
reports, for every output token, the input tubelets it holds. Here each merged group gets one colour in
every frame it reaches, so a group that merged the same place across frames shows as the same colour
in neighbouring frames of the strip. Groups that span several frames are painted strongly, groups
inside one frame lightly; unmerged tubelets stay unpainted. The clip is procedurally drawn (moving
shapes over a gradient), as no registry package ships a real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .visualize import group_labels

__all__ = ["draw_video_merges", "matching_comparison", "moving_shapes_clip", "video_group_labels", "visualize_video_merges"]

_GAP = 4  # pixels between frames of the strip


def moving_shapes_clip(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(frames, size, size, 3) uint8: a still gradient with a disc and a square gliding across it.

    Drawn with a dedicated generator seeded by ``seed`` (the global RNGs are untouched); static
    background and slow shapes give the temporal redundancy space-time merging exploits.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    background = start + (end - start) * ((xx + yy) / 2)[..., None]  # (size, size, 3)
    shapes = [(rng.uniform(0, 255, 3), rng.uniform(0.2, 0.8, 2), rng.uniform(-0.3, 0.3, 2), kind)
              for kind in ("disc", "square")]
    clip = []
    for frame in range(frames):
        image = background.copy()
        for colour, (cy, cx), (vy, vx), kind in shapes:
            y, x = cy + vy * frame / frames, cx + vx * frame / frames
            if kind == "disc":
                inside = (yy - y) ** 2 + (xx - x) ** 2 < 0.15**2
            else:
                inside = (abs(yy - y) < 0.12) & (abs(xx - x) < 0.12)
            image[inside] = colour
        clip.append(np.clip(image + rng.normal(0, 4, image.shape), 0, 255))
    return np.stack(clip).astype(np.uint8)


def video_group_labels(source: Tensor, num_prefix_tokens: int, grid: tuple[int, int, int]) -> Tensor:
    """The output token each tubelet was merged into.

    Args:
        source: (N, N0) 0/1 membership of one sample (a :func:`tomesd.patch.transformers.merge_sources`
            row), prefix tokens first, then tubelets frame by frame.
        num_prefix_tokens: class tokens leading the input sequence.
        grid: (frames, rows, cols) of tubelets.

    Returns:
        (frames, rows, cols) long tensor of group indices.

    Raises:
        ValueError: the grid does not match the source, or a tubelet is in no token.
    """
    frames, rows, cols = grid
    return group_labels(source, num_prefix_tokens, (frames * rows, cols)).view(frames, rows, cols)


def draw_video_merges(clip: np.ndarray, labels: Tensor, alpha: float = 0.65, seed: int = 0) -> Image.Image:
    """A strip of the clip's tubelet frames with the merge groups painted over them.

    Args:
        clip: (F, H, W, 3) uint8 frames; tubelet frame t shows input frame ``t * F // frames``.
        labels: (frames, rows, cols) group per tubelet, e.g. from :func:`video_group_labels`.
        alpha: opacity of groups spanning several frames (groups inside one frame get a third of it).
        seed: picks the colours (a dedicated generator).

    Returns:
        One RGB image: the frames side by side, left to right in time, each titled with its index.

    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    frames = labels.shape[0]
    per_frame = labels.view(frames, -1).numpy()  # (frames, rows * cols)
    group_size = np.bincount(per_frame.flatten())
    present = np.zeros((group_size.size, frames), dtype=bool)
    present[per_frame, np.arange(frames)[:, None]] = True
    frames_per_group = present.sum(1)  # how many frames each group reaches
    palette = np.random.default_rng(seed).uniform(40, 255, size=(group_size.size, 3))
    pictures = [_paint_frame(clip[t * clip.shape[0] // frames], labels[t].numpy(), group_size, frames_per_group,
                             palette, alpha) for t in range(frames)]
    height, width = pictures[0].shape[:2]
    strip = Image.new("RGB", (frames * width + (frames - 1) * _GAP, height + 14), "white")
    draw = ImageDraw.Draw(strip)
    for t, picture in enumerate(pictures):
        strip.paste(Image.fromarray(picture), (t * (width + _GAP), 14))
        draw.text((t * (width + _GAP) + 2, 1), f"frame {t}", fill="black")
    return strip


def _paint_frame(frame: np.ndarray, labels: np.ndarray, group_size: np.ndarray, frames_per_group: np.ndarray,
                 palette: np.ndarray, alpha: float) -> np.ndarray:
    """One (H, W, 3) uint8 frame with its tubelets' groups painted and outlined."""
    picture = frame.astype(np.float32)
    height, width = picture.shape[:2]
    rows = (np.arange(height) * labels.shape[0]) // height
    cols = (np.arange(width) * labels.shape[1]) // width
    pixel_labels = labels[rows[:, None], cols[None, :]]  # (H, W)
    opacity = np.where(frames_per_group[pixel_labels] > 1, alpha, alpha / 3)
    opacity = np.where(group_size[pixel_labels] > 1, opacity, 0.0)[..., None]  # (H, W, 1)
    painted = (1 - opacity) * picture + opacity * palette[pixel_labels]
    edges = np.zeros(pixel_labels.shape, dtype=bool)
    edges[1:] |= pixel_labels[1:] != pixel_labels[:-1]
    edges[:, 1:] |= pixel_labels[:, 1:] != pixel_labels[:, :-1]
    painted[edges] = 255.0
    return painted.clip(0, 255).astype(np.uint8)


def visualize_video_merges(model: torch.nn.Module, clip: np.ndarray, r: object = 8, matching: str = "spacetime",
                           path: str | Path | None = None) -> Image.Image:
    """Patch a transformers video model with source tracing, run it on one clip and draw its merges.

    The model is left patched as it was before (or unpatched) afterwards.

    Args:
        model: a ``VideoMAEModel`` / ``VivitModel`` (or their classifiers); ``clip`` must have its
            configured frames and size. Pixels are scaled to [0, 1] and normalised with ImageNet statistics.
        clip: (F, H, W, 3) uint8 frames, e.g. from :func:`moving_shapes_clip`.
        r: the merge schedule (see :func:`tomesd.patch.timm.parse_r`).
        matching: ``"spacetime"`` or ``"global"`` (see :class:`tomesd.patch.transformers.TransformersOptions`).
        path: if given, the PNG is written there.

    Returns:
        The frame strip with merged groups painted over it.
    """
    import tomesd
    from tomesd.patch.transformers import merge_sources, protected_tokens, token_grid

    pixels = torch.from_numpy(clip.astype(np.float32) / 255).permute(0, 3, 1, 2)  # (F, 3, H, W)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = ((pixels - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)  # (1, F, 3, H, W)
    previous = model._tomesd.options if tomesd.is_patched(model) else None
    tomesd.apply_patch(model, r=r, matching=matching, trace_source=True)
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
        source, prefix, grid = merge_sources(model), protected_tokens(model), token_grid(model)
    finally:
        tomesd.remove_patch(model)
        if previous is not None:
            tomesd.apply_patch(model, **previous)
    num_tokens = prefix + grid[0] * grid[1] * grid[2]
    source = torch.eye(num_tokens) if source is None else source[0]
    drawn = draw_video_merges(clip, video_group_labels(source, prefix, grid))
    if path is not None:
        drawn.save(path)
    return drawn


def matching_comparison(model: torch.nn.Module, clip: np.ndarray, r: object = 40,
                        matchings: tuple[str, ...] = ("global", "spacetime")) -> Image.Image:
    """One labelled strip of :func:`visualize_video_merges` per matching, stacked top to bottom.

    Args:
        model: an unpatched (or patched: restored afterwards) transformers video model such as ``VideoMAEModel``.
        clip: (F, H, W, 3) uint8 frames.
        r: the merge schedule.
        matchings: the matchings to compare, one strip each.

    Returns:
        The figure, with each strip's matching written at its left.
    """
    strips = [visualize_video_merges(model, clip, r=r, matching=matching) for matching in matchings]
    gap, margin = 8, 70
    figure = Image.new("RGB", (strips[0].width + margin, len(strips) * (strips[0].height + gap) - gap), "white")
    draw = ImageDraw.Draw(figure)
    for index, (matching, strip) in enumerate(zip(matchings, strips)):
        top = index * (strip.height + gap)
        figure.paste(strip, (margin, top))
        draw.text((2, top + strip.height // 2), matching, fill="black")
    return figure
