"""The procedural, captioned image set the demo model learns: one shape on a background, plain or textured.

A :class:`Scene` is drawn from its attributes (size, colour, shape, background colour, and the textures of
the shape and of the background) and described by a caption such as ``"a small red circle on a yellow
background"`` or ``"a red and white vertical striped circle on a blue dotted background"``. Captions may
leave out the size or the background (``"a red circle"``); the image still has one, drawn at random. A
caption that names no texture describes a plain (single-colour) shape.

Textures have fixed periods in pixels (:data:`PERIODS`), whatever the image size, so images of 64 and 128
pixels show the same stripes:

* shape fills (:data:`FILL_TEXTURES`): ``plain``; ``horizontal striped`` / ``vertical striped`` /
  ``diagonal striped``, ``checked`` and ``dotted`` in two named colours (``"a red and white checked
  square"``; dotted: dots of the second colour on the first); ``outlined``: a thin outline of the colour
  with the background showing inside;
* backgrounds (:data:`BACKGROUND_TEXTURES`): ``plain``, the three striped, ``checked``, ``dotted`` and
  ``gradient`` (top to bottom), each pairing the named colour with :func:`partner` (white; black for a
  white background). A black background is always plain. The shape's colours never occur in its
  background.

Scenes whose (colour, shape, background) triple is in :data:`HELD_OUT`, or whose (fill texture, shape,
background texture) triple is in :data:`HELD_OUT_TEXTURES`, never appear in training, so adherence
measured on them shows the model composes words rather than recalls pictures.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
STRIPES: tuple[str, ...] = ("horizontal striped", "vertical striped", "diagonal striped")
#: Textures of a shape. Those in :data:`TWO_COLOURED` name a second colour ("red and white striped").
FILL_TEXTURES: tuple[str, ...] = ("plain", *STRIPES, "checked", "dotted", "outlined")
BACKGROUND_TEXTURES: tuple[str, ...] = ("plain", *STRIPES, "checked", "dotted", "gradient")
TWO_COLOURED: frozenset[str] = frozenset({*STRIPES, "checked", "dotted"})
#: Texture periods in pixels: stripes (across the stripes), check cell side x 2, dot spacing.
PERIODS: dict[str, float] = {
    "horizontal striped": 8.0, "vertical striped": 8.0, "diagonal striped": 12 / 2**0.5,
    "checked": 12.0, "dotted": 8.0,
}
#: Dot radius and outline width in pixels.
DOT_RADIUS, OUTLINE_WIDTH = 2.0, 3
#: Share of training scenes with a textured shape / a textured background.
TEXTURED_FILL_SHARE, TEXTURED_BACKGROUND_SHARE = 0.6, 0.5


def partner(background: str) -> str:
    """The second colour of a textured background: white, or black for a white background."""
    return "black" if background == "white" else "white"


def _held_out(*words: str) -> bool:
    """One combination in ten, chosen by a stable hash, is kept for evaluation only."""
    return zlib.crc32("|".join(words).encode()) % 10 == 0


#: (colour, shape, background) triples never shown in training.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    t for t in product(COLOURS, SHAPES, COLOURS) if t[0] != t[2] and _held_out(*t)
)
#: (fill texture, shape, background texture) triples never shown in training (plain on plain never is).
HELD_OUT_TEXTURES: frozenset[tuple[str, str, str]] = frozenset(
    t for t in product(FILL_TEXTURES, SHAPES, BACKGROUND_TEXTURES)
    if (t[0], t[2]) != ("plain", "plain") and _held_out("texture", *t)
)


@dataclass(frozen=True)
class Scene:
    """One picture's content. ``show_size``/``show_background`` say whether the caption names them;
    ``colour2`` is the second colour of a two-coloured fill (None otherwise)."""

    size: str
    colour: str
    shape: str
    background: str
    show_size: bool = True
    show_background: bool = True
    texture: str = "plain"
    colour2: str | None = None
    background_texture: str = "plain"

    @property
    def colours(self) -> str:
        """The fill's colour words as the caption and the detector give them, e.g. ``"red and white"``."""
        return colour_words(self.texture, self.colour, self.colour2)

    @property
    def caption(self) -> str:
        """The text prompt describing this scene, e.g. ``"a small red circle on a yellow background"``."""
        fill = [] if self.texture == "plain" else [self.texture]
        words = ["a"] + ([self.size] if self.show_size else []) + [self.colours, *fill, self.shape]
        if self.show_background:
            ground = [] if self.background_texture == "plain" else [self.background_texture]
            words += ["on", "a", self.background, *ground, "background"]
        return " ".join(words)

    @property
    def asked(self) -> dict[str, str]:
        """The attributes the caption asks for, by name (``size``, ``colour``, ``shape``, ``background``,
        and ``texture`` / ``background_texture`` when the caption names one)."""
        asked = {"colour": self.colours, "shape": self.shape}
        if self.texture != "plain":
            asked["texture"] = self.texture
        if self.show_size:
            asked["size"] = self.size
        if self.show_background:
            asked["background"] = self.background
            if self.background_texture != "plain":
                asked["background_texture"] = self.background_texture
        return asked

    @property
    def held_out(self) -> bool:
        """Whether this scene's colour or texture combination is kept out of training."""
        return ((self.colour, self.shape, self.background) in HELD_OUT
                or (self.texture, self.shape, self.background_texture) in HELD_OUT_TEXTURES)


