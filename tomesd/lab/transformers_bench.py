"""Speed of token-merged vs unmerged transformers vision encoders, in one process, interleaved.

Full-width models with random weights (speed does not depend on them; no hub access), fp32, on CPU
unless ``--device`` says otherwise: VideoMAE-B at 16 frames x 224 px (1568 tokens), ViT-B/16 and
DINOv2-B at 224 px, CLIP ViT-L/14 at 336 px. For each setting: the speed-up (ratio of interleaved medians
against the unpatched model, timed by :func:`tomesd.lab.timing.time_interleaved`), the FLOP ratio (counted by
``torch.utils.flop_counter`` on one sample) and the agreement of outputs with the unpatched model on
procedurally drawn inputs (moving shapes): top-1 agreement and logit cosine for classifiers, embedding
cosine for encoders. With random weights, agreement is weak evidence about accuracy.

Its command line is ``tomesd bench-transformers`` (:mod:`tomesd.cli.bench_transformers`).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import tomesd
from .timing import time_interleaved
from .visualize_video import moving_shapes_clip

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
# VideoMAE: merge hard in the first layers, where the 1568 tokens cost most, then run on 392. The image
# models get a common r (ToMe's r=13 of DeiT/ViT-B, 16, 20) and the largest constant r their depth and
# token count allow (ViT-B/16: 15, DINOv2-B/14: 19, CLIP-L/14 at 336 px: 23)
VIDEO_FRONT_LOADED = [588, 392, 196] + [0] * 9


@dataclass(frozen=True)
class Case:
    """One model, its input and the patch settings timed against it (one table row per setting)."""

    label: str
    model_class: str
    config_class: str
    config: dict[str, Any]
    batch: int
    frames: int  # 0 for image models
    settings: tuple[dict[str, Any], ...]
    target: float
    tiny: dict[str, Any] = field(default_factory=dict)  # config overrides for --tiny


BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
CASES = {
    "videomae_b": Case("VideoMAE-B 16x224", "VideoMAEForVideoClassification", "VideoMAEConfig",
                       dict(BASE, image_size=224, patch_size=16, num_frames=16, tubelet_size=2, num_labels=400),
                       1, 16, ({"r": 100}, {"r": 100, "matching": "spacetime"}, {"r": VIDEO_FRONT_LOADED},
                               {"r": VIDEO_FRONT_LOADED, "matching": "spacetime"}), 3.0,
                       dict(TINY, image_size=32, num_frames=8, num_labels=10)),
    "vit_b16": Case("ViT-B/16 224", "ViTForImageClassification", "ViTConfig",
                    dict(BASE, image_size=224, patch_size=16, num_labels=1000), 8, 0, ({"r": 13}, {"r": 15}), 1.6,
                    dict(TINY, image_size=32, patch_size=8, num_labels=10)),
    "dinov2_b": Case("DINOv2-B/14 224", "Dinov2Model", "Dinov2Config", dict(BASE, image_size=224, patch_size=14),
                     8, 0, ({"r": 16}, {"r": 19}), 1.6, dict(TINY, image_size=32, patch_size=8)),
    "clip_l14_336": Case("CLIP ViT-L/14 336", "CLIPVisionModelWithProjection", "CLIPVisionConfig",
                         dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                              image_size=336, patch_size=14, projection_dim=768), 2, 0, ({"r": 20}, {"r": 23}), 1.6,
                         dict(TINY, image_size=32, patch_size=8, projection_dim=16)),
}
SETTING_TINY_R = {"r": 2}  # --tiny replaces every schedule (the full ones need the full token count)


def build(case: Case, tiny: bool = False, seed: int = 0) -> torch.nn.Module:
    """The case's model with random weights, fp32, eval mode, SDPA attention."""
    import transformers

    config = getattr(transformers, case.config_class)(**{**case.config, **(case.tiny if tiny else {})},
                                                      attn_implementation="sdpa")
    torch.manual_seed(seed)
    return getattr(transformers, case.model_class)(config).eval()


