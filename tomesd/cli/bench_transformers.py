"""``tomesd bench-transformers`` (and ``scripts/benchmark_transformers.py``): speed of token-merged vs unmerged
Hugging Face vision encoders (VideoMAE-B 16x224, ViT-B/16, DINOv2-B, CLIP ViT-L/14 at 336 px), in one process,
interleaved, with the FLOP ratio and the agreement of outputs (see :mod:`tomesd.lab.transformers_bench`).
Random weights: nothing is downloaded.

    tomesd bench-transformers                              # every model, the README table
    tomesd bench-transformers --models vit_b16 --repeats 3
    tomesd bench-transformers --tiny --repeats 1           # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

DEFAULT_OUT = Path("samples/vision/benchmark_transformers.json")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.lab.transformers_bench import CASES

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quality-samples", type=int, default=8, help="inputs the agreement is measured on")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and r=2: checks the command runs")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON file for the rows (default: {DEFAULT_OUT}, none with --tiny)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Measure the chosen models, print the table and save the rows; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never ask the hub
    import torch

    from tomesd.lab.transformers_bench import CASES, markdown, run_case, write_rows

    args = build_parser(prog).parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [row for name in args.models
            for row in run_case(CASES[name], args.tiny, args.repeats, args.warmup, args.quality_samples, args.device)]
    print(markdown(rows))
    out = args.out or (None if args.tiny else DEFAULT_OUT)
    if out is not None:
        write_rows(rows, out, args.device, args.repeats)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
