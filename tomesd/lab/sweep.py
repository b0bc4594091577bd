"""The ratio sweep behind the app: one prompt and seed at several merge ratios side by side, timed in turns,
each image compared with the ratio-0 one. No Gradio here, so it is testable on its own."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from PIL import Image, ImageChops

from tomesd.lab.generation import (
    Generation, GenerationSettings, check_compile_backend, check_ratio, effective_ratio, generate, ratio_label, unpatch,
    warm_up,
)

__all__ = ["RatioResult", "compare_ratios", "parse_ratios", "results_table", "speed_chart"]

DIFF_GAIN = 4  # difference maps are amplified so small deviations stay visible


@dataclass
class RatioResult:
    """One ratio's image and its numbers (medians over the repetitions).

    Attributes:
        ratio: the merge ratio.
        image: the generated image (from the first timed repetition).
        seconds: median seconds of a whole generation.
        its: median denoising steps per second.
        speedup: ratio-0 median seconds / this median seconds (1.0 for ratio 0).
        psnr: PSNR in dB against the ratio-0 image (inf when identical).
        ssim: SSIM against the ratio-0 image (1.0 when identical).
        diff_map: ``DIFF_GAIN`` x the absolute pixel difference from the ratio-0 image.
        compile_seconds: with a compiled denoiser, the untimed warm-ups at this ratio, in which it compiled
            (compile time plus one whole and one 1-step generation); None when not compiled.
        effective_ratio: the share of tokens really merged (:func:`tomesd.lab.generation.effective_ratio`):
            below ``ratio`` where the strides cap it; None when not known.
    """

    ratio: float
    image: Image.Image
    seconds: float
    its: float
    speedup: float
    psnr: float
    ssim: float
    diff_map: Image.Image
    compile_seconds: float | None = None
    effective_ratio: float | None = None

    @property
    def label(self) -> str:
        """The ratio as shown: with the effective ratio beside it where that differs ("0.9 (0.75 effective)")."""
        return ratio_label(self.ratio, self.effective_ratio)

    @property
    def caption(self) -> str:
        """A one-line label: ratio (and effective ratio, where it differs), seconds, it/s, speedup and PSNR."""
        psnr = "identical" if self.psnr == float("inf") else f"PSNR {self.psnr:.1f} dB"
        return (
            f"ratio {self.label} · {self.seconds:.2f} s · {self.its:.2f} it/s · "
            f"{self.speedup:.2f}x · {psnr}"
        )


def parse_ratios(values: Iterable[Any]) -> list[float]:
    """Sorted, de-duplicated merge ratios with the 0 baseline always first.

    Raises:
        ValueError: a value is not a number in [0, 1).
    """
    return sorted({check_ratio(value) for value in values} | {0.0})


def compare_ratios(
    pipe: Any,
    settings: GenerationSettings,
    seed: int,
    ratios: Iterable[Any],
    options: Mapping[str, Any] | None = None,
    repeats: int = 1,
    warmup: bool = True,
    on_step: Callable[[str, int, int], None] | None = None,
    compile: str | None = None,
) -> list[RatioResult]:
    """Generate ``settings`` with ``seed`` at every ratio (and ratio 0), timing the ratios in turns.

    Args:
        pipe: a diffusers text-to-image pipeline.
        settings: prompt, steps, guidance and size.
        seed: the seed every ratio uses, so images differ only by merging.
        ratios: merge ratios to compare; 0 is added as the baseline.
        options: other patch options (``tomesd.patch.diffusers.OPTIONS``).
        repeats: timed rounds over all ratios; medians are reported.
        warmup: first run untimed generations (:func:`tomesd.lab.generation.warm_up`): first calls are
            slower, and a compiled denoiser compiles there.
        on_step: ``on_step(stage, step, total)`` after every step (stage e.g. ``"ratio 0.5, run 1/2"``);
            may raise to cancel.
        compile: a ``torch.compile`` backend to compile the patched denoiser with at every ratio (ratio 0
            too, so the baseline is compiled alike); needs ``warmup``, in which it compiles.

    Returns:
        One :class:`RatioResult` per ratio, ratio 0 first, each with its effective ratio. The pipeline is left
        unpatched and uncompiled.

    Raises:
        ValueError: bad ratios, ``repeats < 1``, a bad patch option or compile backend, or compiling
            without the warm-up.
    """
    ratios = parse_ratios(ratios)
    if int(repeats) < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    if check_compile_backend(compile) is not None and not warmup:
        raise ValueError("compiling needs the warm-up: the first generation at each ratio compiles")
    effective = {ratio: effective_ratio(pipe, settings, ratio, options) for ratio in ratios}
    runs: dict[float, list[Generation]] = {ratio: [] for ratio in ratios}
    compile_seconds: dict[float, float] = {}
    try:
        if warmup:
            compile_seconds = warm_up(pipe, settings, seed, ratios, options, compile, on_step)
        for round_index in range(int(repeats)):
            for ratio in ratios:
                stage = f"ratio {ratio:g}, run {round_index + 1}/{repeats}"
                runs[ratio].append(generate(pipe, settings, seed, ratio, options, _stage(on_step, stage), compile))
    finally:
        unpatch(pipe)
    return _summarise(runs, compile_seconds if compile else {}, effective)


def _stage(on_step: Callable[[str, int, int], None] | None, stage: str) -> Callable[[int, int], None] | None:
    """Bind a stage label to ``on_step``."""
    if on_step is None:
        return None
    return lambda step, total: on_step(stage, step, total)


def _summarise(runs: dict[float, list[Generation]], compile_seconds: dict[float, float],
               effective: dict[float, float]) -> list[RatioResult]:
    """Medians per ratio, speedups against ratio 0 and differences from the ratio-0 image (and each ratio's
    compile time, when compiled, and its effective ratio)."""
    from tomesd.lab.quality import against_baseline

    base_runs = runs[0.0]
    base_image = base_runs[0].image
    base_seconds = statistics.median(g.run.seconds for g in base_runs)
    results = []
    for ratio, generations in runs.items():
        image = generations[0].image
        seconds = statistics.median(g.run.seconds for g in generations)
        metrics = against_baseline([base_image], [image])
        results.append(
            RatioResult(
                ratio=ratio,
                image=image,
                seconds=seconds,
                its=statistics.median(g.run.its for g in generations),
                speedup=base_seconds / seconds,
                psnr=metrics.psnr,
                ssim=metrics.ssim,
                diff_map=_difference_map(base_image, image),
                compile_seconds=compile_seconds.get(ratio),
                effective_ratio=effective.get(ratio),
            )
        )
    return results


def _difference_map(a: Image.Image, b: Image.Image) -> Image.Image:
    """Absolute per-pixel difference, amplified by ``DIFF_GAIN`` (black: identical)."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return diff.point(lambda value: min(255, value * DIFF_GAIN))


