"""Measure whatever ``tomesd`` this interpreter imports: U-Net speed, or images of a pipeline.

Run by ``scripts/benchmark.py`` with this project's environment and, for ``--compare-013``, with tomesd
0.1.3's (``scripts/setup_tomesd013.sh``; both packages import as ``tomesd``), so that both are measured by
the same code. It reads a JSON spec on standard input and prints one JSON object on standard output.

``"mode": "speed"`` (the default) times one U-Net forward, unpatched vs patched::

    spec   = {"config": {...UNet2DConditionModel config...}, "latent": 64, "batch": 2, "threads": 2,
              "repeats": 3, "settings": [{"label": ..., "options": {...}}]}
    result = {"tomesd": "0.1.3", "baseline_s": [...], "settings": [{"label": ..., "times_s": [...],
              "speedup": median(baseline) / median(setting), "deviation": mean |out - base| / mean |base|}]}

Settings and the baseline are interleaved: each repetition times the baseline, then every setting.

``"mode": "images"`` draws the same prompts with the same seeds, unpatched and under every setting, with a
local diffusers pipeline folder, and writes them as PNG files::

    spec   = {"mode": "images", "model": "path/to/pipeline", "prompts": [...], "seed": 0, "size": 128,
              "steps": 20, "guidance": 5.0, "batch": 8, "threads": 2, "out": "dir", "settings": [...]}
    result = {"tomesd": "0.1.3", "images": {"unpatched": ["dir/unpatched/0.png", ...], label: [...]}}

Prompt ``i`` always uses seed ``seed + i``. ``"unpatched": false`` leaves the unpatched images out.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

import tomesd

BASELINE = "unpatched"


def unet_inputs(config: dict, batch: int, latent: int, seed: int = 0) -> dict:
    """Seeded fp32 U-Net keyword inputs for a ``latent`` x ``latent`` sample (``latent * 8`` pixels), with SD
    XL's extra conditioning when ``config`` has it. Shared with ``benchmark.py``, which casts them."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn(batch, config.get("in_channels", 4), latent, latent, generator=g),  # (B, 4, h, w)
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, config["cross_attention_dim"], generator=g),  # (B, 77, C)
    }
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        pixels = latent * 8
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),  # (B, 1280)
            "time_ids": torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]] * batch).float(),
        }
    return inputs


def call_unet(unet: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The U-Net's output for ``inputs`` (from :func:`unet_inputs`), called as diffusers' pipelines call it:
    sample and timestep positionally. tomesd 0.1.3's forward pre-hook reads the sample from ``args[0]``, so
    a keyword-only call fails under it."""
    rest = {name: value for name, value in inputs.items() if name not in ("sample", "timestep")}
    return unet(inputs["sample"], inputs["timestep"], **rest).sample


def _timed(unet: torch.nn.Module, inputs: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = call_unet(unet, inputs)
    return time.perf_counter() - start, out


def measure_speed(spec: dict) -> dict:
    """The ``speed`` mode: interleaved U-Net forwards, unpatched then every setting, per repetition."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec["config"]).eval()
    inputs = unet_inputs(spec["config"], spec["batch"], spec["latent"])
    _timed(unet, inputs)  # warm-up: first-call allocations
    baseline: list[float] = []
    times: dict[str, list[float]] = {s["label"]: [] for s in spec["settings"]}
    deviation: dict[str, float] = {}
    for _ in range(spec["repeats"]):
        tomesd.remove_patch(unet)
        elapsed, reference = _timed(unet, inputs)
        baseline.append(elapsed)
        for setting in spec["settings"]:
            tomesd.apply_patch(unet, **setting["options"])
            elapsed, out = _timed(unet, inputs)
            tomesd.remove_patch(unet)
            times[setting["label"]].append(elapsed)
            deviation[setting["label"]] = float((out - reference).abs().mean() / reference.abs().mean())
        print(f"repetition done: baseline {baseline[-1]:.2f}s", file=sys.stderr, flush=True)
    base = statistics.median(baseline)
    return {
        "baseline_s": baseline,
        "settings": [
            {"label": label, "times_s": t, "speedup": base / statistics.median(t), "deviation": deviation[label]}
            for label, t in times.items()
        ],
    }


def draw_images(spec: dict) -> dict:
    """The ``images`` mode: every prompt drawn unpatched and under every setting, saved as PNG files."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        spec["model"], use_safetensors=True, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompts, out = spec["prompts"], Path(spec["out"])
    files: dict[str, list[str]] = {}
    baseline = [{"label": BASELINE, "options": None}] if spec.get("unpatched", True) else []
    for setting in [*baseline, *spec["settings"]]:
        tomesd.remove_patch(pipe)
        if setting["options"] is not None:
            tomesd.apply_patch(pipe, **setting["options"])
        folder = out / setting["label"]
        folder.mkdir(parents=True, exist_ok=True)
        files[setting["label"]] = []
        for start in range(0, len(prompts), spec["batch"]):
            chunk = prompts[start:start + spec["batch"]]
            generators = [torch.Generator().manual_seed(spec["seed"] + start + i) for i in range(len(chunk))]
            images = pipe(chunk, height=spec["size"], width=spec["size"], num_inference_steps=spec["steps"],
                          guidance_scale=spec["guidance"], generator=generators).images
            for i, image in enumerate(images):
                path = folder / f"{start + i}.png"
                image.save(path)
                files[setting["label"]].append(str(path))
        print(f"drew {len(prompts)} images: {setting['label']}", file=sys.stderr, flush=True)
    tomesd.remove_patch(pipe)
    return {"images": files}


def main() -> None:
    spec = json.load(sys.stdin)
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    modes = {"speed": measure_speed, "images": draw_images}
    mode = spec.get("mode", "speed")
    if mode not in modes:
        raise SystemExit(f"unknown mode {mode!r}; accepted: {', '.join(modes)}")
    result = modes[mode](spec)
    print(json.dumps({"tomesd": version("tomesd"), "threads": torch.get_num_threads(), **result}))


if __name__ == "__main__":
    main()
