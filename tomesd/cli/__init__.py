"""The ``tomesd`` console command: one subcommand per front end, each a thin argument parser over
:mod:`tomesd.lab` (or the app). ``tomesd --help`` lists them; ``tomesd COMMAND --help`` describes one.

A subcommand's module is imported only when it runs, so ``tomesd generate`` needs neither Gradio nor timm.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

__all__ = ["COMMANDS", "main"]


class Command(NamedTuple):
    """A subcommand: the module whose ``main(argv, prog)`` runs it, one line of help, and the optional
    dependencies (``pip install 'tomesd[extra]'``) it needs beyond the core ones."""

    module: str
    summary: str
    extra: str | None = None


COMMANDS = {
    "generate": Command("tomesd.cli.generate", "batch generation at several merge ratios, with a speed log"),
    "app": Command("tomesd.ui.__main__", "the A/B app in the browser: one prompt at several ratios side by side", "ui"),
    "bench": Command("tomesd.cli.bench", "U-Net / pipeline speed (and demo-model quality) against the baseline"),
    "bench-vision": Command("tomesd.cli.bench_vision", "timm ViT and SAM encoder speed and agreement", "vision"),
    "frontier": Command("tomesd.cli.frontier", "the speed/quality frontier of the patch's settings, and the defaults rule"),
    "evaluate-demo": Command("tomesd.cli.evaluate_demo", "the demo model's prompt adherence and merging's cost"),
    "evaluate-motion": Command("tomesd.cli.evaluate_motion",
                               "what merging does to motion: the demo AnimateDiff clips against unmerged ones"),
    "visualize-merges": Command("tomesd.cli.visualize_merges", "ToMe's merge groups of a timm ViT over an image",
                                "vision"),
    "bench-transformers": Command("tomesd.cli.bench_transformers",
                                  "Hugging Face ViT / DINOv2 / CLIP / VideoMAE encoder speed and agreement"),
    "visualize-video-merges": Command("tomesd.cli.visualize_video_merges",
                                      "which VideoMAE tubelets merge across frames, global vs space-time"),
    "train-demo": Command("tomesd.cli.train_demo", "train the demo text-to-image model from scratch and ship it"),
    "train-demo-motion": Command("tomesd.cli.train_demo_motion",
                                 "train the demo model's AnimateDiff motion adapter on moving-shape clips"),
    "bench-llm": Command("tomesd.cli.bench_llm", "K-token merging's prefill speed and memory against the full prompt",
                         "llm"),
    "train-ktoken": Command("tomesd.cli.train_ktoken", "train a K-token encoder + LoRA on a local causal LM", "llm"),
    "llm-examples": Command("tomesd.cli.llm_examples", "one prompt answered by a real model at K=1, 2 and 4",
                            "llm-weights"),
    "reproduce-llm": Command("tomesd.cli.reproduce_llm",
                             "the K-token reproductions: miniature, real (tree task) and code", "llm"),
}


def usage() -> str:
    """The command list ``tomesd --help`` prints."""
    width = max(map(len, COMMANDS))
    lines = ["usage: tomesd COMMAND [options]   (tomesd COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``tomesd COMMAND ...``; returns the command's exit code (2 for an unknown or missing command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = "no command given" if not argv else f"unknown command {argv[0]!r}"
        print(f"{usage()}\n\ntomesd: error: {problem}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
        return module.main(rest, prog=f"tomesd {name}") or 0
    except ModuleNotFoundError as error:
        if command.extra is None or error.name is None or error.name.startswith("tomesd"):
            raise
        print(f"tomesd {name}: error: it needs {error.name!r}, one of the optional dependencies: "
              f"pip install 'tomesd[{command.extra}]'", file=sys.stderr)
        return 2
