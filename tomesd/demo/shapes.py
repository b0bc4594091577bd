"""The procedural, captioned image set the demo model learns: one plain shape on a plain background.

A :class:`Scene` is drawn from four attributes (size, colour, shape, background colour) and described by a
caption such as ``"a small red circle on a yellow background"``. Captions may leave out the size or the
background (``"a red circle"``); the image still has one, drawn at random. Scenes whose
(colour, shape, background) triple is in :data:`HELD_OUT` never appear in training, so adherence measured
on them shows the model composes words rather than recalls pictures.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from itertools import product

from PIL import Image, ImageDraw

#: Palette of the generator, in RGB; the detector matches pixels against it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (35, 75, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Side of the shape's bounding box as a fraction of the image side, per size word.
SIZES: dict[str, tuple[float, float]] = {"small": (0.25, 0.36), "large": (0.55, 0.75)}


def _held_out(colour: str, shape: str, background: str) -> bool:
    """One triple in ten, chosen by a stable hash, is kept for evaluation only."""
    return zlib.crc32(f"{colour}|{shape}|{background}".encode()) % 10 == 0


#: (colour, shape, background) triples never shown in training.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    t for t in product(COLOURS, SHAPES, COLOURS) if t[0] != t[2] and _held_out(*t)
)


@dataclass(frozen=True)
class Scene:
    """One picture's content. ``show_size``/``show_background`` say whether the caption names them."""

    size: str
    colour: str
    shape: str
    background: str
    show_size: bool = True
    show_background: bool = True

    @property
    def caption(self) -> str:
        """The text prompt describing this scene, e.g. ``"a small red circle on a yellow background"``."""
        words = ["a"] + ([self.size] if self.show_size else []) + [self.colour, self.shape]
        if self.show_background:
            words += ["on", "a", self.background, "background"]
        return " ".join(words)

    @property
    def asked(self) -> dict[str, str]:
        """The attributes the caption asks for, by name (``size``, ``colour``, ``shape``, ``background``)."""
        asked = {"colour": self.colour, "shape": self.shape}
        if self.show_size:
            asked["size"] = self.size
        if self.show_background:
            asked["background"] = self.background
        return asked


def vocabulary() -> list[str]:
    """Every word a caption can contain, sorted."""
    return sorted({"a", "on", "background", *COLOURS, *SHAPES, *SIZES})


def random_scene(rng: random.Random, split: str = "train", partial_captions: bool = True) -> Scene:
    """Draw a scene whose triple belongs to ``split``.

    Args:
        rng: source of randomness (the caller's seeded ``random.Random``).
        split: ``"train"`` (triples not in :data:`HELD_OUT`), ``"held_out"`` (only those) or ``"any"``.
        partial_captions: if True, the caption omits the size (30 %) or the background (30 %) at random.

    Raises:
        ValueError: ``split`` is not one of the three names.
    """
    if split not in ("train", "held_out", "any"):
        raise ValueError(f"split must be 'train', 'held_out' or 'any', got {split!r}")
    while True:
        colour, background = rng.sample(list(COLOURS), 2)
        shape = rng.choice(SHAPES)
        held = (colour, shape, background) in HELD_OUT
        if split == "any" or held == (split == "held_out"):
            break
    return Scene(
        size=rng.choice(list(SIZES)),
        colour=colour,
        shape=shape,
        background=background,
        show_size=not (partial_captions and rng.random() < 0.3),
        show_background=not (partial_captions and rng.random() < 0.3),
    )


def evaluation_captions(count: int, split: str = "held_out", seed: int = 0) -> list[str]:
    """``count`` full captions (size, colour, shape and background named) of ``split``, fixed by ``seed``:
    the prompts on which adherence is measured."""
    rng = random.Random(f"evaluate/{split}/{seed}")
    return [random_scene(rng, split, partial_captions=False).caption for _ in range(count)]


def draw(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB image, at a random scale (within its size word's range)
    and position (the shape always wholly inside).

    Raises:
        ValueError: ``size`` is below 16 pixels, or the scene names an unknown colour, shape or size.
    """
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {size}")
    _check_scene(scene)
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    low, high = SIZES[scene.size]
    side = round(size * rng.uniform(low, high))
    margin = max(1, size // 16)
    x0 = rng.randint(margin, size - margin - side)
    y0 = rng.randint(margin, size - margin - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    fill = COLOURS[scene.colour]
    pen = ImageDraw.Draw(image)
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x0 + (side - 1) / 2, y0), (box[2], box[3]), (x0, box[3])], fill=fill)
    return image


def _check_scene(scene: Scene) -> None:
    for name, value, accepted in (
        ("colour", scene.colour, COLOURS),
        ("background", scene.background, COLOURS),
        ("shape", scene.shape, SHAPES),
        ("size", scene.size, SIZES),
    ):
        if value not in accepted:
            raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a caption of this grammar asks for (the inverse of :attr:`Scene.caption`).

    ``"a small red circle on a yellow background"`` gives
    ``{"size": "small", "colour": "red", "shape": "circle", "background": "yellow"}``; ``"a red circle"``
    gives only colour and shape. Case and surrounding spaces are ignored.

    Raises:
        ValueError: the caption does not follow the grammar ``a [size] colour shape [on a colour background]``.
    """
    words = caption.lower().split()
    asked: dict[str, str] = {}
    rest = words[1:] if words[:1] == ["a"] else None
    if rest and rest[0] in SIZES:
        asked["size"], rest = rest[0], rest[1:]
    if rest and len(rest) >= 2 and rest[0] in COLOURS and rest[1] in SHAPES:
        asked["colour"], asked["shape"], rest = rest[0], rest[1], rest[2:]
        if len(rest) == 4 and rest[:2] == ["on", "a"] and rest[2] in COLOURS and rest[3] == "background":
            asked["background"], rest = rest[2], []
        if not rest:
            return asked
    raise ValueError(
        f"cannot read caption {caption!r}: expected 'a [size] <colour> <shape> [on a <colour> background]' "
        f"with size in {list(SIZES)}, colour in {list(COLOURS)}, shape in {list(SHAPES)}"
    )
