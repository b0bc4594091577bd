"""Moving-shape clips: the video data the demo motion module learns (``tomesd train-demo-motion``).

A :class:`Clip` is a demo :class:`~tomesd.demo.shapes.Scene` whose shape glides in a straight line at a
constant speed from one place to another over the clip's frames, at one scale; its caption is the scene's
(the motion is left to the model, as AnimateDiff's captions leave it). Positions are fractions of the room
the shape has to move in, so one clip draws alike at any image size and frame count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from .shapes import SIZES, Scene, check_scene, check_size, paint, random_scene

__all__ = ["MIN_TRAVEL", "Clip", "draw_clip", "random_clip", "shape_boxes"]

#: Shortest distance, as a fraction of the room to move in (along x and y together), a clip's shape travels.
MIN_TRAVEL = 0.5


@dataclass(frozen=True)
class Clip:
    """A scene in motion: ``scale`` in [0, 1] picks the side within the size word's range; ``start`` and
    ``end`` are the shape's (x, y) places in [0, 1]^2 at the first and the last frame; ``phase`` fixes the
    textures' phase (a textured scene's patterns stay put while the shape moves)."""

    scene: Scene
    scale: float
    start: tuple[float, float]
    end: tuple[float, float]
    phase: int = 0

    @property
    def caption(self) -> str:
        """The prompt of the clip: its scene's caption."""
        return self.scene.caption


def random_clip(rng: random.Random, split: str = "train", textures: bool = False) -> Clip:
    """A clip of a scene of ``split`` (as :func:`~tomesd.demo.shapes.random_scene`, full or partial captions)
    moving at least :data:`MIN_TRAVEL` of its room."""
    scene = random_scene(rng, split, textures=textures)
    scale = rng.random()
    while True:
        start, end = (rng.random(), rng.random()), (rng.random(), rng.random())
        if ((end[0] - start[0]) ** 2 + (end[1] - start[1]) ** 2) ** 0.5 >= MIN_TRAVEL:
            return Clip(scene, scale, start, end, rng.randrange(2**31))


def shape_boxes(clip: Clip, size: int, frames: int) -> list[tuple[int, int, int, int]]:
    """The shape's box (x0, y0, x1, y1, inclusive pixels) in each of ``frames`` frames of ``size`` pixels:
    one side throughout, the corner moving linearly from ``start`` to ``end``.

    Raises:
        ValueError: ``size`` below 16 or ``frames`` below 2.
    """
    check_size(size)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    low, high = SIZES[clip.scene.size]
    side = round(size * (low + clip.scale * (high - low)))
    margin = max(1, size // 16)
    room = size - 2 * margin - side
    boxes = []
    for index in range(frames):
        t = index / (frames - 1)
        x = margin + round(room * (clip.start[0] + t * (clip.end[0] - clip.start[0])))
        y = margin + round(room * (clip.start[1] + t * (clip.end[1] - clip.start[1])))
        boxes.append((x, y, x + side - 1, y + side - 1))
    return boxes


def draw_clip(clip: Clip, size: int, frames: int) -> list[Image.Image]:
    """Render ``clip`` as ``frames`` RGB images of ``size`` x ``size`` pixels.

    Raises:
        ValueError: as :func:`shape_boxes`, or the scene is not drawable (:func:`~tomesd.demo.shapes.check_scene`).
    """
    check_scene(clip.scene)
    return [paint(clip.scene, size, box, random.Random(clip.phase)) for box in shape_boxes(clip, size, frames)]
