"""Speed of token merging in diffusion transformers, on full-width architectures with reduced depth.

Random weights at each model's real width and native resolution (Flux.1 at 1024 px = 4096 image tokens and
512 text tokens, SD3.5-medium and PixArt-Σ at 1024 px, Sana 1600M at 1024 px, Wan 2.1 1.3B at 480p), with
fewer blocks than the real model so it fits any GPU: speed per block does not depend on depth, and the
whole-model figure is reported at the depth run. For each model, in one process and interleaved against
the unpatched model (:func:`tomesd.lab.timing.time_interleaved`):

* whole model: one denoiser forward, unpatched and patched at each ratio;
* per block: the first block of each kind called on its captured real inputs, unpatched and patched;
* the limit: the share of an unpatched block's time spent in the submodules merging shortens (for Flux's
  single-stream block everything between ``norm`` and ``proj_out``).

Sana is refused by the patch; it is measured for its limit only (its attention's share of a block).

Run on a quiet GPU, e.g.::

    python -m tomesd.lab.dit_bench --model flux --depth 2 --device cuda --dtype bfloat16

Nothing here asserts a speed: the numbers are what the machine gives.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

import tomesd
from tomesd.lab.timing import synchronize, time_interleaved

__all__ = ["SPECS", "BenchSpec", "BlockTiming", "ModelBench", "bench_model", "format_bench", "relative_deviation"]


@dataclass(frozen=True)
class BenchSpec:
    """One architecture to time.

    Attributes:
        name: short name (the command line's ``--model``).
        title: what it stands for (the real model and resolution).
        build: ``build(depth, tiny) -> model`` (random weights; ``tiny`` for tests: a toy width).
        inputs: ``inputs(model, batch, tiny, frames=...) -> forward kwargs`` at the native resolution (toy
            when tiny); ``frames`` (latent frames) only matters to video models.
        blocks: block class name -> the submodules whose time merging shortens (the limit).
        patched: whether tomesd patches it (False: limit only).
        frames: a video model's native number of latent frames (0: an image model).
    """

    name: str
    title: str
    build: Callable[[int, bool], nn.Module]
    inputs: Callable[..., dict[str, Any]]
    blocks: dict[str, tuple[str, ...]]
    patched: bool = True
    frames: int = 0


def _randn(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _flux(depth: int, tiny: bool) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    if tiny:
        return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=depth, num_single_layers=depth,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                      pooled_projection_dim=12, axes_dims_rope=(4, 6, 6), guidance_embeds=True)
    # Flux.1-dev: 19 double + 38 single blocks of width 3072; here `depth` double and 2 * depth single
    return FluxTransformer2DModel(num_layers=depth, num_single_layers=2 * depth, guidance_embeds=True)


def _flux_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 0) -> dict[str, Any]:
    side, text = (8, 8) if tiny else (64, 512)  # 1024 px: 128x128 latent, packed 2x2
    config = model.config
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    return {
        "hidden_states": _randn(batch, side * side, config.in_channels),
        "encoder_hidden_states": _randn(batch, text, config.joint_attention_dim),
        "pooled_projections": _randn(batch, config.pooled_projection_dim),
        "timestep": torch.full((batch,), 0.5), "guidance": torch.full((batch,), 3.5),
        "img_ids": img_ids.reshape(-1, 3), "txt_ids": torch.zeros(text, 3),
    }


def _sd35(depth: int, tiny: bool) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    if tiny:
        return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=depth, attention_head_dim=8,
                                     num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=16,
                                     pooled_projection_dim=12, out_channels=4, pos_embed_max_size=32,
                                     dual_attention_layers=(0,), qk_norm="rms_norm")
    # SD3.5-medium: 24 blocks of width 1536, the first 13 with dual attention; here `depth` of them, all dual
    return SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=64,
                                 num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                 pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                 dual_attention_layers=tuple(range(depth)), qk_norm="rms_norm")


def _sd35_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 0) -> dict[str, Any]:
    side, text = (16, 8) if tiny else (128, 333)  # 77 CLIP + 256 T5 tokens
    config = model.config
    return {
        "hidden_states": _randn(batch, config.in_channels, side, side),
        "encoder_hidden_states": _randn(batch, text, config.joint_attention_dim),
        "pooled_projections": _randn(batch, config.pooled_projection_dim), "timestep": torch.full((batch,), 500.0),
    }


def _pixart(depth: int, tiny: bool) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    if tiny:
        return PixArtTransformer2DModel(sample_size=8, num_layers=depth, patch_size=2, attention_head_dim=8,
                                        num_attention_heads=2, caption_channels=16, in_channels=4, cross_attention_dim=16,
                                        out_channels=8, norm_num_groups=8)
    # PixArt-Σ XL 1024: 28 blocks of width 1152
    return PixArtTransformer2DModel(sample_size=128, num_layers=depth, patch_size=2, attention_head_dim=72,
                                    num_attention_heads=16, caption_channels=4096, in_channels=4, cross_attention_dim=1152,
                                    out_channels=8, interpolation_scale=2, use_additional_conditions=False)


def _pixart_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 0) -> dict[str, Any]:
    side, text = (16, 8) if tiny else (128, 300)
    return {
        "hidden_states": _randn(batch, model.config.in_channels, side, side), "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": _randn(batch, text, model.config.caption_channels),
        "added_cond_kwargs": {"aspect_ratio": None, "resolution": None},
    }


def _sana(depth: int, tiny: bool) -> nn.Module:
    from diffusers import SanaTransformer2DModel

    if tiny:
        return SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=depth, num_attention_heads=2,
                                      attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                      cross_attention_dim=16, caption_channels=16, sample_size=16)
    return SanaTransformer2DModel(num_layers=depth)  # Sana 1600M 1024 px: 20 blocks of width 2240


def _sana_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 0) -> dict[str, Any]:
    side, text = (16, 8) if tiny else (32, 300)  # DC-AE: 32x downsampling
    return {
        "hidden_states": _randn(batch, model.config.in_channels, side, side), "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": _randn(batch, text, model.config.caption_channels),
    }


def _wan(depth: int, tiny: bool) -> nn.Module:
    from diffusers import WanTransformer3DModel

    if tiny:
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                     out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=depth,
                                     cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    # Wan 2.1 T2V 1.3B: 30 blocks of width 1536
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=depth,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads")


def _wan_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 21) -> dict[str, Any]:
    # 81 frames at 480x832 are 21 latent frames of 60x104 (30x52 tokens each, after 2x2 patches)
    frames, height, width, text = (2, 16, 16, 8) if tiny else (frames, 60, 104, 512)
    return {
        "hidden_states": _randn(batch, model.config.in_channels, frames, height, width),
        "timestep": torch.full((batch,), 500.0), "encoder_hidden_states": _randn(batch, text, model.config.text_dim),
    }


def _animatediff(depth: int, tiny: bool) -> nn.Module:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from tomesd.lab.bench import SD15_UNET

    if tiny:
        unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=8, norm_num_groups=8)
        adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                                motion_norm_num_groups=8, motion_max_seq_length=8)
    else:  # the whole SD 1.5 U-Net (depth does not apply) with AnimateDiff v1.5's motion modules
        unet, adapter = UNet2DConditionModel(**SD15_UNET), MotionAdapter()
    return UNetMotionModel.from_unet2d(unet, adapter)


def _animatediff_inputs(model: nn.Module, batch: int, tiny: bool, frames: int = 16) -> dict[str, Any]:
    side, text, frames = (16, 8, 2) if tiny else (64, 77, frames)  # 512 px: a 64x64 latent per frame
    return {
        "sample": _randn(batch, model.config.in_channels, frames, side, side), "timestep": torch.tensor(500),
        # UNetMotionModel takes the prompt once per frame, as AnimateDiffPipeline passes it
        "encoder_hidden_states": _randn(batch, text, model.config.cross_attention_dim).repeat_interleave(frames, 0),
    }


#: The architectures, by ``--model`` name.
SPECS: dict[str, BenchSpec] = {spec.name: spec for spec in (
    BenchSpec("flux", "Flux.1-dev, 1024 px (4096 image + 512 text tokens)", _flux, _flux_inputs,
              {"FluxTransformerBlock": ("attn", "ff"), "FluxSingleTransformerBlock": ("proj_mlp", "attn", "proj_out")}),
    BenchSpec("sd35", "SD3.5-medium, 1024 px (4096 image + 333 text tokens)", _sd35, _sd35_inputs,
              {"JointTransformerBlock": ("attn", "attn2", "ff")}),
    BenchSpec("pixart", "PixArt-Σ XL, 1024 px (4096 image tokens)", _pixart, _pixart_inputs,
              {"BasicTransformerBlock": ("attn1", "ff")}),
    BenchSpec("sana", "Sana 1600M, 1024 px (1024 image tokens); refused by the patch: limit only", _sana, _sana_inputs,
              {"SanaTransformerBlock": ("attn1", "attn2")}, patched=False),
    BenchSpec("wan", "Wan 2.1 1.3B, 480p 81 frames (21 x 30 x 52 = 32760 tokens)", _wan, _wan_inputs,
              {"WanTransformerBlock": ("attn1", "ffn")}, frames=21),
    BenchSpec("animatediff", "AnimateDiff (SD 1.5 U-Net + motion adapter v1.5), 512 px, 16 frames "
              "(4096 tokens a frame at the first level)", _animatediff, _animatediff_inputs,
              {"BasicTransformerBlock": ("attn1", "ff")}, frames=16),
)}


@dataclass(frozen=True)
class BlockTiming:
    """One block kind: median seconds of one call unpatched and patched (by ratio), and the limit."""

    block: str
    unpatched: float
    patched: dict[float, float]
    limit: float  # share of the unpatched block's time in the submodules merging shortens


@dataclass(frozen=True)
class ModelBench:
    """One architecture's figures (see :func:`bench_model`)."""

    spec: str
    title: str
    depth: int
    unpatched: float
    patched: dict[float, float]
    blocks: tuple[BlockTiming, ...]
    deviation: dict[float, float] = field(default_factory=dict)  # relative L2 of the output, by ratio
    frames: int = 0  # latent frames run (video models)


def relative_deviation(model: nn.Module, kwargs: dict[str, Any], **options: Any) -> float:
    """``|patched - unpatched| / |unpatched|`` of ``model(**kwargs)``'s first output, patched with
    ``options`` (the model is left unpatched)."""
    with torch.no_grad():
        base = model(**kwargs, return_dict=False)[0].float()
        tomesd.apply_patch(model, **options)
        try:
            patched = model(**kwargs, return_dict=False)[0].float()
        finally:
            tomesd.remove_patch(model)
    return float((patched - base).norm() / base.norm())


def bench_model(name: str, depth: int = 2, ratios: tuple[float, ...] = (0.5,), batch: int = 1, repeats: int = 5,
                warmup: int = 1, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, tiny: bool = False,
                frames: int | None = None, **options: Any) -> ModelBench:
    """Time ``SPECS[name]`` at ``depth`` blocks (per kind), unpatched and patched at each of ``ratios``.

    Args:
        name: a key of :data:`SPECS`.
        depth: blocks per kind (Flux: ``depth`` double and ``2 * depth`` single blocks).
        ratios: the patch ratios to time.
        batch: images per forward (1: Flux and Wan run without CFG batches; 2 is a CFG batch).
        repeats, warmup: see :func:`tomesd.lab.timing.time_interleaved`.
        device, dtype: where and in what precision.
        tiny: toy widths and sizes (for tests); the figures then mean nothing.
        frames: latent frames of a video model (default: its native count; fewer to fit a small machine).
        **options: further patch options (``min_tokens`` defaults to 0 so every block merges).

    Returns:
        A :class:`ModelBench`: whole-model and per-block medians, the limit and the output deviation.
    """
    spec = SPECS[name]
    torch.manual_seed(0)
    model = spec.build(depth, tiny).to(device=device, dtype=dtype).eval()
    frames = spec.frames if frames is None or not spec.frames else frames
    kwargs = _to(spec.inputs(model, batch, tiny, frames=frames) if spec.frames else spec.inputs(model, batch, tiny),
                 device, dtype)
    ratios = ratios if spec.patched else ()
    options = {"min_tokens": 0, **options}
    block_inputs = _capture_block_inputs(model, kwargs, spec)

    def forward() -> None:
        with torch.no_grad():
            model(**kwargs, return_dict=False)

    settings = {"unpatched": forward, **{f"ratio {r}": forward for r in ratios}}
    prepare = {"unpatched": lambda: tomesd.remove_patch(model),
               **{f"ratio {r}": _patcher(model, kwargs, r, options) for r in ratios}}
    whole = time_interleaved(settings, repeats, warmup, device, prepare=prepare)
    blocks = tuple(_time_block(model, kwargs, block, inputs, spec.blocks[type(block).__name__], ratios, options,
                               repeats, warmup, device) for block, inputs in block_inputs.items())
    deviation = {r: relative_deviation(model, kwargs, ratio=r, **options) for r in ratios}
    tomesd.remove_patch(model)
    return ModelBench(name, spec.title, depth, whole["unpatched"].median,
                      {r: whole[f"ratio {r}"].median for r in ratios}, blocks, deviation, frames)


def _to(value: Any, device: str, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


def _patcher(model: nn.Module, kwargs: dict[str, Any], ratio: float, options: dict[str, Any]) -> Callable[[], None]:
    """Patch ``model`` at ``ratio`` and run it once untimed, so its blocks' latent context is current."""

    def patch() -> None:
        tomesd.apply_patch(model, ratio=ratio, **options)
        with torch.no_grad():
            model(**kwargs, return_dict=False)

    return patch


def _capture_block_inputs(model: nn.Module, kwargs: dict[str, Any], spec: BenchSpec) -> dict[nn.Module, tuple]:
    """The (args, kwargs) the first block of each kind in ``spec.blocks`` receives in one forward."""
    firsts: dict[str, nn.Module] = {}
    for module in model.modules():
        firsts.setdefault(type(module).__name__, module)
    captured: dict[nn.Module, tuple] = {}
    handles = [firsts[kind].register_forward_pre_hook(
        lambda module, args, kw: captured.setdefault(module, (args, kw)), with_kwargs=True) for kind in spec.blocks if kind in firsts]
    try:
        with torch.no_grad():
            model(**kwargs, return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _time_block(model: nn.Module, kwargs: dict[str, Any], block: nn.Module, inputs: tuple, parts: tuple[str, ...],
                ratios: tuple[float, ...], options: dict[str, Any], repeats: int, warmup: int, device: str) -> BlockTiming:
    args, block_kwargs = inputs

    def call() -> None:
        with torch.no_grad():
            block(*args, **block_kwargs)

    settings = {"unpatched": call, **{f"ratio {r}": call for r in ratios}}
    prepare = {"unpatched": lambda: tomesd.remove_patch(model),
               **{f"ratio {r}": _patcher(model, kwargs, r, options) for r in ratios}}
    timing = time_interleaved(settings, repeats, warmup, device, prepare=prepare)
    tomesd.remove_patch(model)
    unpatched = timing["unpatched"].median
    return BlockTiming(type(block).__name__, unpatched, {r: timing[f"ratio {r}"].median for r in ratios},
                       min(1.0, _parts_seconds(block, args, block_kwargs, parts, repeats, device) / unpatched))


def _parts_seconds(block: nn.Module, args: tuple, kwargs: dict[str, Any], parts: tuple[str, ...], repeats: int,
                   device: str) -> float:
    """Median seconds an unpatched ``block`` call spends inside its submodules ``parts`` (synchronised
    around each of them, so the sum is an upper bound on what merging can shorten)."""
    spent: list[float] = []
    starts: dict[str, float] = {}

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, a: tuple, k: dict) -> None:
            synchronize(device)
            starts[name] = time.perf_counter()

        return hook

    def leave(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, a: tuple, k: dict, output: Any) -> None:
            synchronize(device)
            spent[-1] += time.perf_counter() - starts[name]

        return hook

    handles = []
    for name in parts:
        sub = getattr(block, name, None)
        if sub is not None:
            handles += [sub.register_forward_pre_hook(enter(name), with_kwargs=True),
                        sub.register_forward_hook(leave(name), with_kwargs=True)]
    try:
        for _ in range(repeats):
            spent.append(0.0)
            with torch.no_grad():
                block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(spent)[len(spent) // 2]


def format_bench(result: ModelBench) -> str:
    """A markdown table of one :class:`ModelBench`: rows whole model and each block kind."""
    ratios = sorted(result.patched) or sorted({r for b in result.blocks for r in b.patched})
    head = "| " + " | ".join(["part", "unpatched ms", *(f"ratio {r} ms (speed-up)" for r in ratios), "limit"]) + " |"
    run = f"depth {result.depth}" + (f", {result.frames} latent frames run" if result.frames else "")
    lines = [f"{result.title}; {run}", "", head, "|" + " --- |" * (3 + len(ratios))]

    def row(part: str, unpatched: float, patched: dict[float, float], limit: str) -> str:
        timed = [f"{patched[r] * 1e3:.2f} ({unpatched / patched[r]:.2f}x)" for r in ratios]
        return "| " + " | ".join([part, f"{unpatched * 1e3:.2f}", *timed, limit]) + " |"

    lines.append(row("whole model", result.unpatched, result.patched, ""))
    lines += [row(block.block, block.unpatched, block.patched, f"{block.limit:.0%}") for block in result.blocks]
    if result.deviation:
        lines += ["", "output deviation (relative L2, random weights): "
                  + ", ".join(f"ratio {r}: {d:.3f}" for r, d in result.deviation.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: time one or all architectures and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=[*SPECS, "all"], default="all")
    parser.add_argument("--depth", type=int, default=2, help="blocks per kind (Flux: double; single is twice)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="toy widths (a smoke test; figures mean nothing)")
    parser.add_argument("--frames", type=int, help="latent frames of the video models (default: native: Wan 21, "
                        "AnimateDiff 16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also append the tables to this markdown file")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a patch option (repeatable), e.g. min_tokens=1024 (the bench's own default is "
                             "min_tokens=0: every block merges)")
    args = parser.parse_args(argv)
    try:
        options = dict(_parse_option(text) for text in args.option)
    except ValueError as error:
        parser.error(str(error))  # exits 2 with the usage, before anything is built
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in SPECS if args.model == "all" else [args.model]:
        result = bench_model(name, args.depth, tuple(args.ratios), args.batch, args.repeats, args.warmup, args.device,
                             getattr(torch, args.dtype), args.tiny, args.frames, **options)
        table = format_bench(result)
        print(table, end="\n\n", flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as handle:
                handle.write(f"{table}\n\n({_setting(args)})\n\n")


def _parse_option(text: str) -> tuple[str, Any]:
    """``"name=value"`` as a typed patch option (see :func:`tomesd.lab.generation.parse_option`)."""
    from tomesd.lab.generation import parse_option

    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--option expects NAME=VALUE, got {text!r}")
    return name.strip(), parse_option(name.strip(), value)


def _setting(args: argparse.Namespace) -> str:
    """How a table was measured, for the markdown file."""
    import os

    options = ", ".join(["min_tokens=0", *args.option]) if not any(o.startswith("min_tokens") for o in args.option) \
        else ", ".join(args.option)
    return (f"{args.device}, {args.dtype}, {torch.get_num_threads()} threads, batch {args.batch}, median of "
            f"{args.repeats} interleaved after {args.warmup} warm-up, patch options {options} (others default), "
            f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
