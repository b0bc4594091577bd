"""One generation at one merge ratio, timed: the unit of work of the ratio sweep (the app), the batch engine and the
demo-model benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

import tomesd
from tomesd.lab.timing import PeakMemory, PipelineRun, execution_device, timed_pipeline_call

__all__ = [
    "Generation", "GenerationSettings", "check_patch_options", "check_ratio", "generate", "parse_option",
    "patch_option_defaults", "set_ratio",
]

#: How an option whose default is None ("automatic") is written on a command line or in a text field.
AUTO_WORDS = ("auto", "none", "")


@dataclass(frozen=True)
class GenerationSettings:
    """What a generation depends on besides the merge ratio and the seed.

    Attributes:
        prompt: the text prompt (must not be blank).
        negative_prompt: what to steer away from ("" for none).
        steps: denoising steps, 1 to 1000.
        guidance: classifier-free guidance scale (>= 0; <= 1 disables the unconditional branch).
        width: image width in pixels, a positive multiple of 8.
        height: image height in pixels, a positive multiple of 8.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    width: int = 512
    height: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty; write what the image should show")
        if not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps={self.steps} is out of range; accepted: 1 to 1000")
        if self.guidance < 0:
            raise ValueError(f"guidance={self.guidance} is negative; accepted: >= 0 (7.5 is usual)")
        for name in ("width", "height"):
            value = getattr(self, name)
            if int(value) != value or value <= 0 or value % 8:
                raise ValueError(f"{name}={value} must be a positive multiple of 8 (e.g. 256, 512)")


@dataclass
class Generation:
    """The result of :func:`generate`.

    Attributes:
        image: the generated PIL image.
        run: its timing (seconds, steps, it/s).
        peak_mib: peak memory during the call, measured as ``memory_kind`` (see :class:`PeakMemory`).
        memory_kind: ``"cuda_max_allocated"`` or ``"process_rss"``.
    """

    image: Any
    run: PipelineRun
    peak_mib: float
    memory_kind: str


def check_ratio(value: Any) -> float:
    """``value`` as a merge ratio.

    Raises:
        ValueError: not a number in [0, 1).
    """
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ratio {value!r} is not a number; accepted: numbers from 0 to below 1") from None
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio {ratio:g} is out of range; accepted: 0 <= ratio < 1")
    return ratio


def patch_option_defaults() -> dict[str, Any]:
    """The diffusers patch options other than ``ratio``, with their defaults
    (``tomesd.patch.diffusers.OPTIONS``): what the app and the scripts offer next to the ratios."""
    from tomesd.patch.diffusers import OPTIONS

    return {name: default for name, default in OPTIONS.items() if name != "ratio"}


def parse_option(name: str, text: str) -> Any:
    """A patch option's value from text, typed like its default: ``"true"``/``"false"`` for flags, numbers
    for numbers, and for options that default to None (automatic) ``"auto"`` or an integer.

    Raises:
        ValueError: ``name`` is not a patch option, or ``text`` does not parse as its type.
    """
    defaults = patch_option_defaults()
    if name not in defaults:
        raise ValueError(f"unknown patch option {name!r}; accepted: {', '.join(defaults)}")
    default, value = defaults[name], str(text).strip()
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"option {name}: expected true or false, got {text!r}")
        return value.lower() in ("true", "1")
    if default is None and value.lower() in AUTO_WORDS:
        return None
    kind = int if default is None else type(default)
    try:
        return kind(value)
    except ValueError:
        expected = "'auto' or an integer" if default is None else f"a {kind.__name__}"
        raise ValueError(f"option {name}: expected {expected}, got {text!r}") from None


def check_patch_options(options: Mapping[str, Any], ratios: Iterable[float] = (0.5,)) -> dict[str, Any]:
    """Every diffusers patch option besides the ratio, ``options`` over the defaults, checked at each of
    ``ratios`` the way :func:`tomesd.apply_patch` checks them, without a model: what can be refused before
    anything loads. (What depends on the model, such as having a block to merge, is known only when it is
    patched.)

    Returns:
        The full options (defaults filled in), in the order of ``tomesd.patch.diffusers.OPTIONS``.

    Raises:
        ValueError: an unknown option, or a value the patcher refuses (a wrong type included).
    """
    from tomesd.patch.diffusers import DiffusersOptions

    defaults = patch_option_defaults()
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown patch option {sorted(unknown)[0]!r}; accepted: {', '.join(defaults)}")
    full = {**defaults, **options}
    for ratio in ratios:
        try:
            DiffusersOptions(ratio=check_ratio(ratio), **full)
        except TypeError as error:
            raise ValueError(str(error)) from None
    return full


def set_ratio(pipe: Any, ratio: float, options: Mapping[str, Any] | None = None) -> None:
    """Patch ``pipe`` with token merging at ``ratio`` and ``options``; ratio 0 removes any patch, so the
    baseline is the untouched pipeline.

    Raises:
        ValueError, TypeError: from :func:`tomesd.apply_patch` for a bad ratio or option (the pipeline is
            then left unpatched).
    """
    if ratio == 0:
        tomesd.remove_patch(pipe)
    else:
        tomesd.apply_patch(pipe, ratio=ratio, **dict(options or {}))


def generate(
    pipe: Any,
    settings: GenerationSettings,
    seed: int,
    ratio: float,
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Generation:
    """Generate one image at merge ``ratio`` with ``seed``, timing it and measuring its peak memory.

    The pipeline stays patched at ``ratio`` afterwards (ratio 0: unpatched); on error it is unpatched.

    Args:
        pipe: a diffusers text-to-image pipeline with a ``unet``.
        settings: prompt, steps, guidance and size.
        seed: seeds a CPU generator, so an image does not depend on the device's RNG.
        ratio: token merging ratio, 0 (no merging) to below 1.
        options: other patch options (see ``tomesd.patch.diffusers.OPTIONS``).
        on_step: see :func:`tomesd.lab.timing.timed_pipeline_call`; may raise to cancel.

    Returns:
        A :class:`Generation`.
    """
    try:
        set_ratio(pipe, ratio, options)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        with PeakMemory(execution_device(pipe)) as memory:
            output, run = timed_pipeline_call(
                pipe,
                on_step=on_step,
                prompt=settings.prompt,
                negative_prompt=settings.negative_prompt or None,
                num_inference_steps=int(settings.steps),
                guidance_scale=float(settings.guidance),
                width=int(settings.width),
                height=int(settings.height),
                generator=generator,
            )
    except BaseException:
        tomesd.remove_patch(pipe)
        raise
    return Generation(output.images[0], run, memory.mib, memory.kind)