def colour_words(texture: str, colour: str, colour2: str | None) -> str:
    """How a fill's colours are named: ``"red"``; two-coloured ``"red and white"``. Stripes and checks
    have no first colour, so their pair is in palette order (``"white and red"`` is read as ``"red and
    white"``); dotted keeps its order (dots of the second colour on the first)."""
    if texture not in TWO_COLOURED:
        return colour
    if colour2 is None:
        raise ValueError(f"a {texture} fill needs a second colour")
    if texture != "dotted":
        colour, colour2 = sorted((colour, colour2), key=list(COLOURS).index)
    return f"{colour} and {colour2}"


def vocabulary(textures: bool = True) -> list[str]:
    """Every word a caption can contain, sorted (``textures=False``: the plain-shapes grammar's words)."""
    words = {"a", "on", "background", *COLOURS, *SHAPES, *SIZES}
    if textures:
        words |= {"and"} | {w for t in FILL_TEXTURES + BACKGROUND_TEXTURES for w in t.split()} - {"plain"}
    return sorted(words)


def random_scene(rng: random.Random, split: str = "train", partial_captions: bool = True,
                 textures: bool = False) -> Scene:
    """Draw a scene belonging to ``split``.

    Args:
        rng: source of randomness (the caller's seeded ``random.Random``).
        split: ``"train"`` (scenes not held out, see :attr:`Scene.held_out`), ``"held_out"`` (only those)
            or ``"any"``.
        partial_captions: if True, the caption omits the size (30 %) or the background (30 %) at random.
        textures: if False, plain shapes on plain backgrounds only (drawn exactly as before textures
            existed); if True, textured fills and backgrounds at :data:`TEXTURED_FILL_SHARE` and
            :data:`TEXTURED_BACKGROUND_SHARE`.

    Raises:
        ValueError: ``split`` is not one of the three names.
    """
    if split not in ("train", "held_out", "any"):
        raise ValueError(f"split must be 'train', 'held_out' or 'any', got {split!r}")
    while True:
        scene = _textured_scene(rng) if textures else _plain_scene(rng)
        if split == "any" or scene.held_out == (split == "held_out"):
            break
    return Scene(
        size=rng.choice(list(SIZES)),
        colour=scene.colour,
        shape=scene.shape,
        background=scene.background,
        show_size=not (partial_captions and rng.random() < 0.3),
        show_background=not (partial_captions and rng.random() < 0.3),
        texture=scene.texture,
        colour2=scene.colour2,
        background_texture=scene.background_texture,
    )


def _plain_scene(rng: random.Random) -> Scene:
    colour, background = rng.sample(list(COLOURS), 2)
    return Scene("small", colour, rng.choice(SHAPES), background)


def _textured_scene(rng: random.Random) -> Scene:
    background = rng.choice(list(COLOURS))
    ground = "plain"
    if background != "black" and rng.random() < TEXTURED_BACKGROUND_SHARE:
        ground = rng.choice(BACKGROUND_TEXTURES[1:])
    texture = rng.choice(FILL_TEXTURES[1:]) if rng.random() < TEXTURED_FILL_SHARE else "plain"
    taken = {background} | ({partner(background)} if ground != "plain" else set())
    free = [c for c in COLOURS if c not in taken]
    colour, colour2 = rng.sample(free, 2)
    return Scene("small", colour, rng.choice(SHAPES), background, texture=texture,
                 colour2=colour2 if texture in TWO_COLOURED else None, background_texture=ground)


