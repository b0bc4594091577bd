"""What merging does to a video model's motion, measured on the demo AnimateDiff pipeline (the demo model
with its trained motion adapter, :mod:`tomesd.demo.motion`); the engine of ``tomesd evaluate-motion``.

The same prompts are drawn as clips with the same seeds unmerged and under every setting (a merge ratio
with patch options, e.g. ``merge_temporal``). Against the unmerged clip of the same prompt and seed:

* **PSNR** of each frame, averaged over the clip (mean over clips, and the worst clip);
* **temporal error**: relative L2 distance of the clip's frame-to-frame differences from the unmerged clip's,
  ``|diff(x) - diff(u)| / |diff(u)|``: what changed in the motion rather than in the pictures (0: the same
  motion; a flicker or a different path raises it even where every frame alone is close);

and on the clip itself:

* **track jitter**: the demo's training clips move the shape in a straight line at constant speed; the RMS
  distance (pixels) of the detected shape's centres from the least-squares line through them over the
  frame index (the unmerged clips' own value is the reference);
* **adherence**: the share of the prompt's attributes the detector finds, over every frame.

:func:`run_evaluation` writes ``motion.md``, ``motion.json`` and ``motion_clips.png`` (frame strips).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from tomesd.demo import DEFAULT_GUIDANCE, DEFAULT_STEPS
from tomesd.demo.adherence import judge_detections, pooled_adherence
from tomesd.demo.detector import detect
from tomesd.demo.motion import CLIP_FRAMES, CLIP_SIZE, check_clip_shape
from tomesd.demo.shapes import evaluation_captions
from tomesd.lab.generation import GenerationSettings, check_ratio, generate, unpatch
from tomesd.lab.quality import psnr
from tomesd.patch.diffusers import OPTIONS

__all__ = ["STANDARD_VARIANTS", "ClipScores", "MotionEvaluation", "centre_jitter", "run_evaluation",
           "temporal_error", "track_jitter"]

#: The settings measured by default besides the unmerged clips, each spelled out (not "the defaults", so a
#: report reads the same after a default changes): the spatial blocks only, the motion modules on merged
#: places too, and each of those with one plan for all frames.
STANDARD_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("merge_temporal=False", {"merge_temporal": False}),
    ("merge_temporal=True", {"merge_temporal": True}),
    ("merge_temporal=False, share_frames=True", {"merge_temporal": False, "share_frames": True}),
    ("merge_temporal=True, share_frames=True", {"merge_temporal": True, "share_frames": True}),
)


@dataclass(frozen=True)
class MotionEvaluation:
    """What one evaluation draws and where it writes (recorded in ``motion.json``).

    Attributes:
        count: held-out prompts, one clip each; clip ``i`` uses seed ``seed + i``.
        ratio: the merge ratio of every setting (default: the patch's default ratio).
        variants: (label, patch options) of each setting.
        frames, size, steps, guidance: the clips' sampling settings.
        seed: first seed; also picks the prompts.
        threads: torch CPU threads.
        out: the output folder.
        adapter: a folder of ``tomesd train-demo-motion --out`` (None: the shipped adapter).
    """

    count: int = 16
    ratio: float = OPTIONS["ratio"]
    variants: tuple[tuple[str, dict[str, Any]], ...] = STANDARD_VARIANTS
    frames: int = CLIP_FRAMES
    size: int = CLIP_SIZE
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    threads: int = 1
    out: Path = field(default_factory=lambda: Path("outputs/motion_eval"))
    adapter: Path | None = None

    def __post_init__(self) -> None:
        if check_ratio(self.ratio) == 0:
            raise ValueError("ratio must be above 0: the unmerged clips are always drawn as the reference")
        for name in ("count", "steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        check_clip_shape(self.frames, self.size)
        labels = [label for label, _ in self.variants]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"variants need distinct labels, got {labels}")


def temporal_error(clip: Sequence[Any], reference: Sequence[Any]) -> float:
    """Relative L2 distance of ``clip``'s frame-to-frame differences from ``reference``'s (frames as PIL
    images or uint8 (H, W, 3) arrays; 0 when both move alike, whatever their frames' own difference).

    Raises:
        ValueError: the clips differ in length or frame size, or have fewer than 2 frames.
    """
    x, u = _stack(clip), _stack(reference)
    if x.shape != u.shape or len(x) < 2:
        raise ValueError(f"need two clips of the same shape with at least 2 frames, got {x.shape} and {u.shape}")
    dx, du = np.diff(x, axis=0), np.diff(u, axis=0)  # (F - 1, H, W, 3)
    return float(np.linalg.norm(dx - du) / max(np.linalg.norm(du), 1e-6))


def track_jitter(clip: Sequence[Any]) -> float | None:
    """RMS distance in pixels of the detected shape's centre in each frame from the least-squares straight
    line through them over the frame index; None when a frame shows no shape."""
    return centre_jitter([detect(np.asarray(frame)).centre for frame in clip])


def centre_jitter(centres: Sequence[tuple[float, float] | None]) -> float | None:
    """:func:`track_jitter` from the detected centres, one per frame (None: no shape in that frame)."""
    if any(c is None for c in centres):
        return None
    points = np.array(centres)  # (F, 2): x, y
    index = np.arange(len(points), dtype=np.float64)
    design = np.stack([index, np.ones_like(index)], axis=1)  # (F, 2)
    fit, *_ = np.linalg.lstsq(design, points, rcond=None)
    return float(np.sqrt(((design @ fit - points) ** 2).sum(axis=1).mean()))


def _stack(clip: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(frame, dtype=np.float64) for frame in clip])  # (F, H, W, 3)


@dataclass
class ClipScores:
    """One setting's scores over the clips (lists: one value per clip; ``jitter`` None where a frame showed
    no shape)."""

    label: str
    psnr: list[float] = field(default_factory=list)
    temporal_error: list[float] = field(default_factory=list)
    jitter: list[float | None] = field(default_factory=list)
    adherence: list[float] = field(default_factory=list)

    def add(self, clip: list[Any], reference: list[Any] | None, prompt: str) -> None:
        """Score one clip (``reference``: the unmerged clip, None for the unmerged setting itself)."""
        if reference is not None:
            self.psnr.append(float(np.mean([psnr(a, b) for a, b in zip(clip, reference)])))
            self.temporal_error.append(temporal_error(clip, reference))
        detections = [detect(np.asarray(frame)) for frame in clip]  # once, for the track and the adherence
        self.jitter.append(centre_jitter([d.centre for d in detections]))
        self.adherence.append(pooled_adherence(judge_detections(detections, [prompt] * len(detections))))

    def summary(self) -> dict[str, Any]:
        """Means and worst clips (the lowest PSNR, the highest temporal error), the mean jitter over the
        clips whose every frame shows a shape, and how many do."""
        found = [j for j in self.jitter if j is not None]
        return {
            "label": self.label,
            "psnr_mean": float(np.mean(self.psnr)) if self.psnr else None,
            "psnr_worst": float(np.min(self.psnr)) if self.psnr else None,
            "temporal_error_mean": float(np.mean(self.temporal_error)) if self.temporal_error else None,
            "temporal_error_worst": float(np.max(self.temporal_error)) if self.temporal_error else None,
            "jitter_mean": float(np.mean(found)) if found else None,
            "tracked": f"{len(found)}/{len(self.jitter)}",
            "adherence": float(np.mean(self.adherence)),
        }


def run_evaluation(evaluation: MotionEvaluation, pipe: Any = None) -> str:
    """Draw every prompt's clip unmerged and under every setting, score them, write the report.

    Args:
        evaluation: what to draw and where to write.
        pipe: the demo AnimateDiff pipeline (:func:`tomesd.demo.motion.load_video_pipeline` when None);
            left unpatched.

    Returns:
        The Markdown report (also written to ``motion.md``).
    """
    from tomesd.demo.motion import load_video_pipeline

    torch.set_num_threads(evaluation.threads)
    evaluation.out.mkdir(parents=True, exist_ok=True)
    pipe = load_video_pipeline(adapter=evaluation.adapter) if pipe is None else pipe
    prompts = evaluation_captions(evaluation.count, "held_out", evaluation.seed)
    settings = [("unmerged", 0.0, {})] + [(label, evaluation.ratio, options) for label, options in evaluation.variants]
    scores = {label: ClipScores(label) for label, _, _ in settings}
    shown: dict[str, list[list[Any]]] = {label: [] for label, _, _ in settings}
    try:
        for index, prompt in enumerate(tqdm(prompts, desc="clips")):
            reference = None
            for label, ratio, options in settings:
                clip = _draw(pipe, evaluation, prompt, evaluation.seed + index, ratio, options)
                scores[label].add(clip, reference, prompt)
                reference = clip if reference is None else reference
                if index < 2:
                    shown[label].append(clip)
    finally:
        unpatch(pipe)
    summaries = [scores[label].summary() for label, _, _ in settings]
    report = _markdown(summaries, evaluation)
    (evaluation.out / "motion.md").write_text(report)
    (evaluation.out / "motion.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in asdict(evaluation).items()}, "prompts": prompts,
         "summaries": summaries, "clips": {label: asdict(s) for label, s in scores.items()}}, indent=2))
    _save_strips(evaluation.out / "motion_clips.png", shown, prompts)
    return report


def _draw(pipe: Any, evaluation: MotionEvaluation, prompt: str, seed: int, ratio: float,
          options: dict[str, Any]) -> list[Any]:
    settings = GenerationSettings(prompt=prompt, steps=evaluation.steps, guidance=evaluation.guidance,
                                  width=evaluation.size, height=evaluation.size, frames=evaluation.frames)
    return generate(pipe, settings, seed, ratio, options).frames


def _save_strips(path: Path, shown: dict[str, list[list[Any]]], prompts: list[str]) -> None:
    """Frame strips: for each of the first prompts, one row per setting."""
    from tomesd.lab.demo_eval import save_grid

    rows, titles = [], []
    for index in range(min(len(c) for c in shown.values())):
        for label, clips in shown.items():
            rows.append([np.asarray(frame) for frame in clips[index]])
            titles.append([f"{label}: {prompts[index]}"] + [""] * (len(clips[index]) - 1))
    save_grid(path, rows, titles)


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _markdown(summaries: list[dict[str, Any]], evaluation: MotionEvaluation) -> str:
    e = evaluation
    lines = [
        f"{e.count} held-out prompts, one clip each: {e.frames} frames of {e.size}x{e.size} px, {e.steps} steps, "
        f"guidance {e.guidance}, float32, {e.threads} thread(s), seeds {e.seed}..{e.seed + e.count - 1}; "
        f"every setting at ratio {e.ratio:g}, other options at their defaults",
        "",
        "| setting | PSNR vs unmerged (dB), mean / worst | temporal error, mean / worst | track jitter (px) "
        "| shape in every frame | adherence |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        lines.append(
            f"| {s['label']} | {_number(s['psnr_mean'], 2)} / {_number(s['psnr_worst'], 2)} "
            f"| {_number(s['temporal_error_mean'], 3)} / {_number(s['temporal_error_worst'], 3)} "
            f"| {_number(s['jitter_mean'], 2)} | {s['tracked']} | {s['adherence']:.3f} |")
    lines += ["", "temporal error: relative L2 of the frame-to-frame differences against the unmerged clip's; "
              "track jitter: RMS distance of the detected centres from their best straight line (clips whose "
              "every frame shows a shape)."]
    return "\n".join(lines) + "\n"
