"""``tomesd bench`` (and ``scripts/benchmark.py``): speed of token merging vs merge ratio and patch options,
against the unpatched baseline, in one process, interleaved (see :mod:`tomesd.lab.bench`).

* ``--arch sd15`` / ``sdxl``: one U-Net forward of the full-size architecture, random weights;
* ``--arch pipeline``: whole generations of ``--model`` (the demo model by default), with PSNR / SSIM;
* ``--quality N``: N held-out prompts on the demo model under every setting (and tomesd 0.1.3's);
* ``--compile [BACKEND]``: the U-Net / pipeline rows compiled (patched first, then compiled; default backend
  inductor), each setting's compile time reported apart from the medians.

Results: ``benchmark.md``, ``benchmark.json`` and ``benchmark.png`` in ``--out``.

Example::

    tomesd bench --arch sd15 --resolution 512 --ratios 0 0.3 0.5 0.7 --out samples/benchmark
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from tomesd.lab.bench import (
    ARCHS, TOMESD013_PYTHON, check_worker, machine_description, make_settings, measure_arch, parse_variant, run_quality,
    write_results,
)
from tomesd.lab.generation import DEFAULT_COMPILE_BACKEND, check_compile_backend, check_ratio
from tomesd.lab.loading import DEMO, DTYPES

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="*", default=["sd15"], choices=ARCHS,
                        help="sd15/sdxl: full-size U-Net forward; pipeline: whole generations of --model; none: "
                             "only --quality")
    parser.add_argument("--model", default=DEMO, help="for --arch pipeline: 'demo' (default), 'demo-textured', "
                        "a folder, a .safetensors file or a model id")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="patch options to compare, e.g. 'mlp:merge_mlp=true' (repeatable; default: the "
                             "patcher's defaults)")
    parser.add_argument("--resolution", type=int, nargs="+", help="pixels, one run per value (default: 512 for "
                        "sd15, 1024 for sdxl, the model's usual for pipeline)")
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch (default 2: guidance's two halves)")
    parser.add_argument("--steps", type=int, help="pipeline steps (default: the model's usual)")
    parser.add_argument("--prompt", help="pipeline prompt (default: the model's first example)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="also draw N held-out prompts on the demo model under every setting (and tomesd 0.1.3's "
                             "with --compare-013) and report adherence, PSNR and SSIM against the unpatched images")
    parser.add_argument("--compile", nargs="?", const=DEFAULT_COMPILE_BACKEND, metavar="BACKEND",
                        help="compiled unpatched vs compiled patched: torch.compile the model after patching it at "
                             f"every setting (backend default {DEFAULT_COMPILE_BACKEND}; 'eager' to check the path "
                             "fast); compile time is reported apart")
    parser.add_argument("--out", type=Path, default=Path("benchmark"))
    parser.add_argument("--compare-013", type=Path, metavar="PYTHON", nargs="?", const=TOMESD013_PYTHON,
                        help="also measure tomesd 0.1.3 on the same U-Nets (and demo images) with this interpreter "
                             f"(default {TOMESD013_PYTHON}, made by scripts/setup_tomesd013.sh)")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Refuse what cannot be measured before anything is built.

    Raises:
        ValueError: the reason.
    """
    if args.repeats < 1 or args.warmup < 0 or args.quality < 0:
        raise ValueError("--repeats must be >= 1, --warmup and --quality >= 0")
    for resolution in args.resolution or []:
        if resolution <= 0 or resolution % 8:
            raise ValueError(f"--resolution {resolution} must be a positive multiple of 8")
    if args.compare_013 and not args.compare_013.exists():
        raise ValueError(f"--compare-013: no interpreter at {args.compare_013}; run scripts/setup_tomesd013.sh")
    check_compile_backend(args.compile)
    if args.compile and args.compare_013:
        raise ValueError("--compile and --compare-013 do not mix: tomesd 0.1.3's worker times the U-Net eager")
    if not args.arch and not args.quality:
        raise ValueError("nothing to measure: give --arch and/or --quality N")
    if args.quality or set(args.arch) - {"pipeline"}:
        check_worker()
    if importlib.util.find_spec("matplotlib") is None:  # benchmark.png, written at the end: say so before measuring
        raise ValueError("writing benchmark.png needs matplotlib: pip install 'tomesd[ui]'")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark, print the Markdown tables and write the results; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant] or [("default", {})]
        ratios = [check_ratio(ratio) for ratio in args.ratios]
        _check(args)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(ratios, variants)
    rows, units = [], []
    for arch in args.arch:
        arch_rows, unit = measure_arch(
            arch, settings, model=args.model, resolutions=args.resolution or (), batch=args.batch, steps=args.steps,
            prompt=args.prompt, seed=args.seed, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype,
            device=args.device, compare_013=args.compare_013, compile=args.compile,
        )
        rows += arch_rows
        units.append(unit)
    quality = run_quality(settings, args.quality, args.seed, args.compare_013) if args.quality else []
    description = machine_description(args.device, args.dtype, args.repeats, args.warmup)
    print(write_results(rows, quality, args.out, description, " / ".join(dict.fromkeys(units)) or "image quality",
                        args.quality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
