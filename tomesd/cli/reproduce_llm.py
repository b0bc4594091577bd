"""``tomesd reproduce-llm {miniature,real,code}`` (and ``scripts/reproduce_llm_{miniature,real,code}.py``):
the K-token reproductions of :mod:`tomesd.lab.llm_reproduce`, offline on a CPU.

* ``miniature``: a small Qwen2-architecture model is trained from scratch, uncompressed (K=1), on the
  synthetic textualized-tree task (loss on answer tokens only; several questions about each training
  context, since with one answer per context the model stayed at the level of guessing among the parents),
  evaluated on held-out trees at K=1 and at K=4 with the training-free mean merge; then a K-token encoder
  (K=4) and LoRA adapters are trained on the frozen model (curriculum over context length in the first
  half) and evaluated at K=4. Evaluation always asks one question per context. Writes the accuracy table
  (markdown + JSON) and a loss plot to ``--report`` and the checkpoints to ``--out``. The defaults take
  about 12 minutes of one CPU thread.
* ``real``: the paper's protocol on real pretrained weights: Textualized Tree with the model's own
  tokenizer, resumable. Stages (each resumes where a stopped run left it, and is skipped once done):
  ``k4`` a K-token encoder (K=4) and LoRA adapters trained together on the frozen model; ``k1`` LoRA
  adapters trained on the uncompressed task (K=1), the fair baseline, same steps as ``k4``; ``eval`` exact
  match of the greedy answer on held-out trees: K=1 without training, K=1 + LoRA, K=4 training-free mean
  (on the K=1 + LoRA model, which knows the answer format), K=4 encoder + LoRA. Training asks
  ``--questions`` questions about each training tree (each answer labelled); evaluation asks one.
  ``--task lookup`` (default) names a node's parent; ``--task relation`` is the paper's own form (an
  indented tree, "is X the parent of Y", true/false, balanced); ``--reconstruct`` adds a training turn
  that asks for the context back.
* ``code``: K-token merging on real code with real weights, continuing Python's standard library. Modules
  are split into training and held-out sets by a hash of their path (:mod:`tomesd.llm.code`). Each example
  is a file's ``--context-lines`` lines (compressed by ``--k``), the next ``--tail-lines`` lines kept
  uncompressed, and the line after them to predict. Stages (resumable, skipped once done): ``train`` a
  K-token encoder + LoRA adapters on the training modules (loss on the next line); ``eval`` on held-out
  modules, the next line's loss per token and exact match of the greedy line, with the uncompressed prefix
  (K=1), the training-free mean (K) and the trained encoder + LoRA (K).

For ``real`` and ``code``, checkpoints go to ``--work`` every ``--save-every`` minutes;
``--stop-after-minutes`` ends a call cleanly with exit code 3 (run the same command again to continue).

    tomesd reproduce-llm miniature
    tomesd reproduce-llm real --model qwen2.5-coder-0.5b --work outputs/llm_real
    tomesd reproduce-llm code --model qwen2.5-coder-0.5b --work outputs/llm_code
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

__all__ = ["VARIANTS", "build_parser", "main"]

VARIANTS = ("miniature", "real", "code")


def _add_miniature(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs=2, default=[3, 8], help="tree sizes (min max)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="uncompressed training steps")
    parser.add_argument("--adapt-steps", type=int, default=1500, help="encoder + LoRA training steps at K")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both stages")
    parser.add_argument("--pretrain-curriculum", type=float, default=0.0, metavar="FRACTION",
                        help="share of the uncompressed training that ramps context length up (0: none, all "
                        "lengths from the start, which learned the lookup where a 0.5 ramp did not)")
    parser.add_argument("--questions", type=int, default=8,
                        help="questions asked (and labelled) per training context, in both stages; evaluation asks one")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--eval-count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/llm_miniature", help="checkpoint directory")
    parser.add_argument("--report", default="samples", help="where the table, JSON and plot go")


def _add_model(parser: argparse.ArgumentParser) -> None:
    from tomesd.llm.weights import MODELS

    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help=f"one of {', '.join(MODELS)} (tomesd.llm.weights), or a local Hugging Face folder")


def _add_real(parser: argparse.ArgumentParser) -> None:
    from tomesd.lab.llm_reproduce import REAL_STAGES, TREE_TASKS
    from tomesd.llm.train import StageOptions

    _add_model(parser)
    parser.add_argument("--stages", nargs="+", choices=REAL_STAGES, default=list(REAL_STAGES))
    parser.add_argument("--work", default="outputs/llm_real", help="checkpoints and resumable training state")
    parser.add_argument("--report", default="samples", help="where the table and JSON go")
    parser.add_argument("--task", choices=TREE_TASKS, default="lookup",
                        help="lookup: sentences 'C is the parent of F .', asked 'who is the parent of F ?', answered "
                        "by a name (tomesd.llm.task); relation: the paper's form, an indented tree asked whether one "
                        "node is another's parent, answered true or false, balanced (tomesd.llm.relation_task)")
    parser.add_argument("--nodes", type=int, nargs=2, default=[8, 16], help="tree sizes (min max)")
    parser.add_argument("--train-nodes", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="training tree sizes (default: --nodes); smaller trees give --curriculum a start")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4, help="questions labelled per training tree")
    parser.add_argument("--k-from-k1", action="store_true",
                        help="start the K stage's LoRA from the finished K=1 stage's adapters (k1 runs first): the "
                        "model already answers the task uncompressed and only learns to read merged tokens, as in "
                        "the miniature")
    parser.add_argument("--reconstruct", action="store_true",
                        help="end every training tree's turns with one that asks for the context back and labels "
                        "all of it (tomesd.llm.task.with_reconstruction): a label per context token, not one per "
                        "question")
    parser.add_argument("--train-trees", type=int, default=20000, help="training trees drawn (seed --seed)")
    parser.add_argument("--eval-count", type=int, default=200, help="held-out trees")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--threads", type=int, default=1)
    StageOptions.add_arguments(parser)


def _add_code(parser: argparse.ArgumentParser) -> None:
    from tomesd.lab.llm_reproduce import CODE_STAGES
    from tomesd.llm.train import StageOptions

    _add_model(parser)
    parser.add_argument("--stages", nargs="+", choices=CODE_STAGES, default=list(CODE_STAGES))
    parser.add_argument("--work", default="outputs/llm_code", help="checkpoints and resumable training state")
    parser.add_argument("--report", default="samples", help="where the table and JSON go")
    parser.add_argument("--stdlib", default=None, help="source folder (default: this Python's standard library)")
    parser.add_argument("--context-lines", type=int, default=32)
    parser.add_argument("--tail-lines", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--train-count", type=int, default=5000, help="training cuts drawn")
    parser.add_argument("--eval-count", type=int, default=100, help="held-out cuts")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    StageOptions.add_arguments(parser)


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "miniature": _add_miniature, "real": _add_real, "code": _add_code}
SUMMARIES = {"miniature": "a small Qwen2 trained from scratch on the tree task, then an encoder + LoRA",
             "real": "the tree protocol on real pretrained weights (resumable)",
             "code": "continuing Python's standard library on real weights (resumable)"}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: one subcommand per reproduction, each with its own flags."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    variants = parser.add_subparsers(dest="variant", required=True, metavar="{" + ",".join(VARIANTS) + "}")
    for name in VARIANTS:
        ARGUMENTS[name](variants.add_parser(name, help=SUMMARIES[name], description=SUMMARIES[name]))
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one reproduction; returns its exit code (3: stopped by ``--stop-after-minutes``, run again)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tomesd.lab import llm_reproduce

    args = build_parser(prog).parse_args(argv)
    variant = args.variant
    del args.variant  # the reports record the reproduction's own settings only
    if variant == "miniature":
        llm_reproduce.run_miniature(args)
        return 0
    return llm_reproduce.run_real(args) if variant == "real" else llm_reproduce.run_code(args)


if __name__ == "__main__":
    sys.exit(main())
