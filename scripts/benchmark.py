"""Speed of token merging vs merge ratio and patch options, against the unpatched baseline.

Two kinds of measurement, each a function of its own:

* ``sd15`` / ``sdxl``: one U-Net forward (batch 2 by default: classifier-free guidance's two halves) of the
  full-size Stable Diffusion 1.5 / XL architecture, built from its config with random weights (speed does
  not depend on the weights, so nothing is downloaded);
* ``pipeline``: whole text-to-image generations of a real pipeline (``--model``, the embedded demo model by
  default), with the difference of each image from the unmerged one (PSNR, SSIM).

Every setting is timed in the same process, interleaved with the baseline (ratio 0, unpatched), and
summarised by the median of ``--repeats`` runs. Results: ``benchmark.md`` (Markdown table with the
machine and settings), ``benchmark.json`` and ``benchmark.png`` (speedup vs ratio) in ``--out``.

Example::

    python scripts/benchmark.py --arch sd15 --resolution 512 --ratios 0 0.3 0.5 0.7 --out samples/benchmark
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import tomesd
from tomesd.lab.generation import GenerationSettings, check_ratio, parse_option, set_ratio
from tomesd.lab.loading import DEMO, DTYPES, default_settings, load_pipeline, parse_dtype
from tomesd.patch.diffusers import OPTIONS as PATCH_OPTIONS
from tomesd.lab.timing import execution_device, time_interleaved, timed_pipeline_call

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
TOMESD013_PYTHON = Path(__file__).resolve().parents[1] / ".venv-tomesd013" / "bin" / "python"


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


@functools.cache
def _compare_worker() -> Any:
    """``compare_worker.py`` as a module, loaded once. It is a file, not part of the package, because it must also run
    under tomesd 0.1.3's environment, where this package does not exist."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_worker", Path(__file__).with_name("compare_worker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_calls(unet: Any, inputs: dict[str, Any]) -> tuple[list[tuple[int, float]], float]:
    """One unpatched forward with timing hooks on the self-attention and MLP (``attn1``, ``ff``) of every
    transformer block: (tokens, seconds) of each call, and the whole forward's seconds."""
    import time

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


def measure_unet(arch: str, unet: Any, settings: list[Setting], batch: int, resolution: int, repeats: int,
                 warmup: int) -> list[Row]:
    """Median seconds of one U-Net forward per setting, interleaved; speedup against ratio 0; and the
    share of the unpatched time that merging can touch (on the baseline row)."""
    inputs = unet_inputs(unet, batch, resolution)

    def forward() -> None:
        with torch.inference_mode():
            unet(**inputs)

    timings = time_interleaved(
        {s.name: forward for s in settings}, repeats, warmup, unet.device, progress=True,
        prepare={s.name: (lambda s=s: set_ratio(unet, s.ratio, s.options)) for s in settings},
    )
    tomesd.remove_patch(unet)
    base = timings[settings[0].name]
    rows = [Row(arch, resolution, s.variant, s.ratio, timings[s.name].median, timings[s.name].speedup_over(base),
                repeats, times_s=timings[s.name].seconds) for s in settings]
    rows[0].mergeable_share = mergeable_share(*timed_calls(unet, inputs), PATCH_OPTIONS["min_tokens"])
    return rows


