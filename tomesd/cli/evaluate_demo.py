"""``tomesd evaluate-demo`` (and ``scripts/evaluate_demo.py``): the demo model's prompt adherence on held-out
captions vs chance, and ToMe's cost in quality at each merge ratio (see :mod:`tomesd.lab.demo_eval`).

Example::

    tomesd evaluate-demo --count 24 --ratios 0 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from tomesd.lab.demo_eval import SPLITS, DemoEvaluation, run_evaluation

__all__ = ["add_drawing_arguments", "build_parser", "main", "parse_drawing_arguments"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line; defaults are :class:`DemoEvaluation`'s."""
    default = DemoEvaluation()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=default.count, help="held-out prompts (one image each)")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(default.ratios),
                        help="merge ratios, including 0 (the reference for PSNR and SSIM)")
    parser.add_argument("--split", choices=SPLITS, default=default.split)
    parser.add_argument("--batch", type=int, default=default.batch, help="prompts per pipeline call")
    add_drawing_arguments(parser, default)
    parser.add_argument("--textures", action="store_true", help="textured prompts (stripes, checks, dots, ...)")
    parser.add_argument("--model", type=Path, help="a pipeline folder of tomesd train-demo --out (default: the "
                        "shipped demo model)")
    return parser


def add_drawing_arguments(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--steps``, ``--guidance``, ``--size``, ``--seed``, ``--threads`` and ``--out``, defaulting to the
    attributes of the same names of ``default`` (an evaluation's settings object)."""
    parser.add_argument("--steps", type=int, default=default.steps)
    parser.add_argument("--guidance", type=float, default=default.guidance)
    parser.add_argument("--size", type=int, default=default.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=default.seed, help="first seed; also picks the prompts")
    parser.add_argument("--threads", type=int, default=default.threads)
    parser.add_argument("--out", type=Path, default=default.out)


def parse_drawing_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, drawn: str) -> argparse.Namespace:
    """Parse ``argv``; exit with a usage error (2) when matplotlib, which draws ``drawn`` at the end of the
    run, is missing: said before hours of drawing, not after."""
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        parser.error(f"drawing {drawn} needs matplotlib: pip install 'tomesd[ui]'")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the evaluation and print its report; returns the exit code (2: bad arguments)."""
    parser = build_parser(prog)
    args = parse_drawing_arguments(parser, argv, "the image grids")
    try:
        evaluation = DemoEvaluation(**{**vars(args), "ratios": tuple(args.ratios)})
    except ValueError as error:
        parser.error(str(error))
    print(run_evaluation(evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
