"""Measure the demo model: prompt adherence on held-out captions vs chance, and ToMe's cost in quality.

For each merge ratio, the same held-out prompts are drawn with the same seeds; the table gives the
adherence (fraction of asked attributes the detector finds) and, against the unmerged images of ratio 0,
the mean PSNR and SSIM. "Chance" scores the unmerged images against other images' prompts: what a model
that ignores its prompt would get. Writes ``quality.md``, ``quality.json`` and two PNG grids to ``--out``.

    python scripts/evaluate_demo.py --count 24 --ratios 0 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import tomesd
from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS, load_pipeline
from tomesd.demo.shapes import evaluation_captions
from tomesd.demo.adherence import adherence, adherence_details
from tomesd.lab.quality import against_baseline


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=24, help="held-out prompts (one image each)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--split", choices=("held_out", "train"), default="held_out")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("samples/demo"))
    args = parser.parse_args()
    if 0.0 not in args.ratios:
        parser.error("--ratios must include 0, the reference for PSNR and SSIM")
    return args


def generate(pipe, prompts: list[str], args: argparse.Namespace, desc: str) -> list[np.ndarray]:
    """One uint8 (H, W, 3) image per prompt; image i always uses seed ``args.seed + i``."""
    images = []
    for start in tqdm(range(0, len(prompts), args.batch), desc=desc):
        chunk = prompts[start:start + args.batch]
        generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, height=args.size, width=args.size, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=generators, output_type="np").images
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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline()
    prompts = evaluation_captions(args.count, args.split, args.seed)
    images: dict[float, list[np.ndarray]] = {}
    rows = []
    for ratio in sorted(args.ratios):
        if ratio:
            tomesd.apply_patch(pipe, ratio=ratio)
        started = time.perf_counter()
        images[ratio] = generate(pipe, prompts, args, f"ratio {ratio}")
        seconds = time.perf_counter() - started
        tomesd.remove_patch(pipe)
        metrics = against_baseline(images[0.0], images[ratio])
        rows.append({"ratio": ratio, "adherence": adherence(images[ratio], prompts), "psnr": metrics.psnr,
                     "ssim": metrics.ssim, "seconds": seconds})
    chance = adherence(images[0.0], prompts[1:] + prompts[:1])
    per_attribute = _per_attribute(adherence_details(images[0.0], prompts))
    report = _markdown(rows, chance, per_attribute, args)
    print(report)
    (args.out / "quality.md").write_text(report)
    (args.out / "quality.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in vars(args).items()}, "prompts": prompts, "chance": chance,
         "per_attribute_ratio0": per_attribute, "rows": rows}, indent=2))
    shown = min(12, len(prompts))
    save_grid(args.out / f"{args.split}_grid.png", [images[0.0][i:i + 6] for i in range(0, shown, 6)],
              [prompts[i:i + 6] for i in range(0, shown, 6)])
    save_grid(args.out / "ratios.png", [[images[r][i] for r in sorted(images)] for i in range(min(4, len(prompts)))],
              [[f"ratio {r}: {prompts[i]}" for r in sorted(images)] for i in range(min(4, len(prompts)))])


def _per_attribute(results) -> dict[str, float]:
    """Adherence of each attribute (size, colour, shape, background) separately."""
    names = sorted({name for r in results for name in r.asked})
    return {n: float(np.mean([r.matched[n] for r in results if n in r.asked])) for n in names}


def _markdown(rows: list[dict], chance: float, per_attribute: dict[str, float], args) -> str:
    lines = [
        f"{args.count} {args.split.replace('_', '-')} prompts, {args.size}x{args.size} px, {args.steps} steps, "
        f"guidance {args.guidance}, float32, {args.threads} thread(s), seeds {args.seed}..{args.seed + args.count - 1}",
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


if __name__ == "__main__":
    main()
