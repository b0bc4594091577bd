"""Measure the demo model: prompt adherence on held-out captions vs chance, and ToMe's cost in quality; the
engine of ``tomesd evaluate-demo`` (and ``scripts/evaluate_demo.py``).

For each merge ratio, the same held-out prompts are drawn with the same seeds; the table gives the
adherence (fraction of asked attributes the detector finds) and, against the unmerged images of ratio 0,
the mean PSNR and SSIM (:func:`tomesd.lab.quality.against_baseline`). "Chance" scores the unmerged images
against other images' prompts: what a model that ignores its prompt would get. :func:`run_evaluation`
writes ``quality.md``, ``quality.json`` and two PNG grids.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

import tomesd
from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS, load_pipeline
from tomesd.demo.adherence import AdherenceResult, adherence, adherence_details
from tomesd.demo.shapes import evaluation_captions
from tomesd.lab.generation import check_ratio

__all__ = ["DemoEvaluation", "draw_prompts", "run_evaluation", "save_grid"]

SPLITS = ("held_out", "train")


@dataclass(frozen=True)
class DemoEvaluation:
    """What one evaluation draws and where it writes (recorded in ``quality.json``).

    Attributes:
        count: prompts (one image each) from ``split``.
        ratios: merge ratios; must include 0, the reference for PSNR and SSIM.
        split: ``"held_out"`` (captions never trained on) or ``"train"``.
        steps, guidance, size: the demo model's sampling settings.
        batch: prompts per pipeline call.
        seed: image ``i`` always uses seed ``seed + i``; also picks the prompts.
        threads: torch CPU threads.
        out: the output folder.
        textures: prompts from the textured set (striped, checked, dotted, gradient, outlined) instead of
            plain shapes.
        model: a pipeline folder written by ``tomesd train-demo --out`` (None: the shipped demo model).
    """

    count: int = 24
    ratios: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)
    split: str = "held_out"
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    size: int = DEFAULT_SIZE
    batch: int = 8
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("samples/demo"))
    textures: bool = False
    model: Path | None = None

    def __post_init__(self) -> None:
        ratios = tuple(sorted({check_ratio(ratio) for ratio in self.ratios}))
        object.__setattr__(self, "ratios", ratios)
        if 0.0 not in ratios:
            raise ValueError("the ratios must include 0, the reference for PSNR and SSIM")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r}; accepted: {', '.join(SPLITS)}")
        for name in ("count", "steps", "batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.size <= 0 or self.size % 8:
            raise ValueError(f"size={self.size} must be a positive multiple of 8")


def draw_prompts(pipe: Any, prompts: Sequence[str], evaluation: DemoEvaluation, desc: str) -> list[np.ndarray]:
    """One uint8 (H, W, 3) image per prompt; image ``i`` always uses seed ``evaluation.seed + i``."""
    images = []
    for start in tqdm(range(0, len(prompts), evaluation.batch), desc=desc):
        chunk = list(prompts[start:start + evaluation.batch])
        generators = [torch.Generator().manual_seed(evaluation.seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, height=evaluation.size, width=evaluation.size, num_inference_steps=evaluation.steps,
                   guidance_scale=evaluation.guidance, generator=generators, output_type="np").images
        images += [(img * 255).round().astype(np.uint8) for img in out]  # (H, W, 3)
    return images


def save_grid(path: Path, rows: list[list[np.ndarray]], titles: list[list[str]]) -> None:
    """A captioned grid of images as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.5 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")  # also the cells a short last row leaves empty
    for r, (images, names) in enumerate(zip(rows, titles)):
        for c, (image, name) in enumerate(zip(images, names)):
            axes[r][c].imshow(image)
            axes[r][c].set_title(name, fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_evaluation(evaluation: DemoEvaluation, pipe: Any = None) -> str:
    """Draw the prompts at every ratio, score them and write the report, the JSON and the grids.

    Args:
        evaluation: what to draw and where to write.
        pipe: the demo pipeline (loaded when None); left unpatched.

    Returns:
        The Markdown report (also written to ``quality.md``).
    """
    from tomesd.lab.quality import against_baseline

    torch.set_num_threads(evaluation.threads)
    evaluation.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(folder=evaluation.model) if pipe is None else pipe
    prompts = evaluation_captions(evaluation.count, evaluation.split, evaluation.seed, textures=evaluation.textures)
    images: dict[float, list[np.ndarray]] = {}
    rows = []
    for ratio in evaluation.ratios:
        if ratio:
            tomesd.apply_patch(pipe, ratio=ratio)
        started = time.perf_counter()
        try:
            images[ratio] = draw_prompts(pipe, prompts, evaluation, f"ratio {ratio}")
        finally:
            tomesd.remove_patch(pipe)
        seconds = time.perf_counter() - started
        metrics = against_baseline(images[0.0], images[ratio])
        rows.append({"ratio": ratio, "adherence": adherence(images[ratio], prompts), "psnr": metrics.psnr,
                     "ssim": metrics.ssim, "seconds": seconds})
    chance = adherence(images[0.0], prompts[1:] + prompts[:1])
    per_attribute = _per_attribute(adherence_details(images[0.0], prompts))
    report = _markdown(rows, chance, per_attribute, evaluation)
    out = evaluation.out
    (out / "quality.md").write_text(report)
    (out / "quality.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in asdict(evaluation).items()}, "prompts": prompts, "chance": chance,
         "per_attribute_ratio0": per_attribute, "rows": rows}, indent=2))
    shown = min(12, len(prompts))
    save_grid(out / f"{evaluation.split}_grid.png", [images[0.0][i:i + 6] for i in range(0, shown, 6)],
              [prompts[i:i + 6] for i in range(0, shown, 6)])
    save_grid(out / "ratios.png", [[images[r][i] for r in sorted(images)] for i in range(min(4, len(prompts)))],
              [[f"ratio {r}: {prompts[i]}" for r in sorted(images)] for i in range(min(4, len(prompts)))])
    return report


def _per_attribute(results: list[AdherenceResult]) -> dict[str, float]:
    """Adherence of each attribute (size, colour, shape, background, and the textures when asked) separately."""
    names = sorted({name for r in results for name in r.asked})
    return {n: float(np.mean([r.matched[n] for r in results if n in r.asked])) for n in names}


def _markdown(rows: list[dict], chance: float, per_attribute: dict[str, float], evaluation: DemoEvaluation) -> str:
    e = evaluation
    lines = [
        f"{e.count} {e.split.replace('_', '-')} {'textured ' if e.textures else ''}prompts, {e.size}x{e.size} px, "
        f"{e.steps} steps, "
        f"guidance {e.guidance}, float32, {e.threads} thread(s), seeds {e.seed}..{e.seed + e.count - 1}",
        "",
        "| ratio | adherence | PSNR vs ratio 0 (dB) | SSIM vs ratio 0 |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        psnr_text = "inf" if row["ratio"] == 0 else f"{row['psnr']:.2f}"
        ssim_text = "1" if row["ratio"] == 0 else f"{row['ssim']:.3f}"
        lines.append(f"| {row['ratio']:g} | {row['adherence']:.3f} | {psnr_text} | {ssim_text} |")
    lines += ["", f"chance (images scored against other images' prompts): {chance:.3f}",
              "per attribute at ratio 0: " + ", ".join(f"{k} {v:.3f}" for k, v in per_attribute.items())]
    return "\n".join(lines) + "\n"