def run_worker(python: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``compare_worker.py`` with ``python`` (this environment's or tomesd 0.1.3's) on ``spec``."""
    worker = Path(__file__).with_name("compare_worker.py")
    done = subprocess.run([str(python), str(worker)], input=json.dumps(spec), stdout=subprocess.PIPE, text=True,
                          check=True)
    return json.loads(done.stdout)


def measure_tomesd013(arch: str, python: Path, ratios: list[float], batch: int, resolution: int, repeats: int,
                      threads: int) -> list[Row]:
    """The same U-Net forward patched by the original tomesd 0.1.3, timed in its own environment
    (``scripts/setup_tomesd013.sh``; both packages import as ``tomesd``) by ``compare_worker.py``,
    interleaved with its own unpatched baseline."""
    spec = {
        "config": UNET_CONFIGS[arch], "latent": resolution // 8, "batch": batch, "threads": threads,
        "repeats": repeats, "settings": [{"label": f"{r:g}", "options": {"ratio": r}} for r in ratios if r > 0],
    }
    result = run_worker(python, spec)
    label = f"tomesd {result['tomesd']}"
    base = statistics.median(result["baseline_s"])
    rows = [Row(arch, resolution, label, 0.0, base, 1.0, repeats, times_s=tuple(result["baseline_s"]))]
    for setting in result["settings"]:
        rows.append(Row(arch, resolution, label, float(setting["label"]), statistics.median(setting["times_s"]),
                        setting["speedup"], repeats, times_s=tuple(setting["times_s"])))
    return rows


# ---------------------------------------------------------------- whole pipeline (demo or user model)

def measure_pipeline(pipe: Any, settings: list[Setting], gen: GenerationSettings, seed: int, repeats: int,
                     warmup: int, arch: str) -> list[Row]:
    """Median seconds of whole generations per setting, interleaved, with PSNR/SSIM of each setting's image
    against the ratio-0 image (same prompt and seed)."""
    from tomesd.lab.quality import against_baseline

    images: dict[str, Any] = {}

    def generation(name: str):
        def run() -> None:
            output, _ = timed_pipeline_call(
                pipe, prompt=gen.prompt, negative_prompt=gen.negative_prompt or None,
                num_inference_steps=gen.steps, guidance_scale=gen.guidance, width=gen.width, height=gen.height,
                generator=torch.Generator("cpu").manual_seed(seed),
            )
            images[name] = output.images[0]
        return run

    timings = time_interleaved(
        {s.name: generation(s.name) for s in settings}, repeats, warmup, execution_device(pipe), progress=True,
        prepare={s.name: (lambda s=s: set_ratio(pipe, s.ratio, s.options)) for s in settings},
    )
    tomesd.remove_patch(pipe)
    base_name = settings[0].name
    base = timings[base_name]
    rows = []
    for s in settings:
        metrics = against_baseline([images[base_name]], [images[s.name]])
        rows.append(Row(arch, gen.width, s.variant, s.ratio, timings[s.name].median,
                        timings[s.name].speedup_over(base), repeats, metrics.psnr, metrics.ssim, timings[s.name].seconds))
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


def measure_quality(python: Path, settings: dict[str, Setting], prompts: list[str], args: argparse.Namespace,
                    workdir: Path) -> list[QualityRow]:
    """Draw ``prompts`` on the demo model unpatched and under every setting, with the tomesd that
    ``python`` imports, and score the images: adherence, and PSNR/SSIM against the unpatched ones."""
    from PIL import Image

    from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS, DEMO_MODEL_DIR
    from tomesd.demo.adherence import adherence
    from tomesd.lab.quality import against_baseline

    spec = {
        "mode": "images", "model": str(DEMO_MODEL_DIR), "prompts": prompts, "seed": args.seed, "size": DEFAULT_SIZE,
        "steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "batch": 8, "threads": torch.get_num_threads(),
        "out": str(workdir), "settings": [{"label": name, "options": {"ratio": s.ratio, **s.options}}
                                          for name, s in settings.items()],
    }
    result = run_worker(python, spec)
    images = {label: [Image.open(f).convert("RGB") for f in files] for label, files in result["images"].items()}
    reference = images.pop("unpatched")
    implementation = f"tomesd {result['tomesd']}"
    rows = [QualityRow(implementation, "unpatched", 0.0, adherence(reference, prompts), float("inf"), 1.0)]
    for label, drawn in images.items():
        setting, metrics = settings[label], against_baseline(reference, drawn)
        rows.append(QualityRow(implementation, setting.variant, setting.ratio, adherence(drawn, prompts),
                               metrics.psnr, metrics.ssim))
    return rows


def run_quality(args: argparse.Namespace, settings: list[Setting]) -> list[QualityRow]:
    """Quality of this project's settings, and of tomesd 0.1.3 at the same ratios with ``--compare-013``."""
    import tempfile

    from tomesd.demo.shapes import evaluation_captions

    prompts = evaluation_captions(args.quality, "held_out", args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_quality(Path(sys.executable), quality_settings(settings), prompts, args, Path(tmp, "ours"))
        if args.compare_013:
            ratios = sorted({s.ratio for s in settings if s.ratio > 0})
            original = {f"{r:g}": Setting(r, {}, "default") for r in ratios}
            rows += measure_quality(args.compare_013, original, prompts, args, Path(tmp, "0.1.3"))
    return rows


# ---------------------------------------------------------------- outputs

def machine_description(args: argparse.Namespace) -> str:
    """What the numbers depend on: hardware, threads, libraries, settings."""
    import diffusers

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"device {args.device} ({device}), torch {torch.__version__} with {torch.get_num_threads()} CPU thread(s), "
        f"diffusers {diffusers.__version__}, tomesd {tomesd.__version__}, dtype {args.dtype}, "
        f"median of {args.repeats} interleaved run(s) after {args.warmup} warm-up round(s); "
        f"machine load average at the end (1, 5, 15 min): {load}"
    )


def markdown_table(rows: list[Row], description: str, unit: str) -> str:
    """The results as Markdown: a context line and one row per setting."""
    with_quality = any(r.psnr is not None for r in rows)
    with_limit = any(r.mergeable_share is not None for r in rows)
    header = (f"| arch | px | variant | ratio | median {unit} (s) | speedup |" + (" limit |" if with_limit else "")
              + (" PSNR (dB) | SSIM |" if with_quality else ""))
    lines = [description, "", header, "|" + " --- |" * (header.count("|") - 1)]
    for r in rows:
        line = f"| {r.arch} | {r.resolution} | {r.variant} | {r.ratio:g} | {r.median_s:.3f} | {r.speedup:.2f}x |"
        if with_limit:
            share = r.mergeable_share
            line += "  |" if share is None else f" {1 / (1 - share):.2f}x ({share:.0%}) |"
        if with_quality:
            line += f" {_decibels(r.psnr)} | {r.ssim:.4f} |"
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


def write_results(rows: list[Row], quality: list[QualityRow], args: argparse.Namespace, unit: str) -> str:
    """benchmark.md, benchmark.json and benchmark.png in ``args.out``; returns the Markdown."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    description = machine_description(args) + f"; measured: {unit}"
    table = markdown_table(rows, description, unit) if rows else ""
    if any(r.mergeable_share is not None for r in rows):
        table += ("\nlimit: the speedup if the self-attention and MLP of every block with at least "
                  f"{PATCH_OPTIONS['min_tokens']} tokens cost nothing (their share of the unpatched "
                  "forward in brackets), measured with timing hooks in one extra unpatched forward.\n")
    if quality:
        table += ("\n" if table else "") + quality_table(quality, args.quality)
    (out / "benchmark.md").write_text(table)
    (out / "benchmark.json").write_text(json.dumps(
        {"description": description, "command": " ".join(sys.argv), "rows": [asdict(r) for r in rows],
         "quality": [asdict(q) for q in quality]}, indent=2))
    plot_results(rows, quality, out / "benchmark.png", f"{unit}: {', '.join(sorted({r.arch for r in rows}))}")
    return table


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="*", default=["sd15"], choices=[*UNET_CONFIGS, "pipeline"],
                        help="sd15/sdxl: full-size U-Net forward; pipeline: whole generations of --model; none: "
                             "only --quality")
    parser.add_argument("--model", default=DEMO, help="for --arch pipeline: 'demo' (default), a folder, a "
                        ".safetensors file or a model id")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="patch options to compare, e.g. 'mlp:merge_mlp=true' (repeatable; default: the "
                             "patcher's defaults)")
    parser.add_argument("--resolution", type=int, nargs="+", help="pixels, one run per value (default: 512 for "
                        "sd15, 1024 for sdxl, the model's usual for pipeline)")
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch (default 2: guidance's two halves)")
    parser.add_argument("--steps", type=int, help="pipeline steps (default: the model's usual)")
    parser.add_argument("--prompt", help="pipeline prompt (default: the model's first example)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="also draw N held-out prompts on the demo model under every setting (and tomesd 0.1.3's "
                             "with --compare-013) and report adherence, PSNR and SSIM against the unpatched images")
    parser.add_argument("--out", type=Path, default=Path("benchmark"))
    parser.add_argument("--compare-013", type=Path, metavar="PYTHON", nargs="?", const=TOMESD013_PYTHON,
                        help="also measure tomesd 0.1.3 on the same U-Nets (and demo images) with this interpreter "
                             f"(default {TOMESD013_PYTHON}, made by scripts/setup_tomesd013.sh)")
    return parser


def run_arch(arch: str, args: argparse.Namespace, settings: list[Setting]) -> tuple[list[Row], str]:
    """Measure one architecture at every requested resolution; returns its rows and the measured unit."""
    rows: list[Row] = []
    if arch == "pipeline":
        defaults = default_settings(args.model)
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
        label = "demo" if args.model == DEMO else Path(args.model).name
        for resolution in args.resolution or [defaults["size"]]:
            gen = GenerationSettings(args.prompt or defaults["prompts"][0], "", args.steps or defaults["steps"],
                                     defaults["guidance"], resolution, resolution)
            rows += measure_pipeline(pipe, settings, gen, args.seed, args.repeats, args.warmup, label)
        return rows, "generation"
    resolutions = args.resolution or [1024 if arch == "sdxl" else 512]
    unet = build_unet(arch, parse_dtype(args.dtype), args.device)
    for resolution in resolutions:
        rows += measure_unet(arch, unet, settings, args.batch, resolution, args.repeats, args.warmup)
    if args.compare_013:
        del unet  # free its memory before the other process builds its own
        ratios = sorted({s.ratio for s in settings})
        for resolution in resolutions:
            rows += measure_tomesd013(arch, args.compare_013, ratios, args.batch, resolution, args.repeats,
                                      torch.get_num_threads())
    return rows, f"U-Net forward, batch {args.batch}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the Markdown tables and write the results."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant] or [("default", {})]
        ratios = [check_ratio(ratio) for ratio in args.ratios]
        if args.repeats < 1 or args.warmup < 0 or args.quality < 0:
            raise ValueError("--repeats must be >= 1, --warmup and --quality >= 0")
        for resolution in args.resolution or []:
            if resolution <= 0 or resolution % 8:
                raise ValueError(f"--resolution {resolution} must be a positive multiple of 8")
        if args.compare_013 and not args.compare_013.exists():
            raise ValueError(f"--compare-013: no interpreter at {args.compare_013}; run scripts/setup_tomesd013.sh")
        if not args.arch and not args.quality:
            raise ValueError("nothing to measure: give --arch and/or --quality N")
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(ratios, variants)
    rows: list[Row] = []
    units = []
    for arch in args.arch:
        arch_rows, unit = run_arch(arch, args, settings)
        rows += arch_rows
        units.append(unit)
    quality = run_quality(args, settings) if args.quality else []
    table = write_results(rows, quality, args, " / ".join(dict.fromkeys(units)) or "image quality")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
