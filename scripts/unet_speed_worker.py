"""Time one U-Net forward, unpatched vs patched by whatever ``tomesd`` this interpreter imports.

Run by ``scripts/benchmark.py --compare-013`` once with this project's environment and once with
tomesd 0.1.3's (``scripts/setup_tomesd013.sh``), so that both are measured by the same code. It reads a
JSON spec on standard input and prints one JSON object on standard output:

    spec   = {"config": {...UNet2DConditionModel config...}, "latent": 64, "batch": 2, "threads": 2,
              "repeats": 3, "settings": [{"label": ..., "options": {...}}]}
    result = {"tomesd": "0.1.3", "baseline_s": [...], "settings": [{"label": ..., "times_s": [...],
              "speedup": median(baseline) / median(setting), "deviation": mean |out - base| / mean |base|}]}

Settings and the baseline are interleaved: each repetition times the baseline, then every setting.
"""

from __future__ import annotations

import json
import statistics
from importlib.metadata import version
import sys
import time

import torch
from diffusers import UNet2DConditionModel

import tomesd


def _inputs(spec: dict) -> tuple[tuple, dict]:
    """Seeded U-Net inputs for the spec's latent size, with SD XL's extra conditioning when configured."""
    config, g = spec["config"], torch.Generator().manual_seed(0)
    batch, latent = spec["batch"], spec["latent"]
    sample = torch.randn(batch, config.get("in_channels", 4), latent, latent, generator=g)  # (B, 4, h, w)
    text = torch.randn(batch, 77, config["cross_attention_dim"], generator=g)  # (B, 77, C)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                       "time_ids": torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * batch)}
    return (sample, torch.tensor(500), text), kwargs


def _timed(unet: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = unet(*args, **kwargs).sample
    return time.perf_counter() - start, out


def main() -> None:
    spec = json.load(sys.stdin)
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec["config"]).eval()
    args, kwargs = _inputs(spec)
    _timed(unet, args, kwargs)  # warm-up: first-call allocations
    baseline: list[float] = []
    times: dict[str, list[float]] = {s["label"]: [] for s in spec["settings"]}
    reference = None
    deviation: dict[str, float] = {}
    for _ in range(spec["repeats"]):
        tomesd.remove_patch(unet)
        elapsed, reference = _timed(unet, args, kwargs)
        baseline.append(elapsed)
        for setting in spec["settings"]:
            tomesd.apply_patch(unet, **setting["options"])
            elapsed, out = _timed(unet, args, kwargs)
            tomesd.remove_patch(unet)
            times[setting["label"]].append(elapsed)
            deviation[setting["label"]] = float((out - reference).abs().mean() / reference.abs().mean())
        print(f"repetition done: baseline {baseline[-1]:.2f}s", file=sys.stderr, flush=True)
    base = statistics.median(baseline)
    result = {
        "tomesd": version("tomesd"),
        "threads": torch.get_num_threads(),
        "baseline_s": baseline,
        "settings": [
            {"label": label, "times_s": t, "speedup": base / statistics.median(t), "deviation": deviation[label]}
            for label, t in times.items()
        ],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
