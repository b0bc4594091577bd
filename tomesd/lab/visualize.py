"""Merge visualisation: which input patches ended up in the same token, drawn over the image.

Source tracing (``tomesd.apply_patch(vit, r=..., trace_source=True)``, then
:func:`tomesd.patch.timm.merge_sources`) gives, for every output token, the input tokens it holds. Here
that becomes a label per patch, and each merged group is painted in one colour over the input image
with its outline drawn, as in the ToMe paper's figures. Patches that were never merged stay unpainted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["draw_merge_groups", "drawn_images", "group_labels", "merge_strip", "visualize_timm_merges"]


def group_labels(source: Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> Tensor:
    """The output token each image patch was merged into.

    Args:
        source: (N, N0) 0/1 membership of N output tokens in N0 input tokens (one image of
            :func:`tomesd.patch.timm.merge_sources`), prefix tokens first.
        num_prefix_tokens: class / distillation / register tokens leading the input sequence.
        grid: (rows, cols) of patches; rows * cols == N0 - num_prefix_tokens.

    Returns:
        (rows, cols) long tensor: the index of the output token holding each patch.

    Raises:
        ValueError: the grid does not match the number of patches, or a patch is in no token.
    """
    patches = source[:, num_prefix_tokens:]  # (N, rows*cols)
    if grid[0] * grid[1] != patches.shape[1]:
        raise ValueError(f"a {grid[0]}x{grid[1]} grid does not hold the {patches.shape[1]} patches of the source")
    if not torch.equal(patches.sum(0), torch.ones_like(patches[0])):
        raise ValueError("every patch must belong to exactly one output token (is this a merge source?)")
    return patches.argmax(0).view(grid)


def draw_merge_groups(image: Image.Image | np.ndarray, labels: Tensor, alpha: float = 0.6,
                      seed: int = 0) -> Image.Image:
    """Paint each group of two or more patches in its own colour over ``image``, with outlines.

    Args:
        image: the input picture (PIL image or (H, W, 3) uint8 array), at the model's input resolution
            or any size (the patch grid is stretched over it).
        labels: (rows, cols) group index per patch, e.g. from :func:`group_labels`.
        alpha: opacity of the colour over the image, in [0, 1].
        seed: picks the colours (a dedicated generator; the global RNG is untouched).

    Returns:
        A new RGB image of the size of ``image``.

    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    picture = np.asarray(Image.fromarray(np.asarray(image)).convert("RGB"), dtype=np.float32)  # (H, W, 3)
    height, width = picture.shape[:2]
    rows = (np.arange(height) * labels.shape[0]) // height
    cols = (np.arange(width) * labels.shape[1]) // width
    pixel_labels = labels.numpy()[rows[:, None], cols[None, :]]  # (H, W)
    group_size = np.bincount(labels.flatten().numpy())  # patches per group
    palette = np.random.default_rng(seed).uniform(40, 255, size=(group_size.size, 3))
    merged = group_size[pixel_labels] > 1  # (H, W)
    painted = np.where(merged[..., None], (1 - alpha) * picture + alpha * palette[pixel_labels], picture)
    edges = np.zeros_like(merged)
    edges[1:] |= pixel_labels[1:] != pixel_labels[:-1]
    edges[:, 1:] |= pixel_labels[:, 1:] != pixel_labels[:, :-1]
    painted[edges] = 255.0
    return Image.fromarray(painted.clip(0, 255).astype(np.uint8))


def visualize_timm_merges(model: torch.nn.Module, image: Image.Image | np.ndarray, r: object = 13,
                          path: str | Path | None = None) -> Image.Image:
    """Patch a timm ViT with source tracing, run it on one image and draw its merge groups.

    The model is left patched as it was before (or unpatched) afterwards.

    Args:
        model: a timm ``VisionTransformer``; the image is resized to its input size and normalised with
            ImageNet statistics.
        image: the picture to run.
        r: the merge schedule (see :func:`tomesd.patch.timm.parse_r`).
        path: if given, the PNG is written there.

    Returns:
        The picture with merged groups painted over it.
    """
    import tomesd
    from tomesd.patch.timm import merge_sources

    height, width = model.patch_embed.img_size
    picture = Image.fromarray(np.asarray(image)).convert("RGB").resize((width, height), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = ((pixels - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)  # (1, 3, H, W)
    previous = model._tomesd.options if tomesd.is_patched(model) else None
    tomesd.apply_patch(model, r=r, trace_source=True)
    try:
        with torch.no_grad():
            model.forward_features(pixels)
        source = merge_sources(model)
    finally:
        tomesd.remove_patch(model)
        if previous is not None:
            tomesd.apply_patch(model, **previous)
    num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    source = torch.eye(num_tokens) if source is None else source[0]
    drawn = draw_merge_groups(picture, group_labels(source, model.num_prefix_tokens, model.patch_embed.grid_size))
    if path is not None:
        drawn.save(path)
    return drawn


def merge_strip(model: torch.nn.Module, image: Image.Image | np.ndarray, schedules: list[object],
                gap: int = 8) -> Image.Image:
    """The input picture, then its merge groups under each of ``schedules`` (see :func:`visualize_timm_merges`),
    side by side on white with ``gap`` pixels between panels.

    Raises:
        ValueError: no schedule.
    """
    if not schedules:
        raise ValueError("no merge schedule to draw: give at least one r")
    height, width = model.patch_embed.img_size
    picture = Image.fromarray(np.asarray(image)).convert("RGB").resize((width, height), Image.BICUBIC)
    panels = [picture] + [visualize_timm_merges(model, picture, r=r) for r in schedules]
    strip = Image.new("RGB", (sum(panel.width for panel in panels) + gap * (len(panels) - 1), height), "white")
    for index, panel in enumerate(panels):
        strip.paste(panel, (index * (panel.width + gap), 0))
    return strip


def drawn_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 pictures with structure to merge: a colour gradient with flat
    rectangles and discs and a little noise, drawn with a dedicated generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = start + (end - start) * ((xx + yy) / 2)[..., None]  # (size, size, 3)
        for _ in range(rng.integers(3, 8)):
            colour = rng.uniform(0, 255, 3)
            cy, cx, radius = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            if rng.random() < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            else:
                inside = (abs(yy - cy) < radius) & (abs(xx - cx) < radius * rng.uniform(0.5, 2))
            image[inside] = colour
        images.append(np.clip(image + rng.normal(0, 6, image.shape), 0, 255))
    return np.stack(images).astype(np.uint8)
