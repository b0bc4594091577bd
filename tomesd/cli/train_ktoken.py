"""``tomesd train-ktoken`` (and ``scripts/train_ktoken.py``): train a K-token encoder + LoRA adapters on a
local Hugging Face causal LM (nothing is downloaded; see :mod:`tomesd.llm.finetune`).

Data: a JSON-lines file with one ``{"context": ..., "question": ..., "answer": ...}`` object per line
(``--data``), or the built-in synthetic textualized-tree task (``--task tree``, which also builds its own
word-level tokenizer). The context is compressed by ``--k``; the loss is on the answer tokens only. The
encoder (safetensors) and the LoRA adapter (PEFT, safetensors) are saved to ``--out``; a held-out split is
evaluated before (training-free mean merge) and after training.

    tomesd train-ktoken --model path/to/causal-lm --data train.jsonl --k 4 --out outputs/k4
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local directory of a Hugging Face causal LM")
    parser.add_argument("--tokenizer", default=None, help="local tokenizer directory (default: --model)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="JSON-lines file of {context, question, answer}")
    source.add_argument("--task", choices=["tree"], help="built-in synthetic task")
    parser.add_argument("--tree-nodes", type=int, nargs=2, default=[4, 12], help="tree sizes for --task tree")
    parser.add_argument("--tree-questions", type=int, default=1,
                        help="questions labelled per training context for --task tree (evaluation asks one)")
    parser.add_argument("--k", type=int, default=4, help="block length: k context tokens become one")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--curriculum-start", type=int, default=None,
                        help="longest context (tokens) admitted at the start; default: no curriculum")
    parser.add_argument("--ramp-fraction", type=float, default=0.5,
                        help="share of steps until all lengths are admitted")
    parser.add_argument("--eval-count", type=int, default=200, help="held-out examples evaluated before and after")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="checkpoint directory")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train and save; prints the summary and returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tomesd.llm.finetune import load_examples, train_ktoken

    args = build_parser(prog).parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = None  # the tree task's own
    if args.task != "tree":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    examples = load_examples(args.data if args.task != "tree" else None, args.seed, tuple(args.tree_nodes),
                             args.tree_questions)
    summary = train_ktoken(args.model, args.out, examples, tokenizer, k=args.k, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
                           curriculum_start=args.curriculum_start, ramp_fraction=args.ramp_fraction,
                           eval_count=args.eval_count, seed=args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
