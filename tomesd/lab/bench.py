"""Speed of token merging vs merge ratio and patch options, against the unpatched baseline: the rows and
tables behind ``tomesd bench`` (and ``scripts/benchmark.py``).

Two kinds of measurement, each a function of its own:

* :func:`measure_unet`: one U-Net forward (batch 2 by default: classifier-free guidance's two halves) of the
  full-size Stable Diffusion 1.5 / XL architecture (``sd15`` / ``sdxl``), built from its config with random
  weights (speed does not depend on the weights, so nothing is downloaded);
* :func:`measure_pipeline`: whole text-to-image generations of a real pipeline (the embedded demo model by
  default), with the difference of each image from the unmerged one (PSNR, SSIM).

Every setting is timed in the same process, interleaved with the baseline (ratio 0, unpatched), and
summarised by the median of the repetitions (:func:`tomesd.lab.timing.time_interleaved`). With ``compile`` (a
``torch.compile`` backend) every setting, the baseline included, runs compiled: the model is patched first,
then compiled, and each setting's first call (its compile time, plus one call) is timed apart, before the
interleaved rounds.
:func:`write_results` writes ``benchmark.md`` (Markdown table with the machine and settings),
``benchmark.json`` and ``benchmark.png`` (speedup vs ratio).

The U-Net inputs, the quality images and tomesd 0.1.3's timings come from ``scripts/compare_worker.py``, a
standalone file (it must also run under tomesd 0.1.3, where this package does not exist): these
measurements need a clone of the repository.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

import tomesd
from tomesd.lab.generation import GenerationSettings, call_arguments, compile_module, parse_option, set_ratio, unpatch
from tomesd.lab.loading import DEMO, default_settings, load_pipeline, parse_dtype
from tomesd.lab.timing import execution_device, synchronize, time_interleaved, timed_pipeline_call
from tomesd.patch.diffusers import OPTIONS as PATCH_OPTIONS

# Stable Diffusion 1.5's U-Net (runwayml/stable-diffusion-v1-5, unet/config.json): 859,520,964 parameters.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
# Stable Diffusion XL base 1.0's U-Net (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json):
# 2,567,463,684 parameters. No attention at the first (highest-resolution) level.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
UNET_CONFIGS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}
ARCHS = (*UNET_CONFIGS, "pipeline")
# The clone this module runs from (when it runs from one): the worker and tomesd 0.1.3's environment live there.
CLONE = Path(__file__).resolve().parents[2]
WORKER = CLONE / "scripts" / "compare_worker.py"
TOMESD013_PYTHON = CLONE / ".venv-tomesd013" / "bin" / "python"


@dataclass(frozen=True)
class Setting:
    """One measured setting: a merge ratio with patch options (ratio 0 is the unpatched baseline)."""

    ratio: float
    options: dict[str, Any] = field(default_factory=dict)
    variant: str = "default"

    @property
    def name(self) -> str:
        """Unique label, e.g. ``"ratio 0.5 (mlp)"``."""
        return f"ratio {self.ratio:g}" + ("" if self.variant == "default" else f" ({self.variant})")


@dataclass
class Row:
    """One line of the results."""

    arch: str
    resolution: int
    variant: str
    ratio: float
    median_s: float
    speedup: float
    repeats: int
    psnr: float | None = None
    ssim: float | None = None
    times_s: tuple[float, ...] = ()  # every timed repetition, for the JSON output
    mergeable_share: float | None = None  # of the unpatched forward's time: self-attention + MLP of merged blocks
    compile_s: float | None = None  # compiled runs: the setting's first call (compile time plus one call)


# ---------------------------------------------------------------- settings

def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"label:key=value,key=value"`` -> (label, options), values typed like the option's default.

    Raises:
        ValueError: unknown option, or a value that does not parse.
    """
    label, _, assignments = text.partition(":")
    options: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        try:
            options[key.strip()] = parse_option(key.strip(), value)
        except ValueError as error:
            raise ValueError(f"variant {text!r}: {error}") from None
    return label.strip() or "default", options


def make_settings(ratios: list[float], variants: list[tuple[str, dict[str, Any]]]) -> list[Setting]:
    """The baseline (ratio 0) once, then every non-zero ratio with every variant's options."""
    settings = [Setting(0.0)]
    for label, options in variants:
        settings += [Setting(ratio, options, label) for ratio in sorted(set(ratios)) if ratio > 0]
    return settings


