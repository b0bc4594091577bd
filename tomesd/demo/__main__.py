"""Command line: draw one image with the demo model, e.g.
``python -m tomesd.demo --prompt "a red circle" --out x.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS, EXAMPLE_PROMPTS, load_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tomesd.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default=EXAMPLE_PROMPTS[0],
                        help="what to draw: 'a [small|large] <colour> <shape> [on a <colour> background]'")
    parser.add_argument("--out", type=Path, default=Path("demo.png"), help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels (a multiple of 8)")
    parser.add_argument("--ratio", type=float, default=0.0, help="tomesd merge ratio (0 = no merging)")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8, got {args.size}")
    pipe = load_pipeline(progress=True)
    if args.ratio:
        import tomesd

        tomesd.apply_patch(pipe, ratio=args.ratio)
    image = pipe(
        args.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
        guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed),
    ).images[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
