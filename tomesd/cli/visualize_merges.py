"""``tomesd visualize-merges`` (and ``scripts/visualize_merges.py``): draw ToMe's merge groups of a timm ViT
over an image and save them as a PNG (see :func:`tomesd.lab.visualize.merge_strip`).

Each group of patches merged into one token gets one colour and an outline; patches never merged stay
as they are. Weights are random (no hub access): groups then follow colour and texture of the patches,
as seen through a random patch embedding.

    tomesd visualize-merges                                   # drawn test image, DeiT-S, r = 4, 8, 13
    tomesd visualize-merges --image photo.jpg --r 16 --out merges.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224", help="timm VisionTransformer name")
    parser.add_argument("--image", type=Path, help="picture to run (default: a procedurally drawn one)")
    parser.add_argument("--r", type=int, nargs="+", default=[4, 8, 13], help="one panel per r")
    parser.add_argument("--seed", type=int, default=0, help="model weights and drawn image")
    parser.add_argument("--out", type=Path, default=Path("samples/vision/merges.png"))
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Draw the strip and save it; returns the exit code (2: bad arguments)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never ask the hub
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from tomesd.lab.visualize import drawn_images, merge_strip

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {str(args.image)!r} does not exist")
    if args.model not in timm.list_models():
        parser.error(f"--model {args.model!r} is not a timm model name")
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.patch_embed.img_size
    image = (np.asarray(Image.open(args.image).convert("RGB").resize(size[::-1])) if args.image
             else drawn_images(1, size[0], seed=args.seed)[0])
    strip = merge_strip(model, image, args.r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.quantize(256).save(args.out, optimize=True)  # a palette PNG: small enough to commit
    print(f"wrote {args.out}: the input, then r = {', '.join(map(str, args.r))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
