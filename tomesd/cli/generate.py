"""``tomesd generate`` (and ``scripts/generate.py``): batch generation with token merging and a per-image
speed log; see :mod:`tomesd.lab.batch` for what it writes, how it resumes and how it runs on several GPUs.

Every prompt x seed x ratio is one image, written to ``--out`` with a log line and summarised per ratio. Image
pipelines with a U-Net (SD 1.x/2.x/XL) or a transformer (PixArt, SD3, Flux, Sana) write PNGs; video pipelines
(AnimateDiff, Stable Video Diffusion, Wan) write each video's frames as an animated GIF. ``--compile``
compiles the patched denoiser; its compile time is logged and summarised apart from the it/s.
Everything is checked before the model loads: bad input exits with code 2 and a message, writing nothing.

Example::

    tomesd generate --prompts prompts.txt --seeds 0 1 --ratios 0 0.5 0.7 --out runs/demo
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from tomesd.lab.batch import DEFAULT_FPS, SHEET_FILE, Batch, plan_batch, read_prompts, run_batch
from tomesd.lab.generation import DEFAULT_COMPILE_BACKEND, parse_option, patch_option_defaults
from tomesd.lab.loading import ATTENTION, DEMO, DTYPES, OFFLOAD
from tomesd.patch.diffusers.options import OPTIONS

__all__ = ["build_parser", "main", "parse_args"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line, patch options included (one flag per ``tomesd.patch.diffusers.OPTIONS`` entry)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("prompts")
    source.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    source.add_argument("--prompts", type=Path, help="a .txt (one per line), .csv or .jsonl file of prompts")
    source.add_argument("--negative-prompt", default="", help="negative prompt for --prompt prompts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    default_ratio = OPTIONS["ratio"]
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, default_ratio],
                        help=f"merge ratios, 0 <= ratio < 1 (default: 0 {default_ratio:g}, the patch's default; 0 is "
                             "the baseline of the speedups)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images, logs, summary)")
    parser.add_argument("--model", default=DEMO, help="'demo' (default), 'demo-textured', 'demo-motion' (clips), a "
                        "diffusers folder, a .safetensors file or a model id")
    parser.add_argument("--config", help="for a single .safetensors --model: a diffusers folder or model id with "
                        "its architecture's configs and tokenizer (default: its base model, from the hub or cache)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's usual)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's usual)")
    parser.add_argument("--width", type=int, help="pixels, multiple of 8 (default: the model's usual)")
    parser.add_argument("--height", type=int, help="pixels, multiple of 8 (default: the model's usual)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", help="e.g. cpu, cuda:0 (default: accelerate's choice for this process)")
    parser.add_argument("--offload", default="none", choices=OFFLOAD,
                        help="keep weights on the CPU, moving them to the GPU per model or per layer (GPU only)")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION,
                        help="U-Net attention: PyTorch SDPA (default), classic softmax(QK^T)V, or xformers (GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", nargs="?", const=DEFAULT_COMPILE_BACKEND, metavar="BACKEND",
                        help=f"torch.compile the denoiser after patching it at each ratio (backend default "
                             f"{DEFAULT_COMPILE_BACKEND}; 'eager' to check the path fast); the warm-up compiles and "
                             "its time is reported apart from the it/s")
    video = parser.add_argument_group("video pipelines (AnimateDiff, Stable Video Diffusion, Wan)")
    video.add_argument("--frames", type=int, help="frames per video (default: the pipeline's; demo-motion: 8)")
    video.add_argument("--image", type=Path, help="the conditioning image of an image-to-video pipeline (SVD)")
    video.add_argument("--fps", type=int, default=DEFAULT_FPS, help=f"frames per second of the GIFs (default "
                       f"{DEFAULT_FPS})")
    parser.add_argument("--sheet", action="store_true",
                        help=f"also write {SHEET_FILE}: every image in a grid, a row per prompt and seed, a column "
                             "per ratio")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed 1-step generation per ratio that precedes the timed ones")
    patch = parser.add_argument_group("patch options (tomesd.patch.diffusers)")
    for name, default in patch_option_defaults().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            patch.add_argument(flag, dest=name, default=default, action=argparse.BooleanOptionalAction,
                               help=f"(default: {default})")
        else:
            patch.add_argument(flag, dest=name, default=default, type=functools.partial(_option_argument, name),
                               help=f"(default: {'auto' if default is None else default})")
    return parser


def _option_argument(name: str, text: str) -> Any:
    """argparse type of a patch option: its value, or an ``ArgumentTypeError`` with the reason."""
    try:
        return parse_option(name, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None, prog: str | None = None) -> Batch:
    """The checked batch of a command line; ``parser.error`` (exit 2, nothing loaded or written) on bad input."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        prompts = [(p, args.negative_prompt) for p in args.prompt]
        prompts += read_prompts(args.prompts) if args.prompts else []
        return plan_batch(
            prompts, args.out, seeds=args.seeds, ratios=args.ratios, model=args.model, config=args.config,
            steps=args.steps, guidance=args.guidance, width=args.width, height=args.height, dtype=args.dtype,
            device=args.device, offload=args.offload, attention=args.attention, threads=args.threads,
            patch_options={name: getattr(args, name) for name in patch_option_defaults()}, warmup=args.warmup,
            sheet=args.sheet, frames=args.frames, image=args.image, fps=args.fps, compile=args.compile,
        )
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the batch; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    return run_batch(parse_args(argv, prog))


if __name__ == "__main__":
    sys.exit(main())