# ---------------------------------------------------------------- U-Net forward (full-size architectures)

def build_unet(arch: str, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> Any:
    """The full-size U-Net of ``arch`` ("sd15" or "sdxl") with seeded random weights, in eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIGS[arch]).to(device=device, dtype=dtype).eval()


def unet_inputs(unet: Any, batch: int, resolution: int, seed: int = 0) -> dict[str, Any]:
    """Random U-Net inputs for ``resolution`` pixels (latents at 1/8), incl. SD XL's extra conditioning: the
    compare worker's, so that both measure the same forward, cast to the U-Net's dtype and device."""
    inputs = _compare_worker().unet_inputs(dict(unet.config), batch, resolution // 8, seed)
    cast = {"device": unet.device, "dtype": unet.dtype}
    for key in ("sample", "encoder_hidden_states"):
        inputs[key] = inputs[key].to(**cast)
    if "added_cond_kwargs" in inputs:
        inputs["added_cond_kwargs"] = {k: v.to(**cast) for k, v in inputs["added_cond_kwargs"].items()}
    return inputs


def check_worker() -> None:
    """Refuse, before anything is measured, to run without ``scripts/compare_worker.py``.

    Raises:
        ValueError: this package is not running from a clone of the repository (an installed copy).
    """
    if not WORKER.is_file():
        raise ValueError(f"the U-Net and quality benchmarks need scripts/compare_worker.py, which is not at {WORKER}: "
                         "run them from a clone of the repository (the pipeline benchmark works anywhere)")


@functools.cache
def _compare_worker() -> Any:
    """``compare_worker.py`` as a module, loaded once. It is a file, not part of the package, because it must also run
    under tomesd 0.1.3's environment, where this package does not exist."""
    import importlib.util

    check_worker()
    spec = importlib.util.spec_from_file_location("compare_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# TODO(block table): which blocks and submodules merge is the patcher's policy, copied here in this one place
# (BasicTransformerBlock, its attn1 and ff, calls with at least min_tokens tokens) until tomesd.patch.diffusers
# offers a public function the benchmark can ask (issue #18, the block-table work).
def timed_calls(unet: Any, inputs: dict[str, Any]) -> tuple[list[tuple[int, float]], float]:
    """One unpatched forward with timing hooks on the self-attention and MLP (``attn1``, ``ff``) of every
    transformer block: (tokens, seconds) of each call, and the whole forward's seconds."""
    calls: list[tuple[int, float]] = []
    started: dict[int, tuple[int, float]] = {}
    handles = []
    sync = torch.accelerator.synchronize if unet.device.type != "cpu" else (lambda: None)

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        sync()
        started[id(module)] = (x.shape[1], time.perf_counter())

    def after(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        sync()
        tokens, start = started.pop(id(module))
        calls.append((tokens, time.perf_counter() - start))

    for block in unet.modules():
        if type(block).__name__ == "BasicTransformerBlock":
            for sub in (block.attn1, block.ff):
                handles += [sub.register_forward_pre_hook(before, with_kwargs=True),
                            sub.register_forward_hook(after, with_kwargs=True)]
    try:
        total = -time.perf_counter()
        with torch.inference_mode():
            unet(**inputs)
        total += time.perf_counter()
    finally:
        for handle in handles:
            handle.remove()
    return calls, total


def mergeable_share(calls: list[tuple[int, float]], total: float, min_tokens: int) -> float:
    """Share of a forward's time (from :func:`timed_calls`) spent in the self-attention and MLP calls with
    at least ``min_tokens`` tokens: what merging can touch with the default policy. If merging made them
    free, the speedup would be ``1 / (1 - share)``."""
    return sum(seconds for tokens, seconds in calls if tokens >= min_tokens) / total


def first_calls(calls: dict[str, Any], prepare: dict[str, Any], device: Any) -> dict[str, float]:
    """Seconds of each setting's first call after its ``prepare``: with a compiled model, its compile time
    (plus one call), measured before the interleaved rounds so that none of them includes compilation."""
    seconds = {}
    for name, call in calls.items():
        prepare[name]()
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        seconds[name] = time.perf_counter() - start
    return seconds


def measure_unet(arch: str, unet: Any, settings: list[Setting], batch: int, resolution: int, repeats: int,
                 warmup: int, compile: str | None = None) -> list[Row]:
    """Median seconds of one U-Net forward per setting, interleaved; speedup against ratio 0; and the
    share of the unpatched time that merging can touch (on the baseline row). With ``compile`` (a backend),
    every setting runs the U-Net compiled after patching, and each setting's compile time is a row field."""
    inputs = unet_inputs(unet, batch, resolution)
    model = unet if compile is None else compile_module(unet, compile)

    def forward() -> None:
        with torch.inference_mode():
            model(**inputs)

    calls = {s.name: forward for s in settings}
    prepare = {s.name: (lambda s=s: set_ratio(unet, s.ratio, s.options)) for s in settings}
    compile_s = first_calls(calls, prepare, unet.device) if compile else {}
    timings = time_interleaved(calls, repeats, warmup, unet.device, progress=True, prepare=prepare)
    tomesd.remove_patch(unet)
    base = timings[settings[0].name]
    rows = [Row(arch, resolution, s.variant, s.ratio, timings[s.name].median, timings[s.name].speedup_over(base),
                repeats, times_s=timings[s.name].seconds, compile_s=compile_s.get(s.name)) for s in settings]
    rows[0].mergeable_share = mergeable_share(*timed_calls(unet, inputs), PATCH_OPTIONS["min_tokens"])
    return rows


def speed_spec(arch: str, resolution: int, batch: int, repeats: int, threads: int,
               settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker's ``speed`` spec: ``arch``'s full-size U-Net at ``resolution`` pixels, ``settings`` as
    ``{"label": ..., "options": {...}}``."""
    return {"config": UNET_CONFIGS[arch], "latent": resolution // 8, "batch": batch, "threads": threads,
            "repeats": repeats, "settings": settings}


def images_spec(model: Path, prompts: list[str], seed: int, threads: int, out: Path,
                settings: list[dict[str, Any]], unpatched: bool = True) -> dict[str, Any]:
    """The worker's ``images`` spec: ``prompts`` drawn with the pipeline folder ``model`` at the demo model's
    sampling settings, unpatched (unless ``unpatched`` is False) and under every setting, into ``out``."""
    from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS

    return {"mode": "images", "model": str(model), "prompts": prompts, "seed": seed, "size": DEFAULT_SIZE,
            "steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "batch": 8, "threads": threads, "out": str(out),
            "unpatched": unpatched, "settings": settings}


def run_worker(python: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``compare_worker.py`` with ``python`` (this environment's or tomesd 0.1.3's) on ``spec``."""
    check_worker()
    done = subprocess.run([str(python), str(WORKER)], input=json.dumps(spec), stdout=subprocess.PIPE, text=True,
                          check=True)
    return json.loads(done.stdout)


def measure_tomesd013(arch: str, python: Path, ratios: list[float], batch: int, resolution: int, repeats: int,
                      threads: int) -> list[Row]:
    """The same U-Net forward patched by the original tomesd 0.1.3, timed in its own environment
    (``scripts/setup_tomesd013.sh``; both packages import as ``tomesd``) by ``compare_worker.py``,
    interleaved with its own unpatched baseline."""
    settings = [{"label": f"{r:g}", "options": {"ratio": r}} for r in ratios if r > 0]
    result = run_worker(python, speed_spec(arch, resolution, batch, repeats, threads, settings))
    label = f"tomesd {result['tomesd']}"
    base = statistics.median(result["baseline_s"])
    rows = [Row(arch, resolution, label, 0.0, base, 1.0, repeats, times_s=tuple(result["baseline_s"]))]
    for setting in result["settings"]:
        rows.append(Row(arch, resolution, label, float(setting["label"]), statistics.median(setting["times_s"]),
                        setting["speedup"], repeats, times_s=tuple(setting["times_s"])))
    return rows


# ---------------------------------------------------------------- whole pipeline (demo or user model)

def measure_pipeline(pipe: Any, settings: list[Setting], gen: GenerationSettings, seed: int, repeats: int,
                     warmup: int, arch: str, compile: str | None = None) -> list[Row]:
    """Median seconds of whole generations per setting, interleaved, with PSNR/SSIM of each setting's image
    against the ratio-0 image (same prompt and seed). With ``compile`` (a backend), the pipeline's denoiser
    is compiled after patching at every setting, and each setting's compile time is a row field."""
    from tomesd.lab.quality import against_baseline

    images: dict[str, Any] = {}

    def generation(name: str):
        def run() -> None:
            arguments = call_arguments(pipe, gen, torch.Generator("cpu").manual_seed(seed))
            output, _ = timed_pipeline_call(pipe, **arguments)
            images[name] = output.images[0]
        return run

    calls = {s.name: generation(s.name) for s in settings}
    prepare = {s.name: (lambda s=s: set_ratio(pipe, s.ratio, s.options, compile)) for s in settings}
    device = execution_device(pipe)
    try:
        compile_s = first_calls(calls, prepare, device) if compile else {}
        timings = time_interleaved(calls, repeats, warmup, device, progress=True, prepare=prepare)
    finally:
        unpatch(pipe)
    base_name = settings[0].name
    base = timings[base_name]
    rows = []
    for s in settings:
        metrics = against_baseline([images[base_name]], [images[s.name]])
        timing = timings[s.name]
        rows.append(Row(arch, gen.width, s.variant, s.ratio, timing.median, timing.speedup_over(base), repeats,
                        metrics.psnr, metrics.ssim, timing.seconds, compile_s=compile_s.get(s.name)))
    return rows


# ---------------------------------------------------------------- quality on the demo model

@dataclass
class QualityRow:
    """One setting's images on the demo model, against the same implementation's unpatched images."""

    implementation: str
    variant: str
    ratio: float
    adherence: float
    psnr: float
    ssim: float


def quality_settings(settings: list[Setting]) -> dict[str, Setting]:
    """Worker labels -> this project's merged settings (the unpatched baseline is drawn anyway)."""
    return {s.name: s for s in settings if s.ratio > 0}


def measure_quality(python: Path, settings: dict[str, Setting], prompts: list[str], seed: int,
                    workdir: Path) -> list[QualityRow]:
    """Draw ``prompts`` on the demo model unpatched and under every setting, with the tomesd that
    ``python`` imports, and score the images: adherence, and PSNR/SSIM against the unpatched ones."""
    from PIL import Image

    from tomesd.demo import DEMO_MODEL_DIR
    from tomesd.demo.adherence import adherence
    from tomesd.lab.quality import against_baseline

    workers = [{"label": name, "options": {"ratio": s.ratio, **s.options}} for name, s in settings.items()]
    result = run_worker(python, images_spec(DEMO_MODEL_DIR, prompts, seed, torch.get_num_threads(), workdir,
                                            workers))
    images = {label: [Image.open(f).convert("RGB") for f in files] for label, files in result["images"].items()}
    reference = images.pop("unpatched")
    implementation = f"tomesd {result['tomesd']}"
    rows = [QualityRow(implementation, "unpatched", 0.0, adherence(reference, prompts), float("inf"), 1.0)]
    for label, drawn in images.items():
        setting, metrics = settings[label], against_baseline(reference, drawn)
        rows.append(QualityRow(implementation, setting.variant, setting.ratio, adherence(drawn, prompts),
                               metrics.psnr, metrics.ssim))
    return rows


def run_quality(settings: list[Setting], count: int, seed: int = 0,
                compare_013: Path | None = None) -> list[QualityRow]:
    """Quality of this project's settings on ``count`` held-out demo prompts, and of tomesd 0.1.3 at the same
    ratios when ``compare_013`` (its environment's interpreter) is given."""
    from tomesd.demo.shapes import evaluation_captions

    prompts = evaluation_captions(count, "held_out", seed)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_quality(Path(sys.executable), quality_settings(settings), prompts, seed, Path(tmp, "ours"))
        if compare_013:
            ratios = sorted({s.ratio for s in settings if s.ratio > 0})
            original = {f"{r:g}": Setting(r, {}, "default") for r in ratios}
            rows += measure_quality(compare_013, original, prompts, seed, Path(tmp, "0.1.3"))
    return rows


# ---------------------------------------------------------------- outputs

def machine_description(device: str, dtype: str, repeats: int, warmup: int) -> str:
    """What the numbers depend on: hardware, threads, libraries, settings."""
    import diffusers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"device {device} ({name}), torch {torch.__version__} with {torch.get_num_threads()} CPU thread(s), "
        f"diffusers {diffusers.__version__}, tomesd {tomesd.__version__}, dtype {dtype}, "
        f"median of {repeats} interleaved run(s) after {warmup} warm-up round(s); "
        f"machine load average at the end (1, 5, 15 min): {load}"
    )


def markdown_table(rows: list[Row], description: str, unit: str) -> str:
    """The results as Markdown: a context line and one row per setting."""
    with_quality = any(r.psnr is not None for r in rows)
    with_limit = any(r.mergeable_share is not None for r in rows)
    with_compile = any(r.compile_s is not None for r in rows)
    header = (f"| arch | px | variant | ratio | median {unit} (s) | speedup |" + (" limit |" if with_limit else "")
              + (" PSNR (dB) | SSIM |" if with_quality else "") + (" compile (s) |" if with_compile else ""))
    lines = [description, "", header, "|" + " --- |" * (header.count("|") - 1)]
    for r in rows:
        line = f"| {r.arch} | {r.resolution} | {r.variant} | {r.ratio:g} | {r.median_s:.3f} | {r.speedup:.2f}x |"
        if with_limit:
            share = r.mergeable_share
            line += "  |" if share is None else f" {1 / (1 - share):.2f}x ({share:.0%}) |"
        if with_quality:
            line += f" {_decibels(r.psnr)} | {r.ssim:.4f} |"
        if with_compile:
            line += " - |" if r.compile_s is None else f" {r.compile_s:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def quality_table(rows: list[QualityRow], count: int) -> str:
    """The demo-model quality results as Markdown."""
    from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS

    lines = [
        f"Quality on the demo model: {count} held-out prompts, {DEFAULT_SIZE} px, {DEFAULT_STEPS} steps, guidance "
        f"{DEFAULT_GUIDANCE:g}, float32; adherence = share of the asked attributes the detector finds; PSNR and "
        "SSIM against the same implementation's unpatched image (same prompt and seed), mean over prompts.",
        "",
        "| implementation | variant | ratio | adherence | PSNR (dB) | SSIM |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.implementation} | {r.variant} | {r.ratio:g} | {r.adherence:.3f} | {_decibels(r.psnr)} | "
              f"{r.ssim:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _decibels(value: float | None) -> str:
    return "-" if value is None else "inf" if value == float("inf") else f"{value:.2f}"


def plot_results(rows: list[Row], quality: list[QualityRow], path: Path, title: str) -> None:
    """A PNG of speedup vs ratio, one line per (arch, resolution, variant), the baseline drawn at 1; with a
    second panel of PSNR vs ratio on the demo model when quality was measured."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11 if quality else 6.4, 4.2), layout="constrained")
    speed, *rest = figure.subplots(1, 2 if quality else 1, squeeze=False)[0]
    # ratio-0 rows: this project's baseline (variant "default") and, with --compare-013, tomesd 0.1.3's own
    baselines = {(r.arch, r.resolution, r.variant): r for r in rows if r.ratio == 0}
    for arch, px, variant in dict.fromkeys((r.arch, r.resolution, r.variant) for r in rows if r.ratio > 0):
        base = baselines.get((arch, px, variant)) or baselines[(arch, px, "default")]
        points = [base] + [r for r in rows if (r.arch, r.resolution, r.variant) == (arch, px, variant) and r.ratio > 0]
        speed.plot([p.ratio for p in points], [p.speedup for p in points], marker="o", label=f"{arch} {px}px {variant}")
    speed.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    speed.set(xlabel="merge ratio", ylabel="speedup vs unpatched (x)", title=title)
    speed.title.set_fontsize(9)
    speed.legend(fontsize=7)
    if quality:
        axes = rest[0]
        for implementation, variant in dict.fromkeys((q.implementation, q.variant) for q in quality if q.ratio > 0):
            points = [q for q in quality if (q.implementation, q.variant) == (implementation, variant)]
            axes.plot([q.ratio for q in points], [q.psnr for q in points], marker="o", label=f"{implementation} {variant}")
        axes.set(xlabel="merge ratio", ylabel="PSNR vs unpatched image (dB, higher is closer)",
                 title="image change on the demo model")
        axes.title.set_fontsize(9)
        axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def write_results(rows: list[Row], quality: list[QualityRow], out: Path, description: str, unit: str,
                  quality_count: int = 0) -> str:
    """benchmark.md, benchmark.json and benchmark.png in ``out``; returns the Markdown.

    Args:
        rows: speed rows (:func:`measure_unet`, :func:`measure_pipeline`, :func:`measure_tomesd013`).
        quality: demo-model quality rows (:func:`run_quality`).
        out: the folder (created).
        description: the context line, e.g. from :func:`machine_description`.
        unit: what was timed, e.g. ``"U-Net forward, batch 2"``.
        quality_count: how many prompts ``quality`` drew (for its table's header).
    """
    out.mkdir(parents=True, exist_ok=True)
    description += f"; measured: {unit}"
    table = markdown_table(rows, description, unit) if rows else ""
    if any(r.mergeable_share is not None for r in rows):
        table += ("\nlimit: the speedup if the self-attention and MLP of every block with at least "
                  f"{PATCH_OPTIONS['min_tokens']} tokens cost nothing (their share of the unpatched "
                  "forward in brackets), measured with timing hooks in one extra unpatched forward.\n")
    if any(r.compile_s is not None for r in rows):
        table += ("\ncompile (s): the setting's first call after patching and compiling (compile time plus one call), "
                  "timed before the interleaved rounds; the medians and speedups never include it.\n")
    if quality:
        table += ("\n" if table else "") + quality_table(quality, quality_count)
    (out / "benchmark.md").write_text(table)
    (out / "benchmark.json").write_text(json.dumps(
        {"description": description, "command": " ".join(sys.argv), "rows": [asdict(r) for r in rows],
         "quality": [asdict(q) for q in quality]}, indent=2))
    plot_results(rows, quality, out / "benchmark.png", f"{unit}: {', '.join(sorted({r.arch for r in rows}))}")
    return table


def measure_arch(arch: str, settings: list[Setting], *, model: str = DEMO, resolutions: Sequence[int] = (),
                 batch: int = 2, steps: int | None = None, prompt: str | None = None, seed: int = 0,
                 repeats: int = 5, warmup: int = 1, dtype: str = "float32", device: str = "cpu",
                 compare_013: Path | None = None, compile: str | None = None) -> tuple[list[Row], str]:
    """Measure one architecture of :data:`ARCHS` at every resolution (default: 512 px for sd15, 1024 for sdxl,
    the model's usual for pipeline); returns its rows and the measured unit. ``model``, ``steps`` and
    ``prompt`` are for ``pipeline``; ``compare_013`` adds tomesd 0.1.3's rows for the U-Nets; ``compile``
    (a ``torch.compile`` backend) measures compiled unpatched against compiled patched."""
    rows: list[Row] = []
    compiled = "" if compile is None else f", torch.compile(backend={compile!r})"
    if arch == "pipeline":
        defaults = default_settings(model)
        pipe = load_pipeline(model, device=device, dtype=dtype)
        label = "demo" if model == DEMO else Path(model).name
        for resolution in resolutions or [defaults["size"]]:
            gen = GenerationSettings(prompt or defaults["prompts"][0], "", steps or defaults["steps"],
                                     defaults["guidance"], resolution, resolution)
            rows += measure_pipeline(pipe, settings, gen, seed, repeats, warmup, label, compile)
        return rows, "generation" + compiled
    resolutions = resolutions or [1024 if arch == "sdxl" else 512]
    unet = build_unet(arch, parse_dtype(dtype), device)
    for resolution in resolutions:
        rows += measure_unet(arch, unet, settings, batch, resolution, repeats, warmup, compile)
    if compare_013:
        del unet  # free its memory before the other process builds its own
        ratios = sorted({s.ratio for s in settings})
        for resolution in resolutions:
            rows += measure_tomesd013(arch, compare_013, ratios, batch, resolution, repeats, torch.get_num_threads())
    return rows, f"U-Net forward, batch {batch}{compiled}"
