"""The paper's protocol on real pretrained weights: Textualized Tree with the model's own tokenizer, resumable.

Stages (each one resumes where a stopped run left it, and is skipped once done):

* ``k4``: a K-token encoder (K=4) and LoRA adapters trained together on the frozen model;
* ``k1``: LoRA adapters trained on the uncompressed task (K=1): the fair baseline, same steps as ``k4``;
* ``eval``: exact match of the greedy answer on held-out trees: K=1 without training, K=1 + LoRA, K=4
  training-free mean (on the K=1 + LoRA model, which knows the answer format), K=4 encoder + LoRA.

Training asks ``--questions`` questions about each training tree (each answer labelled); evaluation asks one.
Checkpoints go to ``--work`` every ``--save-every`` minutes; ``--stop-after-minutes`` ends a call cleanly
(run the same command again to continue). The table (markdown + JSON) goes to ``--report``.

    .venv/bin/python scripts/reproduce_llm_real.py --model qwen2.5-coder-0.5b --work outputs/llm_real
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tomesd.llm.task import parent_guess_accuracy, tree_examples
from tomesd.llm.train import DONE_FILE, LORA_DIR, StageOptions, accuracy, load_checkpoint, train_stage
from tomesd.llm.weights import MODELS, load_model

STAGES = ("k4", "k1", "eval")  # the trained K=4 first: a stopped session has it soonest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help=f"one of {', '.join(MODELS)} (tomesd.llm.weights), or a local Hugging Face folder")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--work", default="outputs/llm_real", help="checkpoints and resumable training state")
    parser.add_argument("--report", default="samples", help="where the table and JSON go")
    parser.add_argument("--nodes", type=int, nargs=2, default=[8, 16], help="tree sizes (min max)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4, help="questions labelled per training tree")
    parser.add_argument("--train-trees", type=int, default=20000, help="training trees drawn (seed --seed)")
    parser.add_argument("--eval-count", type=int, default=200, help="held-out trees")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--threads", type=int, default=1)
    StageOptions.add_arguments(parser)
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace, base: Any, tokenizer: Any) -> dict[str, Any]:
    """Exact match on the held-out trees for every condition; writes the report."""
    from peft import PeftModel

    held_out = tree_examples(args.eval_count, *args.nodes, seed=args.seed + 1)
    rows = {"K=1, no training": accuracy(base, tokenizer, held_out, 1, batch_size=args.eval_batch)}
    k1 = PeftModel.from_pretrained(base, Path(args.work) / "k1" / LORA_DIR).eval()
    rows["K=1, LoRA"] = accuracy(k1, tokenizer, held_out, 1, batch_size=args.eval_batch)
    rows[f"K={args.k}, training-free mean (K=1 LoRA model)"] = accuracy(
        k1, tokenizer, held_out, args.k, batch_size=args.eval_batch)
    base = k1.unload()
    encoder, k4 = load_checkpoint(Path(args.work) / f"k{args.k}", base)
    rows[f"K={args.k}, encoder + LoRA"] = accuracy(k4, tokenizer, held_out, args.k, encoder, batch_size=args.eval_batch)
    k4.unload()
    lengths = [len(ids) for ids in tokenizer([e.context for e in held_out], add_special_tokens=False)["input_ids"]]
    minutes = {f"k{k}": json.loads((Path(args.work) / f"k{k}" / DONE_FILE).read_text())["train_minutes"]
               for k in (1, args.k)}
    result = {"model": args.model, "settings": vars(args), "accuracy": rows, "eval_count": len(held_out),
              "context_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
              "parent_guess_accuracy": parent_guess_accuracy(held_out), "train_minutes": minutes}
    name = Path(args.model).name if args.model not in MODELS else args.model
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"llm_real_tree_{name}.json").write_text(json.dumps(result, indent=2))
    table = ["| setting | context kept | exact match |", "| --- | --- | --- |"]
    table += [f"| {row} | {'100%' if row.startswith('K=1') else f'{100 / args.k:.0f}%'} | {100 * acc:.1f}% |"
              for row, acc in rows.items()]
    (report / f"llm_real_tree_{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    deadline = StageOptions.deadline(args)
    base, tokenizer = load_model(args.model)
    if args.grad_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    training = tree_examples(args.train_trees, *args.nodes, seed=args.seed, questions=args.questions)
    for stage in args.stages:
        if stage == "eval":
            evaluate(args, base, tokenizer)
            continue
        k = 1 if stage == "k1" else args.k
        if train_stage(base, tokenizer, training, k, Path(args.work) / f"k{k}", StageOptions.from_args(args), deadline) is None:
            print(f"stopped during stage {stage}; run the same command again to continue")
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
