"""Draw which tubelets a VideoMAE merges, frame by frame, for global and space-time matching.

One strip per matching (top: global, bottom: spacetime): the tubelet frames of a procedurally drawn clip
(a disc and a square gliding over a still gradient), each merged group in one colour wherever it
reaches; groups spanning several frames strongly painted. Weights are random (no hub access): groups
then follow the colour of the patches as seen through a random tubelet embedding.

    python scripts/visualize_video_merges.py                        # samples/vision/videomae_merges.png
    python scripts/visualize_video_merges.py --r 30 --frames 16 --size 112
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from tomesd.visualize_video import moving_shapes_clip, visualize_video_merges  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="input frames (2-frame tubelets)")
    parser.add_argument("--size", type=int, default=112, help="frame size in pixels (16 px patches)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--r", type=int, default=40, help="tokens merged per layer")
    parser.add_argument("--seed", type=int, default=0, help="model weights and drawn clip")
    parser.add_argument("--out", type=Path, default=Path("samples/vision/videomae_merges.png"))
    args = parser.parse_args()
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(args.seed)
    config = VideoMAEConfig(image_size=args.size, num_frames=args.frames, hidden_size=384,
                            num_hidden_layers=args.layers, num_attention_heads=6, intermediate_size=1536)
    model = VideoMAEModel(config).eval()
    clip = moving_shapes_clip(args.frames, args.size, seed=args.seed)
    strips = [visualize_video_merges(model, clip, r=args.r, matching=matching) for matching in ("global", "spacetime")]
    figure = Image.new("RGB", (strips[0].width + 70, 2 * strips[0].height + 8), "white")
    draw = ImageDraw.Draw(figure)
    for index, (matching, strip) in enumerate(zip(("global", "spacetime"), strips)):
        top = index * (strip.height + 8)
        figure.paste(strip, (70, top))
        draw.text((2, top + strip.height // 2), matching, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(256).save(args.out, optimize=True)  # a palette PNG: small enough to commit
    print(f"wrote {args.out}: r={args.r} per layer over {args.layers} layers, "
          f"{args.frames // 2} tubelet frames of {(args.size // 16) ** 2} patches")


if __name__ == "__main__":
    main()
