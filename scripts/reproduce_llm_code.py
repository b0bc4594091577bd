"""K-token merging on real code with real weights: continuing Python's standard library (no download).

Modules are split into training and held-out sets by a hash of their path (:mod:`tomesd.llm.code`). Each
example is a file's ``--context-lines`` lines (compressed by ``--k``), the next ``--tail-lines`` lines kept
uncompressed, and the line after them to predict. Stages (resumable, skipped once done):

* ``train``: a K-token encoder + LoRA adapters trained on the training modules (loss on the next line);
* ``eval``: on held-out modules, the next line's loss per token and exact match of the greedy line, with
  the uncompressed prefix (K=1), the training-free mean (K) and the trained encoder + LoRA (K).

    .venv/bin/python scripts/reproduce_llm_code.py --model qwen2.5-coder-0.5b --work outputs/llm_code
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tomesd.llm.code import code_examples, next_line_metrics, split_files, stdlib_files
from tomesd.llm.train import StageOptions, load_checkpoint, train_stage
from tomesd.llm.weights import MODELS, load_model

STAGES = ("train", "eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help=f"one of {', '.join(MODELS)} (tomesd.llm.weights), or a local Hugging Face folder")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    deadline = StageOptions.deadline(args)
    training_files, held_out_files = split_files(stdlib_files(args.stdlib), args.stdlib)
    shape = dict(context_lines=args.context_lines, tail_lines=args.tail_lines)
    base, tokenizer = load_model(args.model)
    directory = Path(args.work) / f"k{args.k}"
    if "train" in args.stages:
        options = StageOptions.from_args(args, answer_eos=False)
        training = code_examples(training_files, args.train_count, seed=args.seed, **shape)
        if train_stage(base, tokenizer, training, args.k, directory, options, deadline) is None:
            print("stopped during stage train; run the same command again to continue")
            return 3
    if "eval" in args.stages:
        held_out = code_examples(held_out_files, args.eval_count, seed=args.seed + 1, **shape)
        rows = {"K=1, uncompressed prefix": next_line_metrics(base, tokenizer, held_out, 1, batch_size=args.eval_batch),
                f"K={args.k}, training-free mean": next_line_metrics(base, tokenizer, held_out, args.k,
                                                                      batch_size=args.eval_batch)}
        encoder, trained = load_checkpoint(directory, base)
        rows[f"K={args.k}, encoder + LoRA"] = next_line_metrics(trained, tokenizer, held_out, args.k, encoder,
                                                                 batch_size=args.eval_batch)
        name = args.model if args.model in MODELS else Path(args.model).name
        report = Path(args.report)
        report.mkdir(parents=True, exist_ok=True)
        result = {"model": args.model, "settings": vars(args), "metrics": rows, "eval_count": len(held_out),
                  "files": {"training": len(training_files), "held_out": len(held_out_files)},
                  "train_minutes": json.loads((directory / "done.json").read_text())["train_minutes"]}
        (report / f"llm_real_code_{name}.json").write_text(json.dumps(result, indent=2))
        table = ["| prefix | kept | next-line loss / token | exact match |", "| --- | --- | --- | --- |"]
        table += [f"| {row} | {'100%' if row.startswith('K=1') else f'{100 / args.k:.0f}%'} | {m['loss']:.3f} | "
                  f"{100 * m['exact_match']:.1f}% |" for row, m in rows.items()]
        (report / f"llm_real_code_{name}.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
