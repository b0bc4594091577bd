"""``tomesd train-demo`` (and ``scripts/train_demo.py``): train the demo text-to-image pipeline from scratch on
the procedural shapes set, and ship it.

Six resumable stages (plain shapes, then textures; see :mod:`tomesd.demo.train`), checkpoints in ``--work``,
the pipeline written to ``--out`` (default: the shipped ``tomesd/demo_model``).

    tomesd train-demo --threads 1
    tomesd train-demo --stages texture-vae texture-unet texture-finetune
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line (the stages and their defaults: :mod:`tomesd.demo.train`)."""
    from tomesd.demo import DEMO_MODEL_DIR
    from tomesd.demo.train import STAGES

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="shipped pipeline folder to write")
    parser.add_argument("--work", type=Path, default=Path("outputs/demo_train"), help="checkpoints and logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--vae-steps", type=int, default=1800)
    parser.add_argument("--unet-steps", type=int, default=16000)
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the vae and unet stages")
    parser.add_argument("--finetune-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (unet stage; finetune: 0.3x)")
    parser.add_argument("--unet-anneal-start", type=int, default=9000,
                        help="unet step from which the learning rate follows a cosine down to 0.1x peak")
    parser.add_argument("--finetune-anneal-start", type=int, default=0,
                        help="finetune step from which the learning rate follows a cosine down to 0.1x peak")
    parser.add_argument("--init-from", type=Path, default=DEMO_MODEL_DIR,
                        help="pipeline the texture stages start from when the plain stages are not run")
    parser.add_argument("--texture-vae-steps", type=int, default=800)
    parser.add_argument("--texture-unet-steps", type=int, default=2000)
    parser.add_argument("--texture-finetune-steps", type=int, default=300)
    parser.add_argument("--texture-lr", type=float, default=5e-4,
                        help="peak learning rate of texture-unet (texture-vae: 0.3x; texture-finetune: 0.3x)")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train the stages asked; returns the exit code."""
    from tomesd.demo.train import run_training

    run_training(build_parser(prog).parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
