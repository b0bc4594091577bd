"""What one request to the app may ask of the server, and the checks of the raw values a request brings.

The page's controls are only a convenience: anyone can call the server through its API with any value, so
every value is checked here, in the server function, before work starts, with a message naming the field
and what it accepts. ``python -m ui --max-pixels/--max-steps/--max-seconds`` change the limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["OverBudget", "ServerLimits", "check_strides", "whole", "number", "SEED_MAX"]

SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes


class OverBudget(Exception):
    """Raised inside a generation that ran past the server's time budget per request."""


@dataclass(frozen=True)
class ServerLimits:
    """Limits of one request, enforced by the server.

    Attributes:
        max_pixels: width x height of the images (1024x1024 by default: SDXL's own size).
        max_steps: denoising steps of one request, steps x timed runs x ratios (the ratio-0 baseline
            included; the 1-step warm-ups are not counted).
        max_seconds: time a request may compute once its model is loaded; it stops after the step
            that passes it (a step itself cannot be interrupted, which the pixel limit keeps short).
    """

    max_pixels: int = 1024 * 1024
    max_steps: int = 2000
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_steps", "max_seconds"):
            value, flag = getattr(self, name), "--" + name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{flag} must be a positive number; got {value!r}")

    def check(self, width: int, height: int, steps: int, repeats: int, ratios: int) -> None:
        """Refuse a request over the limits before it starts.

        Args:
            width, height: image size in pixels.
            steps: denoising steps per image.
            repeats: timed runs per ratio.
            ratios: how many ratios run (with the baseline).

        Raises:
            ValueError: the request is over a limit; the message names it and the flag that raises it.
        """
        if width * height > self.max_pixels:
            raise ValueError(
                f"width x height = {width} x {height} = {width * height} pixels is over this server's limit of "
                f"{self.max_pixels} pixels per image (python -m ui --max-pixels changes it)"
            )
        total = steps * repeats * ratios
        if total > self.max_steps:
            raise ValueError(
                f"steps x timed runs x ratios = {steps} x {repeats} x {ratios} = {total} denoising steps is over "
                f"this server's limit of {self.max_steps} per request (python -m ui --max-steps changes it)"
            )

    def over_budget(self, seconds: float) -> OverBudget:
        """The error of a request stopped after ``seconds``."""
        return OverBudget(
            f"stopped after {seconds:.0f} s: over this server's time budget of {self.max_seconds:g} s per request "
            "(python -m ui --max-seconds changes it); fewer steps, ratios or timed runs, or a smaller size, fit"
        )


def whole(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """A whole number from an input field (Gradio numbers arrive as floats, or None when blank).

    Raises:
        ValueError: blank, not a finite whole number, or outside ``low``..``high``; the message names
            ``name`` and the accepted range.
    """
    accepted = _accepted_range(low, high)
    number_value = _as_float(value, name, accepted)
    if not math.isfinite(number_value) or not number_value.is_integer():
        raise ValueError(f"{name}={value!r} is not a whole number; accepted: {accepted}")
    result = int(value) if isinstance(value, int) else int(number_value)
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValueError(f"{name}={result} is out of range; accepted: {accepted}")
    return result


def number(value: Any, name: str, low: float) -> float:
    """A finite number of at least ``low`` from an input field.

    Raises:
        ValueError: blank, not a finite number, or below ``low``; the message names ``name`` and the range.
    """
    accepted = f"a number of {low:g} or more"
    result = _as_float(value, name, accepted)
    if not math.isfinite(result) or result < low:
        raise ValueError(f"{name}={value!r} is out of range; accepted: {accepted}")
    return result


def check_strides(options: dict[str, Any], width: int, height: int, scale: int) -> None:
    """Refuse destination strides larger than the token grid of an image of this size.

    Args:
        options: the patch options (``sx``, ``sy``).
        width, height: image size in pixels.
        scale: pixels per latent cell (the pipeline's ``vae_scale_factor``); the finest token grid is
            the latent's, (height/scale) x (width/scale).

    Raises:
        ValueError: ``sx`` or ``sy`` over the grid; the message names it and the accepted range.
    """
    for name, side, pixels in (("sx", "width", width), ("sy", "height", height)):
        cells = max(pixels // scale, 1)
        if options.get(name, 1) > cells:
            raise ValueError(
                f"patch option {name}={options[name]} is larger than the token grid at this size ({side} {pixels} "
                f"px / {scale} = {cells} tokens); accepted: 1 to {cells}"
            )


def _as_float(value: Any, name: str, accepted: str) -> float:
    """``value`` as a float; blank (None, "") or not a number raises ValueError naming ``name``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty; accepted: {accepted}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}={value!r} is not a number; accepted: {accepted}") from None


def _accepted_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"whole numbers from {low} to {high}"
    if low is not None:
        return f"whole numbers from {low}"
    return "a whole number"
