"""``tomesd visualize-video-merges`` (and ``scripts/visualize_video_merges.py``): draw which tubelets a VideoMAE
merges, frame by frame, for global and space-time matching (see :func:`tomesd.lab.visualize_video.matching_comparison`).

One strip per matching (top: global, bottom: spacetime): the tubelet frames of a procedurally drawn clip
(a disc and a square gliding over a still gradient), each merged group in one colour wherever it
reaches; groups spanning several frames strongly painted. Weights are random (no hub access): groups
then follow the colour of the patches as seen through a random tubelet embedding.

    tomesd visualize-video-merges                        # samples/vision/videomae_merges.png
    tomesd visualize-video-merges --r 30 --frames 16 --size 112
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
    parser.add_argument("--frames", type=int, default=16, help="input frames (2-frame tubelets)")
    parser.add_argument("--size", type=int, default=112, help="frame size in pixels (16 px patches)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--r", type=int, default=40, help="tokens merged per layer")
    parser.add_argument("--seed", type=int, default=0, help="model weights and drawn clip")
    parser.add_argument("--out", type=Path, default=Path("samples/vision/videomae_merges.png"))
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure and save it; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never ask the hub
    import torch
    from transformers import VideoMAEConfig, VideoMAEModel

    from tomesd.lab.visualize_video import matching_comparison, moving_shapes_clip

    args = build_parser(prog).parse_args(argv)
    torch.manual_seed(args.seed)
    config = VideoMAEConfig(image_size=args.size, num_frames=args.frames, hidden_size=384,
                            num_hidden_layers=args.layers, num_attention_heads=6, intermediate_size=1536)
    model = VideoMAEModel(config).eval()
    figure = matching_comparison(model, moving_shapes_clip(args.frames, args.size, seed=args.seed), r=args.r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(256).save(args.out, optimize=True)  # a palette PNG: small enough to commit
    print(f"wrote {args.out}: r={args.r} per layer over {args.layers} layers, "
          f"{args.frames // 2} tubelet frames of {(args.size // 16) ** 2} patches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
