"""Throughput of token-merged vs unmerged vision encoders, measured in one process, interleaved: the engine of
``tomesd bench-vision`` (and ``scripts/benchmark_vision.py``).

For each model the unpatched and patched runs alternate (ABBA order, :func:`tomesd.lab.timing.time_interleaved`
with ``alternate``) on the same procedurally drawn images; the speed-up is the ratio of median times.
Agreement of outputs on the same inputs: top-1 agreement and logit cosine for classifiers, embedding cosine
and mask IoU (mask decoder prompted with a grid of points) for SAM. Weights are random (pretrained=False /
checkpoint=None: no hub access), so agreement figures are weak evidence about accuracy.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import tomesd
from tomesd.lab.timing import time_interleaved
from tomesd.lab.visualize import drawn_images

__all__ = ["CASES", "Case", "compiled_markdown", "markdown", "measure", "measure_compiled", "plot", "run_benchmark"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Case:
    """A model and its input batch, timed unpatched and with each tomesd setting (one table row each)."""

    label: str
    family: str  # "timm" or "sam"
    model_name: str
    batch: int
    resolution: int
    settings: tuple[dict, ...]
    target: float | None = None


CASES = {
    "deit_s": Case("DeiT-S/16", "timm", "deit_small_patch16_224", 32, 224, ({"r": 13},), 1.5),
    "deit_b": Case("DeiT-B/16", "timm", "deit_base_patch16_224", 16, 224, ({"r": 13},)),
    "vit_l": Case("ViT-L/16", "timm", "vit_large_patch16_224", 8, 224, ({"r": 7},)),
    "sam_b": Case("SAM ViT-B encoder", "sam", "vit_b", 1, 1024,
                  ({"sx": 2, "sy": 2}, {"sx": 2, "sy": 2, "merge_mlp": True}), 2.0),
}


def to_tensor(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def build(case: Case) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(object to patch, module to time, input batch) for a case."""
    torch.manual_seed(0)
    images = to_tensor(drawn_images(case.batch, case.resolution))
    if case.family == "timm":
        import timm

        model = timm.create_model(case.model_name, pretrained=False).eval()
        return model, model, images
    from segment_anything import sam_model_registry

    sam = sam_model_registry[case.model_name](checkpoint=None).eval()
    return sam, sam.image_encoder, images


def _switch_to(model: torch.nn.Module, options: dict | None) -> Callable[[], None]:
    """A callable putting ``model`` under ``options`` (None: unpatched)."""
    def switch() -> None:
        tomesd.remove_patch(model)
        if options is not None:
            tomesd.apply_patch(model, **options)
    return switch


def measure(case: Case, repeats: int) -> list[dict]:
    """Median times of the unpatched model and of each setting, interleaved (the order reverses every
    round, after one warm-up round), and the agreement of each setting's outputs with the unpatched ones.
    One dict per setting."""
    model, timed_module, images = build(case)
    variants = (None, *case.settings)  # None: unpatched
    names = ["unpatched", *(options_text(options) for options in case.settings)]
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str) -> Callable[[], None]:
        def forward() -> None:
            outputs[name] = timed_module(images)
        return forward

    with torch.inference_mode():
        timings = time_interleaved({name: run(name) for name in names}, repeats, warmup=1, progress=True,
                                   prepare={name: _switch_to(model, o) for name, o in zip(names, variants)},
                                   alternate=True)
        flops = [flops_per_image(model, timed_module, images[:1], options) for options in variants]
        reference = outputs[names[0]]
        spread = spread_of(case, reference)
        base = timings[names[0]].median
        return [
            {"case": case, "options": options, "base_s": base, "tome_s": timings[name].median,
             "speedup": timings[name].speedup_over(timings[names[0]]), "flop_ratio": flops[0] / flops[index],
             "spread": spread, **agreement_of(case, model, reference, outputs[name])}
            for index, (name, options) in enumerate(zip(names[1:], case.settings), start=1)
        ]


def flops_per_image(model: torch.nn.Module, timed_module: torch.nn.Module, image: torch.Tensor,
                    options: dict | None) -> int:
    """Matmul/convolution/attention FLOPs of one forward on one image (torch's FlopCounterMode);
    ``options=None`` counts the unpatched model. Leaves the model unpatched."""
    tomesd.remove_patch(model)
    if options is not None:
        tomesd.apply_patch(model, **options)
    with FlopCounterMode(display=False) as counter:
        timed_module(image)
    tomesd.remove_patch(model)
    return counter.get_total_flops()


