"""``tomesd frontier`` (and ``scripts/frontier.py``): the speed/quality frontier of the diffusers patch.
Every candidate (this project's defaults and each of their choices turned the other way: MLP merging off,
keys/values pooled, only the finest level, all-pairs matching; at several ratios; tomesd 0.1.3 at the same
ratios with ``--compare-013``) is timed on full-size U-Nets and scored on the textured demo model's images;
the frontier is marked and the defaults rule checked (see :mod:`tomesd.lab.frontier`). Parts already
measured in ``--out`` are reused, so a stopped run resumes.

Results: ``frontier.md``, ``frontier.json``, ``frontier.png`` (speed against image change), ``frontier_images.png``
(the four most textured prompts under every candidate at the default ratio) and the images, in ``--out``.

Example (the README gives the command of its table)::

    tomesd frontier --speed sd15:512 sd15:1024:0.5 sdxl:1024:0.5 --compare-013 --out outputs/frontier
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from tomesd.lab.bench import TOMESD013_PYTHON, check_worker, parse_variant
from tomesd.lab.frontier import STANDARD_VARIANTS, FrontierRun, parse_speed, run_frontier
from tomesd.lab.generation import check_ratio

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.demo import TEXTURED_MODEL_DIR

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=TEXTURED_MODEL_DIR,
                        help="demo pipeline folder the images are drawn with (default: the shipped textured demo "
                             "model)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="another candidate of ours (repeatable), besides the standard ones: "
                             + ", ".join(label for label, _ in STANDARD_VARIANTS))
    parser.add_argument("--speed", nargs="*", default=["sd15:512"], metavar="ARCH:PX[:R+R]",
                        help="U-Net speed measurements: sd15:512 (every candidate), sdxl:1024:0.5 (that ratio only), "
                             "sd15:1024:0.5:default+no-mlp (those variants only; 'default' includes tomesd "
                             "0.1.3's); one ARCH:PX given twice times both selections there, in one column; "
                             "none: the images only")
    parser.add_argument("--count", type=int, default=24, help="held-out prompts drawn per setting")
    parser.add_argument("--plain", action="store_true", help="plain-shape prompts instead of textured ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("frontier"))
    parser.add_argument("--compare-013", type=Path, metavar="PYTHON", nargs="?", const=TOMESD013_PYTHON,
                        help=f"also measure tomesd 0.1.3 with this interpreter (default {TOMESD013_PYTHON}, made by "
                             "scripts/setup_tomesd013.sh)")
    return parser


def make_run(args: argparse.Namespace) -> FrontierRun:
    """The run the arguments ask for.

    Raises:
        ValueError: the reason, before anything is measured.
    """
    ratios = tuple(sorted({check_ratio(r) for r in args.ratios}))
    if 0 in ratios:
        raise ValueError("--ratios: the unpatched model is always measured; give merge ratios above 0")
    variants = STANDARD_VARIANTS + tuple(parse_variant(v) for v in args.variant)
    labels = [label for label, _ in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--variant: labels must differ from each other and from {', '.join(labels[:5])}")
    speeds = tuple(parse_speed(s) for s in args.speed)
    for speed in speeds:
        unknown = set(speed.variants or ()) - set(labels)
        if unknown:
            raise ValueError(f"--speed {speed.key}: no variant {', '.join(sorted(unknown))}; the variants: "
                             f"{', '.join(labels)}")
    if args.count < 1 or args.repeats < 1 or args.threads < 1:
        raise ValueError("--count, --repeats and --threads must be >= 1")
    if not (args.model / "model_index.json").exists():
        raise ValueError(f"--model {args.model}: not a diffusers pipeline folder (no model_index.json)")
    if args.compare_013 and not args.compare_013.exists():
        raise ValueError(f"--compare-013: no interpreter at {args.compare_013}; run scripts/setup_tomesd013.sh")
    check_worker()
    if importlib.util.find_spec("matplotlib") is None:  # frontier.png, written at the end: say so before measuring
        raise ValueError("writing frontier.png needs matplotlib: pip install 'tomesd[ui]'")
    return FrontierRun(model=args.model, ratios=ratios, variants=variants,
                       speeds=speeds, count=args.count, textures=not args.plain,
                       original=args.compare_013, repeats=args.repeats, threads=args.threads, seed=args.seed,
                       out=args.out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Measure, print the Markdown and write the results; returns the exit code (2: bad arguments)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        run = make_run(args)
    except ValueError as error:
        parser.error(str(error))
    print(run_frontier(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
