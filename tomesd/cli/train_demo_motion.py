"""``tomesd train-demo-motion``: train the demo model's AnimateDiff motion adapter on moving-shape clips, and
ship it.

Only the motion modules learn (the demo U-Net, VAE and text encoder stay frozen); checkpoints in ``--work``
(resumable), the adapter written to ``--out`` (default: the shipped ``tomesd/demo_motion_adapter``). See
:mod:`tomesd.demo.motion`.

    tomesd train-demo-motion --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.demo import DEMO_MODEL_DIR
    from tomesd.demo.motion import CLIP_FRAMES, CLIP_SIZE, MAX_FRAMES, MOTION_ADAPTER_DIR

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MOTION_ADAPTER_DIR, help="adapter folder to write")
    parser.add_argument("--work", type=Path, default=Path("outputs/demo_motion_train"), help="checkpoints and logs")
    parser.add_argument("--init-from", type=Path, default=DEMO_MODEL_DIR, help="the (frozen) image model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--steps", type=_positive, default=1500)
    parser.add_argument("--batch", type=_positive, default=2, help="clips per step")
    parser.add_argument("--frames", type=_positive, default=CLIP_FRAMES, help=f"frames per clip (2 to {MAX_FRAMES})")
    parser.add_argument("--size", type=_positive, default=CLIP_SIZE, help="frame side in pixels (a multiple of 8)")
    parser.add_argument("--lr", type=float, default=5e-4,
                        help="peak learning rate (100 warm-up steps, constant to half way, then a cosine to 0.1x)")
    parser.add_argument("--checkpoint-every", type=_positive, default=100, help="steps between checkpoints")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train (or resume) the adapter; returns the exit code (2 for bad arguments)."""
    from tomesd.demo.motion import check_clip_shape, train_motion

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        check_clip_shape(args.frames, args.size)
    except ValueError as error:
        parser.error(str(error))
    train_motion(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