def evaluation_captions(count: int, split: str = "held_out", seed: int = 0, textures: bool = False) -> list[str]:
    """``count`` full captions (size, colour, shape and background named) of ``split``, fixed by ``seed``:
    the prompts on which adherence is measured (``textures=True``: from the textured set; its own seed
    stream, so the plain prompts stay what they were)."""
    rng = random.Random(f"evaluate/{split}/{seed}" + ("/textures" if textures else ""))
    return [random_scene(rng, split, partial_captions=False, textures=textures).caption for _ in range(count)]


def draw(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB image, at a random scale (within its size word's range)
    and position (the shape always wholly inside); textures start at a random phase.

    Raises:
        ValueError: ``size`` is below 16 pixels, or the scene names an unknown colour, shape, size or
            texture, or one its grammar cannot draw (see :func:`check_scene`).
    """
    check_size(size)
    check_scene(scene)
    low, high = SIZES[scene.size]
    side = round(size * rng.uniform(low, high))
    margin = max(1, size // 16)
    x0 = rng.randint(margin, size - margin - side)
    y0 = rng.randint(margin, size - margin - side)
    return paint(scene, size, (x0, y0, x0 + side - 1, y0 + side - 1), rng)


def check_size(size: int) -> None:
    """Raise ``ValueError`` for an image side below 16 pixels."""
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {size}")


def paint(scene: Scene, size: int, box: tuple[int, int, int, int], rng: random.Random) -> Image.Image:
    """Render ``scene`` with its shape in ``box`` (x0, y0, x1, y1, inclusive pixels); ``rng`` sets the
    textures' phase (a plain scene draws nothing from it)."""
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    if scene.texture == "plain" and scene.background_texture == "plain":
        _draw_shape(ImageDraw.Draw(image), scene.shape, box, COLOURS[scene.colour])  # the plain set, unchanged
        return image
    shape = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(shape), scene.shape, box, 255)
    mask = np.asarray(shape) > 0  # (H, W)
    if scene.texture == "outlined":
        inner = np.asarray(shape.filter(ImageFilter.MinFilter(2 * OUTLINE_WIDTH + 1))) > 0
        mask &= ~inner
    ground = pattern(scene.background_texture, scene.background, partner(scene.background), size, rng)
    fill = pattern(scene.texture, scene.colour, scene.colour2 or scene.colour, size, rng)
    return Image.fromarray(np.where(mask[:, :, None], fill, ground))


def _draw_shape(pen: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x0 + (x1 - x0) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def pattern(texture: str, first: str, second: str, size: int, rng: random.Random) -> np.ndarray:
    """A ``size`` x ``size`` uint8 (H, W, 3) image of ``texture`` in two palette colours, at a random
    phase (``plain`` and ``outlined``: the first colour only; ``gradient``: first at the top to second at
    the bottom).

    Raises:
        ValueError: ``texture`` is unknown.
    """
    a = np.array(COLOURS[first], np.float64)
    b = np.array(COLOURS[second], np.float64)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)  # (H, W) each
    if texture in ("plain", "outlined"):
        return np.broadcast_to(a.astype(np.uint8), (size, size, 3)).copy()
    if texture == "gradient":
        t = (y / (size - 1))[:, :, None]  # (H, W, 1)
        return np.round((1 - t) * a + t * b).astype(np.uint8)
    if texture not in PERIODS:
        raise ValueError(f"unknown texture {texture!r}; accepted: {', '.join(FILL_TEXTURES + ('gradient',))}")
    period = PERIODS[texture]
    dx, dy = rng.uniform(0, period), rng.uniform(0, period)
    if texture == "horizontal striped":
        second_here = (y + dy) % period >= period / 2
    elif texture == "vertical striped":
        second_here = (x + dx) % period >= period / 2
    elif texture == "diagonal striped":
        along = period * 2**0.5  # the period along an axis of stripes at 45 degrees
        second_here = (x + y + dx) % along >= along / 2
    elif texture == "checked":
        cell = period / 2
        second_here = (np.floor((x + dx) / cell) + np.floor((y + dy) / cell)) % 2 == 1
    else:  # dotted: a square lattice of dots
        fx = (x + dx) % period - period / 2
        fy = (y + dy) % period - period / 2
        second_here = fx**2 + fy**2 <= DOT_RADIUS**2
    return np.where(second_here[:, :, None], b, a).astype(np.uint8)


def check_scene(scene: Scene) -> None:
    """Refuse a scene the generator cannot draw.

    Raises:
        ValueError: an unknown colour, shape, size or texture; a two-coloured fill without a second colour
            (or a second colour on another fill); a textured black background; a shape colour that is also
            in its background.
    """
    for name, value, accepted in (
        ("colour", scene.colour, COLOURS),
        ("background", scene.background, COLOURS),
        ("shape", scene.shape, SHAPES),
        ("size", scene.size, SIZES),
        ("texture", scene.texture, FILL_TEXTURES),
        ("background texture", scene.background_texture, BACKGROUND_TEXTURES),
    ):
        if value not in accepted:
            raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
    if (scene.colour2 is not None) != (scene.texture in TWO_COLOURED):
        raise ValueError(f"a {scene.texture} fill takes {'a' if scene.texture in TWO_COLOURED else 'no'} "
                         f"second colour, got colour2={scene.colour2!r}")
    if scene.colour2 is not None and scene.colour2 not in COLOURS:
        raise ValueError(f"unknown colour {scene.colour2!r}; accepted: {', '.join(COLOURS)}")
    if scene.background_texture != "plain" and scene.background == "black":
        raise ValueError("a black background is always plain")
    ground = {scene.background} | ({partner(scene.background)} if scene.background_texture != "plain" else set())
    if {scene.colour, scene.colour2} & ground:
        raise ValueError(f"the shape's colours {scene.colours!r} must differ from its background's {sorted(ground)}")


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a caption of this grammar asks for (the inverse of :attr:`Scene.asked`).

    ``"a small red circle on a yellow background"`` gives
    ``{"size": "small", "colour": "red", "shape": "circle", "background": "yellow"}``; ``"a red circle"``
    gives only colour and shape; ``"a white and red striped square on a blue dotted background"`` gives
    ``colour "red and white"``, ``texture "striped"``-style values and ``background_texture "dotted"``.
    Case and surrounding spaces are ignored.

    Raises:
        ValueError: the caption does not follow the grammar
            ``a [size] <colour> [and <colour> <texture> | outlined] <shape> [on a <colour> [<texture>] background]``.
    """
    words = caption.lower().split()
    asked: dict[str, str] = {}
    rest = words[1:] if words[:1] == ["a"] else None
    if rest and rest[0] in SIZES:
        asked["size"], rest = rest[0], rest[1:]
    fill, rest = _read_fill(rest or [])
    if fill is not None:
        asked.update(fill)
        if rest[:2] == ["on", "a"] and len(rest) >= 4 and rest[2] in COLOURS and rest[-1] == "background":
            ground = " ".join(rest[3:-1])
            if ground in BACKGROUND_TEXTURES[1:] or not ground:
                asked["background"], rest = rest[2], []
                if ground:
                    asked["background_texture"] = ground
        if not rest:
            return asked
    raise ValueError(
        f"cannot read caption {caption!r}: expected 'a [size] <colour> [and <colour> <texture> | outlined] "
        f"<shape> [on a <colour> [<texture>] background]' with size in {list(SIZES)}, colour in "
        f"{list(COLOURS)}, shape in {list(SHAPES)}, texture in {list(FILL_TEXTURES[1:])}, background "
        f"texture in {list(BACKGROUND_TEXTURES[1:])}"
    )


def _read_fill(words: list[str]) -> tuple[dict[str, str] | None, list[str]]:
    """Read ``<colour> [and <colour> <texture> | outlined] <shape>`` from the front of ``words``."""
    if not words or words[0] not in COLOURS:
        return None, words
    for count, texture in ((2, "plain"), (3, "outlined")) + tuple((5 + t.count(" "), t) for t in TWO_COLOURED):
        head = words[:count]
        if len(head) < count or head[-1] not in SHAPES:
            continue
        middle = head[1:-1]
        if texture == "plain" and not middle:
            return {"colour": words[0], "shape": head[-1]}, words[count:]
        if texture == "outlined" and middle == ["outlined"]:
            return {"colour": words[0], "texture": texture, "shape": head[-1]}, words[count:]
        if (texture in TWO_COLOURED and middle[:1] == ["and"] and middle[1] in COLOURS
                and " ".join(middle[2:]) == texture and middle[1] != words[0]):
            return ({"colour": colour_words(texture, words[0], middle[1]), "texture": texture,
                     "shape": head[-1]}, words[count:])
    return None, words
