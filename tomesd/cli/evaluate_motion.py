"""``tomesd evaluate-motion``: what merging does to a video model's motion, on the demo AnimateDiff pipeline
(the demo model with its trained motion adapter; see :mod:`tomesd.lab.motion_eval`).

Example::

    tomesd evaluate-motion --count 16 --threads 2
    tomesd evaluate-motion --variant "spatial:merge_temporal=false" --variant "defaults:" --ratio 0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line; defaults are :class:`~tomesd.lab.motion_eval.MotionEvaluation`'s."""
    from tomesd.cli.evaluate_demo import add_drawing_arguments
    from tomesd.lab.motion_eval import STANDARD_VARIANTS, MotionEvaluation

    default = MotionEvaluation()
    standard = ", ".join(label for label, _ in STANDARD_VARIANTS)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=default.count, help="held-out prompts (one clip each)")
    parser.add_argument("--ratio", type=float, default=default.ratio, help="merge ratio of every setting")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:OPTION=VALUE,...",
                        help=f"a setting's patch options (repeatable; default: {standard})")
    parser.add_argument("--frames", type=int, default=default.frames)
    add_drawing_arguments(parser, default)
    parser.add_argument("--adapter", type=Path, help="a folder of tomesd train-demo-motion --out (default: the "
                        "shipped demo motion adapter)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the evaluation and print its report; returns the exit code (2: bad arguments)."""
    from tomesd.cli.evaluate_demo import parse_drawing_arguments
    from tomesd.lab.bench import parse_variant
    from tomesd.lab.motion_eval import MotionEvaluation, run_evaluation

    parser = build_parser(prog)
    args = parse_drawing_arguments(parser, argv, "the frame strips")
    try:
        fields = {k: v for k, v in vars(args).items() if k != "variant"}
        if args.variant:
            fields["variants"] = tuple(parse_variant(text) for text in args.variant)
        evaluation = MotionEvaluation(**fields)
    except ValueError as error:
        parser.error(str(error))
    print(run_evaluation(evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