def spread_of(case: Case, reference: torch.Tensor) -> float | None:
    """Mean cosine between the unpatched outputs of different images: what "unrelated" looks like."""
    if case.batch < 2:
        return None
    flat = reference.flatten(1)
    similarity = F.cosine_similarity(flat[:, None], flat[None], dim=-1)  # (B, B)
    return ((similarity.sum() - similarity.diagonal().sum()) / (case.batch * (case.batch - 1))).item()


def agreement_of(case: Case, model: torch.nn.Module, reference: torch.Tensor, merged: torch.Tensor) -> dict:
    """How close the merged outputs are to the unmerged ones on the same inputs."""
    if case.family == "timm":
        return {
            "top1": (reference.argmax(-1) == merged.argmax(-1)).float().mean().item(),
            "cosine": F.cosine_similarity(reference, merged, dim=-1).mean().item(),
        }
    return {
        "cosine": F.cosine_similarity(reference.flatten(1), merged.flatten(1)).mean().item(),
        "mask_iou": mask_iou(model, reference, merged, case.resolution),
    }


def mask_iou(sam: torch.nn.Module, reference: torch.Tensor, merged: torch.Tensor, resolution: int) -> float:
    """Mean IoU of single-mask predictions from both embeddings, prompted by a 4×4 grid of points."""
    ticks = (torch.arange(4) + 0.5) * resolution / 4
    points = torch.cartesian_prod(ticks, ticks)[:, None, :]  # (16, 1, 2), one point per prompt
    labels = torch.ones(points.shape[:2], dtype=torch.int)
    sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    masks = []
    for embedding in (reference, merged):
        low_res, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
        masks.append(low_res > sam.mask_threshold)  # (16, 1, 256, 256)
    intersection = (masks[0] & masks[1]).flatten(1).sum(-1)
    union = (masks[0] | masks[1]).flatten(1).sum(-1)
    return (intersection / union.clamp_min(1)).float().mean().item()


def measure_compiled(case: Case, repeats: int, backend: str = "inductor") -> list[dict]:
    """Compiled unpatched vs compiled patched (``torch.compile(fullgraph=True)``), with the same two eager
    models timed alongside, all four interleaved by :func:`tomesd.lab.timing.time_interleaved` (medians).

    Each compiled model's first call (dynamo tracing plus ``backend`` codegen, and one run) is timed on
    its own and left out of the medians. Each setting patches its own deep copy of the model, so no
    compiled graph is ever re-guarded by a patch change. One dict per setting.
    """
    model, timed_module, images = build(case)
    with torch.inference_mode():
        base_flops = flops_per_image(model, timed_module, images[:1], None)
        base, base_compile_s = _first_compiled_call(timed_module, images, backend)
        rows = []
        for options in case.settings:
            flop_ratio = base_flops / flops_per_image(model, timed_module, images[:1], options)
            patched_model, patched_module = copy.deepcopy((model, timed_module))
            tomesd.apply_patch(patched_model, **options)
            tome, tome_compile_s = _first_compiled_call(patched_module, images, backend)
            deviation = (tome(images) - patched_module(images)).abs().max().item()
            timings = time_interleaved(
                {"eager": lambda: timed_module(images), "eager_tome": lambda m=patched_module: m(images),
                 "compiled": lambda: base(images), "compiled_tome": lambda m=tome: m(images)},
                repeats=repeats, warmup=1)
            rows.append({"case": case, "options": options, "backend": backend,
                         "base_s": timings["compiled"].median, "tome_s": timings["compiled_tome"].median,
                         "speedup": timings["compiled_tome"].speedup_over(timings["compiled"]),
                         "eager_speedup": timings["eager_tome"].speedup_over(timings["eager"]),
                         "flop_ratio": flop_ratio, "base_compile_s": base_compile_s, "tome_compile_s": tome_compile_s,
                         "max_deviation": deviation})
        return rows


def _first_compiled_call(module: torch.nn.Module, images: torch.Tensor, backend: str) -> tuple[Callable, float]:
    """(compiled module, seconds of its first call: compilation plus one forward)."""
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    start = time.perf_counter()
    compiled(images)
    return compiled, time.perf_counter() - start


