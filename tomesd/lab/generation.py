"""One generation at one merge ratio, timed: the unit of work of the ratio sweep (the app), the batch engine and the
demo-model benchmark.

Any diffusers text-to-image pipeline whose denoiser is ``pipe.unet`` (SD 1.x/2.x/XL) or ``pipe.transformer``
(PixArt, SD3, Flux, Sana) works, and so do the video pipelines (AnimateDiff, Stable Video Diffusion, Wan): the
call arguments follow each pipeline's own signature (:func:`call_arguments`).

With ``compile`` (a ``torch.compile`` backend name) the denoiser is compiled after it is patched (the patch
is applied to the plain model, never to a compiled wrapper); see :func:`compile_module`.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

import tomesd
from tomesd.lab.timing import DENOISERS, PeakMemory, PipelineRun, denoiser_name, execution_device, timed_pipeline_call

__all__ = [
    "Generation", "GenerationSettings", "call_arguments", "check_compile_backend", "check_patch_options", "check_ratio",
    "compile_module", "effective_ratio", "generate", "is_video_pipeline", "latent_scale", "parse_option",
    "patch_option_defaults",
    "ratio_label", "set_ratio", "unpatch", "warm_up",
]

#: The default ``torch.compile`` backend of ``--compile`` (and the app's checkbox).
DEFAULT_COMPILE_BACKEND = "inductor"

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
        frames: for a video pipeline, the frames to generate (None: the pipeline's default).
        image: for an image-to-video pipeline (Stable Video Diffusion), the path of the conditioning image.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    frames: int | None = None
    image: str | None = None

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
        if self.frames is not None and (int(self.frames) != self.frames or self.frames < 1):
            raise ValueError(f"frames={self.frames} must be a positive integer (or None: the pipeline's default)")
        if self.image is not None and not Path(self.image).is_file():
            raise ValueError(f"conditioning image {self.image!r} does not exist")


@dataclass
class Generation:
    """The result of :func:`generate`.

    Attributes:
        image: the generated PIL image (a video pipeline's: its first frame).
        run: its timing (seconds, steps, it/s).
        peak_mib: peak memory during the call, measured as ``memory_kind`` (see :class:`PeakMemory`).
        memory_kind: ``"cuda_max_allocated"`` or ``"process_rss"``.
        frames: a video pipeline's frames (PIL images), None for an image pipeline.
    """

    image: Any
    run: PipelineRun
    peak_mib: float
    memory_kind: str
    frames: list[Any] | None = None


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


def latent_scale(pipe: Any) -> int:
    """Pixels per latent cell of ``pipe``: its VAE's spatial scale factor (video pipelines name it
    ``vae_scale_factor_spatial``), 8 when the pipeline does not say."""
    return getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", 8)


def effective_ratio(pipe: Any, settings: GenerationSettings, ratio: float,
                    options: Mapping[str, Any] | None = None) -> float:
    """The share of image tokens the patch really merges away at ``ratio`` for ``settings``' size: the merged
    tokens over all tokens of the blocks that merge, as :func:`tomesd.patch.diffusers.merge_report` reports
    them at the run's latent size (nothing is patched). Below ``ratio`` where the strides cap it (at sx=sy=2,
    0.9 merges 0.75); 0.0 at ratio 0 or where no block merges.

    Args:
        pipe: a diffusers pipeline (or model) the patch supports.
        settings: the run's size (width, height).
        ratio: the requested merge ratio.
        options: the other patch options.

    Raises:
        ValueError, TypeError: a ratio or option the patch refuses.
    """
    if ratio == 0:
        return 0.0
    from tomesd.patch.diffusers import merge_report

    scale = latent_scale(pipe)
    latent = (-(-int(settings.height) // scale), -(-int(settings.width) // scale))
    with warnings.catch_warnings():  # a capped ratio: apply_patch has said so already, once
        warnings.simplefilter("ignore", UserWarning)
        report = merge_report(pipe, latent, ratio=ratio, **dict(options or {}))
    merging = [block for block in report if block.submodules]
    tokens = sum(block.tokens for block in merging)
    return sum(block.merged for block in merging) / tokens if tokens else 0.0


def ratio_label(requested: float, effective: float | None) -> str:
    """``requested`` as shown to users, with the effective ratio beside it where the two differ at the shown
    precision (two decimals): ``"0.9 (0.75 effective)"``, else ``"0.5"``. None (not known): the requested."""
    if effective is None or abs(effective - requested) < 0.005:
        return f"{requested:g}"
    return f"{requested:g} ({effective:.3g} effective)"


def check_compile_backend(backend: str | None) -> str | None:
    """``backend`` if ``torch.compile`` knows it (None: no compilation).

    Raises:
        ValueError: an unknown backend name (names the usual ones).
    """
    if backend is None:
        return None
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        usual = [name for name in ("inductor", "eager", "aot_eager", "cudagraphs") if name in known]
        raise ValueError(f"unknown torch.compile backend {backend!r}; usual ones: {', '.join(usual)}")
    return backend


def compile_module(module: torch.nn.Module, backend: str = DEFAULT_COMPILE_BACKEND) -> torch.nn.Module:
    """``torch.compile(module, backend=backend, dynamic=False)``, made safe for a module whose patch changes
    between calls. Not ``fullgraph``: the patch adds no graph break, but a user's model may have its own.

    ``dynamic=False``: every input shape gets its own static graph. Dynamo's default would recompile the
    second shape it sees (a second resolution) with symbolic sizes, and tracing a whole U-Net that way took
    longer than 25 minutes here where a static graph takes about 4; static shapes are also what CUDA graphs need.

    The patch lives in forward hooks, and by default TorchDynamo does not guard on hooks: a graph traced under
    one setting would be replayed under another. This turns those guards on for the process
    (``torch._dynamo.config.skip_nnmodule_hook_guards = False``): each setting gets its graph, traced once
    and reused whenever the setting comes back (up to Dynamo's ``cache_size_limit`` settings per model).

    Returns:
        The compiled wrapper (compilation happens on its first call).
    """
    import torch._dynamo

    torch._dynamo.config.skip_nnmodule_hook_guards = False
    return torch.compile(module, backend=backend, dynamic=False)


def _uncompile(pipe: Any) -> None:
    """Put the plain denoiser back where a compiled wrapper of it was (a no-op otherwise)."""
    for name in DENOISERS:
        module = getattr(pipe, name, None)
        original = getattr(module, "_orig_mod", None)
        if isinstance(original, torch.nn.Module):
            setattr(pipe, name, original)


def unpatch(pipe: Any) -> None:
    """Leave ``pipe`` as it was loaded: its plain (uncompiled) denoiser, no patch."""
    _uncompile(pipe)
    tomesd.remove_patch(pipe)


def set_ratio(pipe: Any, ratio: float, options: Mapping[str, Any] | None = None, compile: str | None = None) -> None:
    """Patch ``pipe`` with token merging at ``ratio`` and ``options``; ratio 0 removes any patch, so the
    baseline is the untouched pipeline. With ``compile`` (a backend), the pipeline's denoiser is then
    compiled (:func:`compile_module`): patched first, compiled second, at every ratio alike.

    Raises:
        ValueError, TypeError: from :func:`tomesd.apply_patch` for a bad ratio or option, or a model the
            patch does not support (the pipeline is then left unpatched).
    """
    _uncompile(pipe)
    if ratio == 0:
        tomesd.remove_patch(pipe)
    else:
        tomesd.apply_patch(pipe, ratio=ratio, **dict(options or {}))
    if compile is not None:
        name = denoiser_name(pipe)
        setattr(pipe, name, compile_module(getattr(pipe, name), compile))


def is_video_pipeline(pipe: Any) -> bool:
    """Whether ``pipe`` generates frames (its call takes ``num_frames``: AnimateDiff, SVD, Wan...)."""
    return "num_frames" in inspect.signature(pipe.__call__).parameters


def call_arguments(pipe: Any, settings: GenerationSettings, generator: torch.Generator | None = None) -> dict[str, Any]:
    """The keyword arguments of ``pipe(...)`` for ``settings``, following the pipeline's own signature: the
    prompt, negative prompt and guidance scale only where it takes them (Stable Video Diffusion takes an
    image instead; Flux's guidance is its distilled guidance), the frames of a video pipeline, PIL outputs.
    The asked size and prompt are used as given: PixArt and Sana would otherwise snap the size to their
    resolution bins and rewrite the prompt with optional libraries (``use_resolution_binning``,
    ``clean_caption``).

    Raises:
        ValueError: a setting the pipeline cannot take (a negative prompt, frames or an image it has no
            argument for), or an image-to-video pipeline without ``settings.image``.
    """
    accepted = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    given = {"negative_prompt": settings.negative_prompt or None, "num_frames": settings.frames,
             "image": settings.image}
    what = {"negative_prompt": "negative prompt", "num_frames": "frames", "image": "conditioning image"}
    for key, value in given.items():
        if value is not None and key not in accepted:
            raise ValueError(f"{name} takes no {what[key]} (only pipelines with a {key!r} argument do)")
    image = accepted.get("image")
    if image is not None and image.default is inspect.Parameter.empty and settings.image is None:
        raise ValueError(f"{name} generates from an image: give the conditioning image (--image PATH)")
    wanted = {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt or None,
        "guidance_scale": float(settings.guidance),
        "num_frames": None if settings.frames is None else int(settings.frames),
        "image": _conditioning_image(settings),
        "output_type": "pil",
        "use_resolution_binning": False,
        "clean_caption": False,
    }
    arguments = {key: value for key, value in wanted.items() if key in accepted and value is not None}
    return {**arguments, "num_inference_steps": int(settings.steps), "width": int(settings.width),
            "height": int(settings.height), "generator": generator}


def _conditioning_image(settings: GenerationSettings) -> Any:
    """The conditioning image as RGB at the asked size, or None."""
    if settings.image is None:
        return None
    from PIL import Image

    with Image.open(settings.image) as image:
        return image.convert("RGB").resize((int(settings.width), int(settings.height)))


def _pil_frames(frames: Any) -> list[Any]:
    """The first video of a pipeline's ``frames`` output as PIL images (lists of PIL images, or arrays)."""
    from PIL import Image

    video = frames[0]
    if isinstance(video, list):
        return [frame.convert("RGB") for frame in video]
    array = video.detach().float().cpu().numpy() if isinstance(video, torch.Tensor) else video  # (F, H, W, 3)
    if array.dtype != "uint8":
        array = (array.clip(0, 1) * 255).round().astype("uint8")
    return [Image.fromarray(frame) for frame in array]


def generate(
    pipe: Any,
    settings: GenerationSettings,
    seed: int,
    ratio: float,
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    compile: str | None = None,
) -> Generation:
    """Generate one image (or video) at merge ``ratio`` with ``seed``, timing it and measuring its peak memory.

    The pipeline stays patched at ``ratio`` (and compiled, with ``compile``) afterwards (ratio 0: unpatched);
    on error it is unpatched and uncompiled.

    Args:
        pipe: a diffusers text-to-image or video pipeline with a denoiser (``unet`` or ``transformer``).
        settings: prompt, steps, guidance, size (and frames, conditioning image).
        seed: seeds a CPU generator, so an image does not depend on the device's RNG.
        ratio: token merging ratio, 0 (no merging) to below 1.
        options: other patch options (see ``tomesd.patch.diffusers.OPTIONS``).
        on_step: see :func:`tomesd.lab.timing.timed_pipeline_call`; may raise to cancel.
        compile: a ``torch.compile`` backend to compile the patched denoiser with (None: eager). The first
            call at each setting compiles: time it apart (a warm-up).

    Returns:
        A :class:`Generation`.

    Raises:
        ValueError, TypeError: a setting the pipeline cannot take (:func:`call_arguments`) or a patch refusal.
    """
    try:
        set_ratio(pipe, ratio, options, compile)
        arguments = call_arguments(pipe, settings, torch.Generator("cpu").manual_seed(int(seed)))
        with PeakMemory(execution_device(pipe)) as memory:
            output, run = timed_pipeline_call(pipe, on_step=on_step, **arguments)
    except BaseException:
        unpatch(pipe)
        raise
    if getattr(output, "frames", None) is not None:
        frames = _pil_frames(output.frames)
        return Generation(frames[0], run, memory.mib, memory.kind, frames)
    return Generation(output.images[0], run, memory.mib, memory.kind)


def warm_up(
    pipe: Any,
    settings: GenerationSettings,
    seed: int,
    ratios: Iterable[float],
    options: Mapping[str, Any] | None = None,
    compile: str | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict[float, float]:
    """Untimed generations before the timed ones, so that none of those pays for a first call.

    Eager: one 1-step generation per ratio. Compiled: a whole generation per ratio (the denoiser compiles,
    also what a patch's graph breaks specialise per timestep), then a 1-step one per ratio again (coming back
    to a ratio after another can recompile once; that lands here too).

    Args:
        pipe, settings, seed, options, compile: as for :func:`generate`.
        ratios: every ratio the timed generations will use.
        on_step: ``on_step(stage, step, total)`` after every step (stage e.g. ``"compiling, ratio 0.5"``);
            may raise to cancel.

    Returns:
        ratio -> seconds of its warm-up generations: compiled, its compile time plus one whole and one
        1-step generation.
    """
    one_step = GenerationSettings(**{**settings.__dict__, "steps": 1})
    rounds = [settings, one_step] if compile else [one_step]
    seconds = dict.fromkeys(ratios, 0.0)
    for warm in rounds:
        for ratio in seconds:
            stage = f"{'compiling' if compile else 'warm-up'}, ratio {ratio:g}"
            report = None if on_step is None else (lambda step, total, stage=stage: on_step(stage, step, total))
            seconds[ratio] += generate(pipe, warm, seed, ratio, options, report, compile).run.seconds
    return seconds
