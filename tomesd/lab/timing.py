"""Timing helpers shared by the app, the batch generator and the benchmarks.

Speed is reported as a ratio against a baseline measured in the same process: the settings are run in
turns (A, B, C, A, B, C, ...) so that drift of the machine (thermal, other load) hits all of them alike,
and each is summarised by the median of its repetitions.
"""

from __future__ import annotations

import inspect
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "DENOISERS",
    "PeakMemory",
    "denoiser",
    "denoiser_name",
    "execution_device",
    "PipelineRun",
    "Timing",
    "synchronize",
    "time_interleaved",
    "timed_pipeline_call",
]


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the repetitions of one setting."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median seconds of one repetition."""
        return statistics.median(self.seconds)

    def speedup_over(self, baseline: "Timing") -> float:
        """How many times faster than ``baseline`` (>1 is faster), from the medians."""
        return baseline.median / self.median


#: Where a diffusers pipeline keeps the network its denoising loop calls every step: a DiT's (PixArt, SD3, Flux,
#: Sana, Wan) is ``pipe.transformer``, a U-Net pipeline's (SD 1.x/2.x/XL, AnimateDiff, SVD) ``pipe.unet``.
DENOISERS = ("transformer", "unet")


def denoiser_name(pipe: Any) -> str:
    """The attribute of ``pipe`` holding its denoiser, one of :data:`DENOISERS`.

    Raises:
        ValueError: ``pipe`` has neither (not a diffusion pipeline with a denoising loop).
    """
    for name in DENOISERS:
        if getattr(pipe, name, None) is not None:
            return name
    raise ValueError(f"{type(pipe).__name__} has no denoiser ({' or '.join(DENOISERS)}) to time or patch")


def denoiser(pipe: Any) -> torch.nn.Module:
    """The network ``pipe``'s denoising loop calls every step (``pipe.transformer`` or ``pipe.unet``; a
    ``torch.compile`` wrapper if it was compiled).

    Raises:
        ValueError: ``pipe`` has none (see :func:`denoiser_name`).
    """
    return getattr(pipe, denoiser_name(pipe))


def execution_device(pipe: Any) -> torch.device:
    """The device a diffusers pipeline computes on, also when its weights are offloaded to the CPU."""
    return torch.device(getattr(pipe, "_execution_device", None) or denoiser(pipe).device)


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work on ``device``, so wall-clock time covers it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_interleaved(
    settings: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    prepare: Mapping[str, Callable[[], Any]] | None = None,
    alternate: bool = False,
) -> dict[str, Timing]:
    """Time each callable of ``settings``, interleaved: ``warmup`` untimed rounds, then ``repeats`` rounds
    each calling every setting once in turn (A B C, A B C, ...; with ``alternate`` A B C, C B A, ...).

    Args:
        settings: name -> a callable running one repetition of that setting.
        repeats: timed rounds (at least 1); report medians over them.
        warmup: untimed rounds first (caches, allocator, lazy initialisation).
        device: synchronised around each call so GPU work is counted.
        progress: show a tqdm bar over all calls.
        prepare: optional name -> an untimed callable run before each call of that setting (e.g. switching
            a model's patch to the setting's options).
        alternate: reverse the order every other round (the warm-up rounds count), so that no setting always
            runs right after the same one (e.g. in a warm cache, or just after a patch switch).

    Returns:
        name -> :class:`Timing` with ``repeats`` measurements.

    Raises:
        ValueError: ``repeats < 1``, ``warmup < 0`` or no settings.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not settings:
        raise ValueError("no settings to time")
    from tqdm.auto import tqdm

    seconds: dict[str, list[float]] = {name: [] for name in settings}
    bar = tqdm(total=(warmup + repeats) * len(settings), disable=not progress, desc="timing")
    for round_index in range(warmup + repeats):
        names = list(settings)
        for name in reversed(names) if alternate and round_index % 2 else names:
            fn = settings[name]
            bar.set_postfix_str(name)
            if prepare is not None and name in prepare:
                prepare[name]()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
            bar.update()
    bar.close()
    return {name: Timing(tuple(values)) for name, values in seconds.items()}


@dataclass
class PipelineRun:
    """Timing of one pipeline call.

    Attributes:
        steps: denoising steps run.
        seconds: the whole call (text encoding, denoising, VAE decoding).
        denoise_seconds: from the first denoiser call to the end of the last step: what ``it/s`` divides.
    """

    steps: int = 0
    seconds: float = 0.0
    denoise_seconds: float = 0.0

    @property
    def its(self) -> float:
        """Denoising steps per second (the it/s of diffusers' progress bar)."""
        return self.steps / self.denoise_seconds if self.denoise_seconds > 0 else float("nan")


def timed_pipeline_call(
    pipe: Any, on_step: Callable[[int, int], None] | None = None, **call_kwargs: Any
) -> tuple[Any, PipelineRun]:
    """Call ``pipe(**call_kwargs)`` and time it, whole and its denoising loop.

    Args:
        pipe: a diffusers pipeline with a denoiser (:func:`denoiser`) and a step callback
            (``callback_on_step_end``, or the older ``callback``).
        on_step: called as ``on_step(step_done, total_steps)`` after every step; it may raise to abort the
            call (the exception propagates, the pipeline is left as it was).
        **call_kwargs: the pipeline's call arguments (``num_inference_steps`` is required).

    Returns:
        The pipeline's output and a :class:`PipelineRun`.
    """
    total = int(call_kwargs["num_inference_steps"])
    device = execution_device(pipe)
    run = PipelineRun()
    first_denoiser_call: list[float] = []

    def mark_first_denoiser_call(module: Any, args: Any) -> None:
        if not first_denoiser_call:
            synchronize(device)
            first_denoiser_call.append(time.perf_counter())

    def step_done(step: int) -> None:
        synchronize(device)
        run.steps = step + 1
        run.denoise_seconds = time.perf_counter() - first_denoiser_call[0]
        if on_step is not None:
            on_step(step + 1, total)

    def step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        step_done(step)
        return tensors

    # Most pipelines call callback_on_step_end; some (PixArt) only the older callback(step, timestep, latents).
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        callbacks = {"callback_on_step_end": step_end}
    else:
        callbacks = {"callback": lambda step, timestep, latents: step_done(step), "callback_steps": 1}

    # On the denoiser as the pipeline holds it: a torch.compile wrapper's own hooks run outside the compiled
    # graph, so adding and removing this one never invalidates (recompiles) it.
    handle = denoiser(pipe).register_forward_pre_hook(mark_first_denoiser_call)
    try:
        synchronize(device)
        start = time.perf_counter()
        output = pipe(**callbacks, **call_kwargs)
        synchronize(device)
        run.seconds = time.perf_counter() - start
    finally:
        handle.remove()
    return output, run


@dataclass
class PeakMemory:
    """Context manager measuring peak memory in MiB while its block runs.

    On CUDA this is ``torch.cuda.max_memory_allocated`` (tensors only); elsewhere the process's resident set
    size, sampled every ``interval`` seconds by a background thread (everything the process holds,
    including the loaded model). ``kind`` names which one was measured.
    """

    device: str | torch.device = "cpu"
    interval: float = 0.01
    mib: float = 0.0
    kind: str = ""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> "PeakMemory":
        device = torch.device(self.device)
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.kind = "process_rss"
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_rss, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        device = torch.device(self.device)
        if device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            self._stop.set()
            self._thread.join()

    def _sample_rss(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.mib = max(self.mib, process.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return
