"""The Gradio A/B app: one prompt and seed generated at several merge ratios, side by side, with speed and
image-difference numbers. Build it with :func:`build_app`; ``python -m ui`` launches it."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import gradio as gr

from tomesd.compare import GenerationSettings, parse_option, patch_option_defaults
from tomesd.loading import DEMO, default_settings, load_pipeline

from .comparison import compare_ratios, results_table, speed_chart

__all__ = ["Cancelled", "ModelCache", "build_app"]

RATIO_CHOICES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
DEFAULT_RATIOS = [0.0, 0.3, 0.5, 0.7]


class Cancelled(Exception):
    """Raised inside a generation when the user pressed Stop."""


class ModelCache:
    """Holds the one loaded pipeline, reloading only when another model is asked for."""

    def __init__(self, device: str, dtype: str) -> None:
        self.device = device
        self.dtype = dtype
        self._source: str | None = None
        self._pipe: Any = None

    def get(self, source: str) -> Any:
        """The pipeline for ``source`` (see :func:`tomesd.loading.load_pipeline`), loaded on first use."""
        source = source.strip() or DEMO
        if source != self._source:
            self._pipe, self._source = None, None  # free the previous model before loading the next
            self._pipe = load_pipeline(source, device=self.device, dtype=self.dtype)
            self._source = source
        return self._pipe


def _option_control(name: str, default: Any) -> gr.components.Component:
    """An input matching the option's default type."""
    label = name.replace("_", " ")
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, elem_id=f"opt-{name}")
    if isinstance(default, (int, float)):
        return gr.Number(value=default, label=label, precision=0 if isinstance(default, int) else None,
                         elem_id=f"opt-{name}")
    return gr.Textbox(value="auto" if default is None else str(default), label=label, elem_id=f"opt-{name}")


def _option_value(name: str, default: Any, value: Any) -> Any:
    """A control's value converted back to the option's type (Gradio numbers arrive as floats)."""
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return _whole(value, f"patch option {name}")
    if isinstance(default, float):
        return float(value)
    return parse_option(name, value)


def build_app(model: str = DEMO, device: str = "cpu", dtype: str = "float32") -> gr.Blocks:
    """The app's page and its handlers.

    Args:
        model: the model source shown (and loaded) by default; see :func:`tomesd.loading.load_pipeline`.
        device: where generations run.
        dtype: weights dtype name ("float32", "float16", "bfloat16").

    Returns:
        The Gradio Blocks; call ``.queue(default_concurrency_limit=1).launch(...)`` (``python -m ui`` does).
    """
    defaults = default_settings(model)
    options = patch_option_defaults()
    cache = ModelCache(device, dtype)
    cancel = threading.Event()
    busy = threading.Lock()  # a cancelled run finishes its current step before the next run starts

    def run(model_source: str, prompt: str, negative: str, seed: float, steps: float, guidance: float,
            width: float, height: float, ratios: list[float], repeats: float, *option_values: Any,
            progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        with busy:
            cancel.clear()
            yield _outputs(status="Working…")
            try:
                settings = GenerationSettings(prompt, negative, _whole(steps, "steps"), float(guidance),
                                              _whole(width, "width"), _whole(height, "height"))
                patch_options = {
                    name: _option_value(name, default, value)
                    for (name, default), value in zip(options.items(), option_values)
                }
                progress(0, desc=f"loading model {model_source or DEMO}")
                pipe = cache.get(model_source)

                def on_step(stage: str, step: int, total: int) -> None:
                    if cancel.is_set():
                        raise Cancelled
                    progress((step, total), desc=stage)

                results = compare_ratios(pipe, settings, _whole(seed, "seed"), ratios, patch_options,
                                         _whole(repeats, "repeats"), on_step=on_step)
            except Cancelled:
                yield _outputs(status="Cancelled.")
                return
            except Exception as error:  # shown in the page; the app keeps serving
                yield _outputs(status=f"**Error:** {error}")
                return
            yield _outputs(
                gallery=[(r.image, r.caption) for r in results],
                diffs=[(r.diff_map, f"ratio {r.ratio:g}: |difference| x4 vs ratio 0") for r in results],
                table=results_table(results),
                chart=speed_chart(results),
                status=f"Done: {len(results)} ratios, {int(repeats)} timed run(s) each, medians shown.",
            )

    def request_cancel() -> str:
        cancel.set()
        return "Cancelling after the current step…"

    with gr.Blocks(title="tomesd A/B") as app:
        gr.Markdown("# tomesd A/B: token merging ratios side by side")
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Textbox(value=model, label="model: 'demo', a diffusers folder, a .safetensors "
                                       "file or a model id", elem_id="model")
                prompt = gr.Textbox(value=defaults["prompts"][0], label="prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox(value="", label="negative prompt", elem_id="negative")
                with gr.Row():
                    seed = gr.Number(value=0, label="seed", precision=0, elem_id="seed")
                    steps = gr.Number(value=defaults["steps"], label="steps (1-1000)", precision=0, elem_id="steps")
                    guidance = gr.Number(value=defaults["guidance"], label="guidance", elem_id="guidance")
                with gr.Row():
                    width = gr.Number(value=defaults["size"], label="width (multiple of 8)", precision=0,
                                      elem_id="width")
                    height = gr.Number(value=defaults["size"], label="height (multiple of 8)", precision=0,
                                       elem_id="height")
                ratios = gr.CheckboxGroup(RATIO_CHOICES, value=DEFAULT_RATIOS, label="merge ratios (0 is "
                                          "always run, as the baseline)", elem_id="ratios")
                repeats = gr.Number(value=1, label="timed runs per ratio (median)", precision=0, elem_id="repeats")
                with gr.Accordion("patch options", open=False):
                    option_controls = [_option_control(name, default) for name, default in options.items()]
                with gr.Row():
                    run_button = gr.Button("Compare", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="generations", columns=4, height="auto", elem_id="gallery", format="png")
                table = gr.Markdown(elem_id="table")
                chart = gr.Plot(label="speed", elem_id="chart")
                diffs = gr.Gallery(label="difference from ratio 0", columns=4, height="auto", elem_id="diffs",
                                   format="png")
        gr.Examples([[p] for p in defaults["prompts"]], inputs=[prompt])
        inputs = [model_box, prompt, negative, seed, steps, guidance, width, height, ratios, repeats, *option_controls]
        run_event = run_button.click(run, inputs, [gallery, diffs, table, chart, status], concurrency_limit=1)
        stop_button.click(request_cancel, None, status, cancels=[run_event], queue=False)
    return app


def _outputs(gallery: Any = None, diffs: Any = None, table: str = "", chart: Any = None, status: str = "") -> tuple:
    """The five outputs in order; a run that failed clears the previous results."""
    return gallery, diffs, table, chart, status


def _whole(value: Any, name: str) -> int:
    """A whole number from a Gradio input, or a clear error."""
    if value is None or float(value) != int(value):
        raise ValueError(f"{name}={value!r} must be a whole number")
    return int(value)