def inputs(case: Case, model: torch.nn.Module, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` normalised moving-shapes inputs: (count, 3, S, S) images or (count, F, 3, S, S) clips."""
    size = model.config.image_size
    frames = model.config.num_frames if case.frames else 1
    clips = [torch.from_numpy(moving_shapes_clip(frames, size, seed=seed + index)) for index in range(count)]
    pixels = torch.stack(clips).float().div(255).permute(0, 1, 4, 2, 3)  # (count, F, 3, S, S)
    pixels = (pixels - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return pixels if case.frames else pixels[:, 0]


def output_of(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What a user reads: logits of a classifier, else the image embedding / pooled output."""
    with torch.no_grad():
        output = model(pixel_values=pixels)
    for name in ("logits", "image_embeds", "pooler_output"):
        if getattr(output, name, None) is not None:
            return output[name]
    raise ValueError(f"{type(model).__name__} returns none of logits / image_embeds / pooler_output")


def agreement(reference: torch.Tensor, merged: torch.Tensor, classifier: bool) -> dict[str, float]:
    """Cosine of outputs (mean over samples) and, for classifiers, the share of equal top-1 predictions."""
    scores = {"cosine": F.cosine_similarity(reference, merged).mean().item()}
    if classifier:
        scores["top1_agreement"] = (reference.argmax(-1) == merged.argmax(-1)).float().mean().item()
    return scores


def flops(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    """FLOPs of one forward on ``pixels``, as torch's flop counter sees them."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=pixels)
    return counter.get_total_flops()


def run_case(case: Case, tiny: bool = False, repeats: int = 5, warmup: int = 1, quality_samples: int = 8,
             device: str = "cpu") -> list[dict[str, Any]]:
    """Time, count and compare every setting of ``case`` against its unpatched model.

    Returns:
        One row per setting: label, setting, tokens, median seconds (unpatched and patched), speedup,
        flop_ratio, agreement scores and whether the target speed-up was met.
    """
    model = build(case, tiny).to(device)
    settings = [SETTING_TINY_R | {k: v for k, v in s.items() if k != "r"} for s in case.settings] if tiny \
        else list(case.settings)
    timed = inputs(case, model, case.batch).to(device)
    quality = inputs(case, model, quality_samples, seed=100).to(device)
    one = timed[:1]
    reference, reference_flops = output_of(model, quality), flops(model, one)
    names = [f"setting{index}" for index in range(len(settings))]
    patches = {name: (lambda s=setting: tomesd.apply_patch(model, **s)) for name, setting in zip(names, settings)}
    timings = time_interleaved({"unpatched": lambda: output_of(model, timed), **{name: (lambda: output_of(model, timed))
                                                                                  for name in names}},
                               repeats=repeats, warmup=warmup, device=device,
                               prepare={"unpatched": lambda: tomesd.remove_patch(model), **patches})
    rows = []
    for name, setting in zip(names, settings):
        tomesd.apply_patch(model, **setting)
        merged_flops, merged = flops(model, one), output_of(model, quality)
        tomesd.remove_patch(model)
        speedup = timings[name].speedup_over(timings["unpatched"])
        rows.append({
            "model": case.label + (" (tiny)" if tiny else ""), "setting": _describe(setting), "batch": case.batch,
            "seconds_unpatched": timings["unpatched"].median, "seconds_patched": timings[name].median,
            "speedup": speedup, "flop_ratio": merged_flops / reference_flops,
            **agreement(reference, merged, classifier=case.model_class.endswith("Classification")),
            "target": case.target, "target_met": speedup >= case.target,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a README table."""
    lines = ["| model | setting | batch | unpatched s | patched s | speed-up | FLOPs | top-1 agr. | cosine |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        top1 = f"{row['top1_agreement']:.2f}" if "top1_agreement" in row else "-"
        lines.append(f"| {row['model']} | {row['setting']} | {row['batch']} | {row['seconds_unpatched']:.3f} | "
                     f"{row['seconds_patched']:.3f} | {row['speedup']:.2f}x | {row['flop_ratio']:.2f} | {top1} | "
                     f"{row['cosine']:.3f} |")
    return "\n".join(lines)


def _describe(setting: dict[str, Any]) -> str:
    r = setting["r"]
    schedule = f"r=[{', '.join(map(str, r[:4]))}, ...]" if isinstance(r, list) else f"r={r}"
    return f"{schedule} {setting.get('matching', 'global')}"


def write_rows(rows: list[dict[str, Any]], out: Path, device: str, repeats: int) -> None:
    """Save ``rows`` with the environment they were measured in as JSON at ``out``, and as a markdown table
    headed by that environment beside it (``out`` with the suffix ``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    environment = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                   "machine": platform.processor() or platform.machine(), "dtype": "float32",
                   "attention": "sdpa", "weights": "random", "repeats": repeats}
    out.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_report(environment, rows) + "\n")


def markdown_report(environment: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The table of ``rows`` under one line saying how it was measured."""
    setting = (f"{environment['device']}, {environment['dtype']}, {environment['threads']} threads, "
               f"{environment['attention']} attention, {environment['weights']} weights, median of "
               f"{environment['repeats']} interleaved runs, torch {environment['torch']}")
    return f"Unpatched vs patched in one process ({setting}).\n\n{markdown(rows)}"