def compiled_markdown(rows: list[dict], threads: int, repeats: int) -> str:
    """The table of :func:`measure_compiled` rows."""
    header = (
        f"Compiled unpatched vs compiled tomesd (torch.compile fullgraph=True, backend {rows[0]['backend']}), in one "
        f"process, interleaved with the same two models eager, median of {repeats} runs; fp32, {threads} thread(s), "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}; random weights. Compile time: "
        "the first call, not in the medians. FLOP ratio: unpatched / tomesd matmul, convolution and attention "
        "FLOPs (torch's FlopCounterMode), the speed-up a FLOP-bound forward would get.\n\n"
        "| model | input | tomesd options | compiled img/s | compiled tomesd img/s | speed-up compiled "
        "| speed-up eager | FLOP ratio | compile s (unpatched / tomesd) | max abs compiled - eager (tomesd) |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {row['case'].label} | bs {row['case'].batch}, {row['case'].resolution} px | {options_text(row['options'])} "
        f"| {row['case'].batch / row['base_s']:.3g} | {row['case'].batch / row['tome_s']:.3g} | {row['speedup']:.2f}x "
        f"| {row['eager_speedup']:.2f}x | {row['flop_ratio']:.2f}x "
        f"| {row['base_compile_s']:.1f} / {row['tome_compile_s']:.1f} "
        f"| {row['max_deviation']:.1e} |"
        for row in rows
    ]
    return header + "\n".join(lines) + "\n"


def options_text(options: dict) -> str:
    """``{"sx": 2, "sy": 2}`` -> ``"sx=2, sy=2"``."""
    return ", ".join(f"{key}={value}" for key, value in options.items())


def markdown(rows: list[dict], threads: int, repeats: int) -> str:
    """The rows of :func:`measure` as a Markdown table headed by the machine and settings."""
    header = (
        f"Unpatched vs tomesd in one process, interleaved, median of {repeats} runs; fp32, {threads} thread(s), "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}; random weights.\n\n"
        "| model | input | tomesd options | unpatched img/s | tomesd img/s | speed-up | FLOP ratio | target "
        "| agreement |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for row in rows:
        case = row["case"]
        agree = (f"top-1 {row['top1']:.1%}, logit cos {row['cosine']:.4f}" if "top1" in row
                 else f"embedding cos {row['cosine']:.4f}, mask IoU {row['mask_iou']:.3f}")
        if row["spread"] is not None:
            agree += f" (cos between different images: {row['spread']:.2f})"
        target = f">= {case.target}x" if case.target else "-"
        lines.append(
            f"| {case.label} | bs {case.batch}, {case.resolution} px | {options_text(row['options'])} "
            f"| {case.batch / row['base_s']:.3g} | {case.batch / row['tome_s']:.3g} | {row['speedup']:.2f}x "
            f"| {row['flop_ratio']:.2f}x "
            f"| {target} | {agree} |"
        )
    return header + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """A PNG bar chart of each row's speed-up, its target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['case'].label}\n{options_text(row['options'])}" for row in rows]
    speedups = [row["speedup"] for row in rows]
    fig, ax = plt.subplots(figsize=(1.9 * len(rows) + 2, 4))
    bars = ax.bar(range(len(rows)), speedups, color="#4c72b0")
    for index, row in enumerate(rows):
        if row["case"].target:
            ax.hlines(row["case"].target, index - 0.4, index + 0.4, colors="#c44e52", linestyles="--")
    ax.bar_label(bars, fmt="%.2fx")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("throughput vs unpatched")
    ax.set_title("tomesd speed-up on CPU (dashed: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_benchmark(models: list[str], repeats: int, threads: int, out: Path, compile_backend: str | None = None) -> str:
    """Measure ``models`` (keys of :data:`CASES`) in order, rewriting ``benchmark.md`` / ``.png`` in ``out``
    after each one (a partial run keeps its rows) and printing the table; returns the final Markdown.

    With ``compile_backend`` (e.g. "inductor"), time compiled unpatched vs compiled patched instead
    (:func:`measure_compiled`) into ``benchmark_compile.md``."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = [], ""
    if compile_backend:
        for name in models:
            rows += measure_compiled(CASES[name], repeats, compile_backend)
            table = compiled_markdown(rows, threads, repeats)
            (out / "benchmark_compile.md").write_text(table)  # a partial run keeps its rows
            print(table, flush=True)
        return table
    for name in models:
        rows += measure(CASES[name], repeats)
        table = markdown(rows, threads, repeats)
        (out / "benchmark.md").write_text(table)
        plot(rows, out / "benchmark.png")
        print(table, flush=True)
    return table
