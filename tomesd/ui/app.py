"""The Gradio A/B app: one prompt and seed generated at several merge ratios, side by side, with speed and
image-difference numbers. Build it with :func:`build_app`; ``python -m ui`` launches it."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import gradio as gr

from tomesd.lab.generation import (
    DEFAULT_COMPILE_BACKEND, GenerationSettings, check_compile_backend, is_video_pipeline, latent_scale, parse_option,
    patch_option_defaults,
)
from tomesd.lab.loading import DEMO, default_settings, load_pipeline
from tomesd.lab.sweep import compare_ratios, parse_ratios, results_table, speed_chart

from .limits import SEED_MAX, OverBudget, ServerLimits, check_strides, number, whole

__all__ = ["Cancelled", "ModelCache", "build_app"]

RATIO_CHOICES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
DEFAULT_RATIOS = [0.0, 0.3, 0.5, 0.7]
STOP_REQUESTED = "Stop requested: the run ends after its current step (or before it starts, if it waits in the queue)."


class Cancelled(Exception):
    """Raised inside a generation when the user pressed Stop."""


class ModelCache:
    """Holds the one loaded pipeline, reloading only when another model is asked for."""

    def __init__(self, device: str, dtype: str) -> None:
        self.device = device
        self.dtype = dtype
        self._source: tuple[str, str | None] | None = None
        self._pipe: Any = None

    def get(self, source: str, config: str = "") -> Any:
        """The pipeline for ``source`` (and, for a single file, ``config``; see
        :func:`tomesd.lab.loading.load_pipeline`), loaded on first use."""
        wanted = (source.strip() or DEMO, config.strip() or None)
        if wanted != self._source:
            self._pipe, self._source = None, None  # free the previous model before loading the next
            self._pipe = load_pipeline(wanted[0], device=self.device, dtype=self.dtype, config=wanted[1])
            self._source = wanted
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
        return whole(value, f"patch option {name}")
    if isinstance(default, float):
        return number(value, f"patch option {name}", 0)
    return parse_option(name, "" if value is None else value)


def _client_gone(app: gr.Blocks, session: str | None) -> bool:
    """Whether Gradio's queue has given up every job of ``session``: it marks them dead when their client's
    event stream closes (a closed tab, a killed API client). Gradio has no public call for this; where its
    queue does not look as expected, nothing counts as gone (the run then ends on Stop or its time budget)."""
    jobs = [job for job_set in getattr(getattr(app, "_queue", None), "active_jobs", None) or [] if job_set
            for job in job_set if getattr(job, "session_hash", None) == session]
    return bool(jobs) and not any(getattr(job, "alive", True) for job in jobs)


def build_app(model: str = DEMO, device: str = "cpu", dtype: str = "float32", config: str | None = None,
              limits: ServerLimits = ServerLimits(), compile_backend: str = DEFAULT_COMPILE_BACKEND) -> gr.Blocks:
    """The app's page and its handlers.

    Args:
        model: the model source shown (and loaded) by default; see :func:`tomesd.lab.loading.load_pipeline`.
        device: where generations run.
        dtype: weights dtype name ("float32", "float16", "bfloat16").
        config: for a single ``.safetensors`` model, its configs (see :func:`tomesd.lab.loading.load_pipeline`).
        limits: what one request may ask (pixels, steps, seconds); checked by the server, whatever the page
            or an API client sends.
        compile_backend: the ``torch.compile`` backend of the page's "compile" checkbox.

    Returns:
        The Gradio Blocks; call ``.queue(default_concurrency_limit=1).launch(...)`` (``python -m ui`` does).
    """
    check_compile_backend(compile_backend)
    defaults = default_settings(model)
    options = patch_option_defaults()
    cache = ModelCache(device, dtype)
    # Pages (sessions) whose user pressed Stop: their run raises Cancelled after its current step, or before it
    # starts if it is still waiting in the queue, and says so.
    cancel_requests: set[str | None] = set()
    # One generation at a time, also when a run outlives its page (a closed tab): the pipeline is shared.
    # Held only between yields, so a generator Gradio abandons can never keep it.
    busy = threading.Lock()

    def checked(values: tuple) -> tuple:
        """The request's input ``values`` (in the order of ``inputs`` below), checked and typed, limits
        included: model source, its config, settings, seed, ratios, timed runs, compile (the backend or None),
        patch options.

        Raises:
            ValueError, TypeError: a value out of range or over a limit, named with what is accepted.
        """
        (model_source, model_config, prompt, negative, seed, steps, guidance, width, height, ratios, repeats,
         compiled, *option_values) = values
        settings = GenerationSettings(prompt, negative or "", whole(steps, "steps", 1, 1000),
                                      number(guidance, "guidance", 0), whole(width, "width", 8),
                                      whole(height, "height", 8))
        ratio_list = parse_ratios(ratios or [])
        runs = whole(repeats, "timed runs per ratio", 1)
        limits.check(settings.width, settings.height, settings.steps, runs, len(ratio_list))
        patch_options = {
            name: _option_value(name, default, value) for (name, default), value in zip(options.items(), option_values)
        }
        return (model_source or "", model_config or "", settings, whole(seed, "seed", 0, SEED_MAX), ratio_list, runs,
                compile_backend if compiled else None, patch_options)

    def compare(session: str | None, values: tuple, progress: gr.Progress) -> tuple:
        """Run one comparison on the page's input ``values`` and return the outputs: results, or a status
        saying why there are none. Bad values are refused before the run waits for the pipeline."""
        try:
            model_source, model_config, settings, seed, ratios, repeats, compile, patch_options = checked(values)
        except (ValueError, TypeError) as error:
            return _outputs(status=f"**Error:** {error}")
        with busy:
            try:
                if session in cancel_requests or _client_gone(app, session):  # Stop pressed / gone while queued
                    raise Cancelled
                progress(0, desc=f"loading model {model_source or DEMO}")
                pipe = cache.get(model_source, model_config)
                if is_video_pipeline(pipe):
                    raise ValueError(f"{type(pipe).__name__} makes videos; the app compares images. Use tomesd "
                                     "generate, which writes each video's frames as a GIF with the same speed log")
                check_strides(patch_options, settings.width, settings.height, latent_scale(pipe))
                start = time.monotonic()

                def on_step(stage: str, step: int, total: int) -> None:
                    if session in cancel_requests or _client_gone(app, session):
                        raise Cancelled
                    if time.monotonic() - start > limits.max_seconds:
                        raise limits.over_budget(time.monotonic() - start)
                    progress((step, total), desc=stage)

                results = compare_ratios(pipe, settings, seed, ratios, patch_options, repeats, on_step=on_step,
                                         compile=compile)
            except Cancelled:
                return _outputs(status="Cancelled.")
            except OverBudget as error:
                return _outputs(status=f"**Stopped:** {error}")
            except Exception as error:  # shown in the page; the app keeps serving
                return _outputs(status=f"**Error:** {error}")
        return _outputs(
            gallery=[(r.image, r.caption) for r in results],
            diffs=[(r.diff_map, f"ratio {r.label}: |difference| x4 vs ratio 0") for r in results],
            table=results_table(results),
            chart=speed_chart(results),
            status=f"Done: {len(results)} ratios, {repeats} timed run(s) each, medians shown"
                   + (f"; denoiser compiled ({compile}), compile time apart." if compile else "."),
        )

    # ``request`` comes first: Gradio injects it only as a positional parameter.
    def run(request: gr.Request, *values: Any, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        yield _outputs(status="Working…")
        yield compare(request.session_hash, values, progress)

    def forget_stop(request: gr.Request) -> str:
        """A Stop pressed when nothing of this page was running does not cancel its next run; clears its note."""
        cancel_requests.discard(request.session_hash)
        return ""

    def request_cancel(request: gr.Request) -> str:
        cancel_requests.add(request.session_hash)
        return STOP_REQUESTED

    with gr.Blocks(title="tomesd A/B") as app:
        gr.Markdown("# tomesd A/B: token merging ratios side by side")
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Textbox(value=model, label="model: 'demo', a diffusers folder, a .safetensors "
                                       "file or a model id", elem_id="model")
                config_box = gr.Textbox(value=config or "", label="configs for a .safetensors file (optional): a "
                                        "diffusers folder or model id of its architecture", elem_id="config")
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
                compiled = gr.Checkbox(value=False, label=f"compile the denoiser after patching (torch.compile, "
                                       f"backend {compile_backend}; compile time shown apart)", elem_id="compile")
                with gr.Accordion("patch options", open=False):
                    option_controls = [_option_control(name, default) for name, default in options.items()]
                with gr.Row():
                    run_button = gr.Button("Compare", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                stop_note = gr.Markdown(elem_id="stop-note")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="generations", columns=4, height="auto", elem_id="gallery", format="png")
                table = gr.Markdown(elem_id="table")
                chart = gr.Plot(label="speed", elem_id="chart")
                diffs = gr.Gallery(label="difference from ratio 0", columns=4, height="auto", elem_id="diffs",
                                   format="png")
        gr.Examples([[p] for p in defaults["prompts"]], inputs=[prompt])
        inputs = [model_box, config_box, prompt, negative, seed, steps, guidance, width, height, ratios, repeats,
                  compiled, *option_controls]
        run_button.click(forget_stop, None, stop_note, queue=False).then(
            run, inputs, [gallery, diffs, table, chart, status], concurrency_limit=1
        )
        # Outside the queue, so it acts while a run holds the queue's one slot. Not Gradio's ``cancels``: that
        # drops the run's outputs at once while its step goes on; the run itself reports "Cancelled." instead.
        # Its note goes to its own element: written to the status, a reply arriving after the run's "Cancelled."
        # (the run can stop within a step, before the reply reaches the page) would overwrite it for good.
        stop_button.click(request_cancel, None, stop_note, queue=False)
    return app


def _outputs(gallery: Any = None, diffs: Any = None, table: str = "", chart: Any = None, status: str = "") -> tuple:
    """The five outputs in order; a run that failed clears the previous results."""
    return gallery, diffs, table, chart, status