def results_table(results: list[RatioResult]) -> str:
    """A Markdown table of the comparison, each ratio with its effective ratio beside it where the strides cap
    it ("0.9 (0.75 effective)"); with a compiled denoiser, each ratio's compile time in a column of its own
    (the seconds and it/s never include it)."""
    compiled = any(r.compile_seconds is not None for r in results)
    lines = [
        "| ratio | seconds | it/s | speedup vs 0 | PSNR vs 0 (dB) | SSIM vs 0 |" + (" compile (s) |" if compiled else ""),
        "| ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if compiled else ""),
    ]
    for r in results:
        psnr = "inf" if r.psnr == float("inf") else f"{r.psnr:.2f}"
        line = f"| {r.label} | {r.seconds:.3f} | {r.its:.2f} | {r.speedup:.2f}x | {psnr} | {r.ssim:.4f} |"
        if compiled:
            line += " n/a |" if r.compile_seconds is None else f" {r.compile_seconds:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def speed_chart(results: list[RatioResult]) -> Any:
    """A matplotlib figure: it/s (bars) and speedup vs ratio 0 (labels) for each ratio."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.2), layout="constrained")
    axes = figure.add_subplot()
    labels = [r.label for r in results]
    bars = axes.bar(labels, [r.its for r in results], color="#4c72b0")
    axes.bar_label(bars, labels=[f"{r.speedup:.2f}x" for r in results], padding=2)
    axes.set_xlabel("merge ratio")
    axes.set_ylabel("denoising it/s")
    axes.set_title("Speed vs merge ratio (labels: speedup vs ratio 0)")
    axes.margins(y=0.15)
    return figure
