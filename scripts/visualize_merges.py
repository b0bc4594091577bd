"""Draw ToMe's merge groups of a timm ViT over an image and save them as a PNG.

Each group of patches merged into one token gets one colour and an outline; patches never merged stay
as they are. Weights are random (no hub access): groups then follow colour and texture of the patches,
as seen through a random patch embedding.

    python scripts/visualize_merges.py                                   # drawn test image, DeiT-S, r=13
    python scripts/visualize_merges.py --image photo.jpg --r 16 --out merges.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tomesd.lab.visualize import drawn_images, visualize_timm_merges  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224", help="timm VisionTransformer name")
    parser.add_argument("--image", type=Path, help="picture to run (default: a procedurally drawn one)")
    parser.add_argument("--r", type=int, nargs="+", default=[4, 8, 13], help="one panel per r")
    parser.add_argument("--seed", type=int, default=0, help="model weights and drawn image")
    parser.add_argument("--out", type=Path, default=Path("samples/vision/merges.png"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.patch_embed.img_size
    image = (np.asarray(Image.open(args.image).convert("RGB").resize(size[::-1])) if args.image
             else drawn_images(1, size[0], seed=args.seed)[0])
    panels = [Image.fromarray(image)] + [visualize_timm_merges(model, image, r=r) for r in args.r]
    strip = Image.new("RGB", (sum(panel.width for panel in panels) + 8 * (len(panels) - 1), panels[0].height),
                      "white")
    for index, panel in enumerate(panels):
        strip.paste(panel, (index * (panel.width + 8), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.quantize(256).save(args.out, optimize=True)  # a palette PNG: small enough to commit
    print(f"wrote {args.out}: the input, then r = {', '.join(map(str, args.r))}")


if __name__ == "__main__":
    main()
