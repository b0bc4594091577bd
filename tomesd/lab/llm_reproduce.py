"""The K-token reproductions behind ``tomesd reproduce-llm {miniature,real,code}`` (and
``scripts/reproduce_llm_{miniature,real,code}.py``): each trains (resumably, for real weights), evaluates
held-out examples and writes its table (markdown + JSON) to a report folder. Each takes the parsed command
line of :mod:`tomesd.cli.reproduce_llm` (its settings go into the JSON report as they are).

* :func:`run_miniature`: a small Qwen2 trained from scratch on the tree task, then a K-token encoder + LoRA;
* :func:`run_real`: the paper's protocol on real pretrained weights (tree task, the model's own tokenizer);
* :func:`run_code`: continuing Python's standard library, on real weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from tomesd.llm import KTokenEncoder
from tomesd.llm.code import code_examples, next_line_metrics, split_files, stdlib_files
from tomesd.llm.finetune import small_qwen2
from tomesd.llm.relation_task import majority_accuracy, relation_examples
from tomesd.llm.task import build_tree_tokenizer, parent_guess_accuracy, tree_examples, with_reconstruction
from tomesd.llm.train import (DONE_FILE, LORA_DIR, LengthCurriculum, StageOptions, accuracy, add_lora,
                              load_checkpoint, save_checkpoint, train, train_stage)
from tomesd.llm.weights import MODELS, load_model

__all__ = ["REAL_STAGES", "CODE_STAGES", "STOPPED", "evaluate_real", "plot_losses", "run_code", "run_miniature",
           "run_real"]

# --task of the real protocol: (examples(count, min_nodes, max_nodes, seed, questions), its no-model reference)
TREE_TASKS = {
    "lookup": (tree_examples, "reference, no model: guess among the context's parents", parent_guess_accuracy),
    "relation": (relation_examples, "reference, no model: the commonest answer", majority_accuracy),
}
REAL_STAGES = ("k4", "k1", "eval")  # the trained K=4 first: a stopped session has it soonest
CODE_STAGES = ("train", "eval")
STOPPED = 3  # the exit code of a call its time limit stopped (run the same command again to continue)


def plot_losses(curves: dict[str, list[float]], path: Path) -> None:
    """Smoothed training-loss curves, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5))
    for ax, (name, losses) in zip(axes, curves.items()):
        window = 25
        smooth = [sum(losses[max(0, i - window) : i + 1]) / len(losses[max(0, i - window) : i + 1])
                  for i in range(len(losses))]
        ax.plot(smooth)
        ax.set(title=name, xlabel="step", ylabel="answer loss", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_miniature(args: argparse.Namespace) -> dict[str, float]:
    """Pretrain a small Qwen2 uncompressed (K=1) on the tree task, evaluate at K=1 and K mean, train a K-token
    encoder + LoRA and evaluate it; writes checkpoints to ``args.out`` and the table, JSON and loss plot to
    ``args.report``. Returns setting -> accuracy."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    tokenizer = build_tree_tokenizer()
    model = small_qwen2(len(tokenizer), args.hidden, args.layers)
    held_out = tree_examples(args.eval_count, *args.nodes, seed=args.seed + 1)
    training = tree_examples(30000, *args.nodes, seed=args.seed, questions=args.questions)
    lengths = [len(e.context.split()) for e in training]  # word-level tokenizer: one token per word
    ramp = int(args.pretrain_steps * args.pretrain_curriculum)
    curriculum = LengthCurriculum(training, lengths, min(lengths), ramp, seed=args.seed)

    timings = {}
    stage = time.perf_counter()
    pretrain_losses = train(model, tokenizer, curriculum, 1, args.pretrain_steps, args.batch_size, args.lr,
                            desc="pretrain K=1")
    timings["pretrain_minutes"] = (time.perf_counter() - stage) / 60
    model.save_pretrained(Path(args.out) / "base")
    rows = [("K=1 (uncompressed)", accuracy(model, tokenizer, held_out, 1)),
            (f"K={args.k}, training-free mean", accuracy(model, tokenizer, held_out, args.k))]

    stage = time.perf_counter()
    encoder = KTokenEncoder(args.hidden, args.k)
    model = add_lora(model, rank=8, alpha=16)
    curriculum = LengthCurriculum(training, lengths, min(lengths), args.adapt_steps // 2, seed=args.seed + 2)
    adapt_losses = train(model, tokenizer, curriculum, args.k, args.adapt_steps, args.batch_size, args.lr, encoder,
                         desc=f"encoder+LoRA K={args.k}")
    timings["adapt_minutes"] = (time.perf_counter() - stage) / 60
    save_checkpoint(Path(args.out) / f"k{args.k}", encoder, model)
    rows.append((f"K={args.k}, trained encoder + LoRA", accuracy(model, tokenizer, held_out, args.k, encoder)))
    timings["total_minutes"] = (time.perf_counter() - began) / 60

    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    plot_losses({"pretrain K=1": pretrain_losses, f"encoder + LoRA K={args.k}": adapt_losses},
                report / "llm_miniature_loss.png")
    table = ["| setting | context tokens kept | accuracy |", "| --- | --- | --- |"]
    table += [f"| {name} | {_kept(name, args.k)} | {100 * acc:.1f}% |" for name, acc in rows]
    guess = parent_guess_accuracy(held_out)
    table.append(f"| reference: guess among the context's parents (no model) | - | {100 * guess:.1f}% |")
    print("\n".join(table))
    print(json.dumps(timings, indent=2))
    with open(report / "llm_miniature.json", "w") as f:
        json.dump({"settings": vars(args), "accuracy": dict(rows), "parent_guess_accuracy": guess,
                   "timings": timings, "final_losses": {"pretrain": pretrain_losses[-1], "adapt": adapt_losses[-1]}},
                  f, indent=2)
    return dict(rows)


def _kept(row: str, k: int) -> str:
    """The share of context tokens a table row keeps."""
    return "100%" if row.startswith("K=1") else f"{100 / k:.0f}%"


def evaluate_real(args: argparse.Namespace, base: Any, tokenizer: Any) -> dict[str, Any]:
    """Exact match on the held-out trees for every condition of :func:`run_real`; writes the report."""
    from peft import PeftModel

    examples, reference, reference_accuracy = TREE_TASKS[args.task]
    held_out = examples(args.eval_count, *args.nodes, seed=args.seed + 1)
    rows = {"K=1, no training": accuracy(base, tokenizer, held_out, 1, batch_size=args.eval_batch)}
    k1 = PeftModel.from_pretrained(base, Path(args.work) / "k1" / LORA_DIR).eval()
    rows["K=1, LoRA"] = accuracy(k1, tokenizer, held_out, 1, batch_size=args.eval_batch)
    rows[f"K={args.k}, training-free mean (K=1 LoRA model)"] = accuracy(
        k1, tokenizer, held_out, args.k, batch_size=args.eval_batch)
    base = k1.unload()
    encoder, k4 = load_checkpoint(Path(args.work) / f"k{args.k}", base)
    trained = f"K={args.k}, encoder + LoRA" + (" (LoRA started from K=1's)" if args.k_from_k1 else "")
    rows[trained] = accuracy(k4, tokenizer, held_out, args.k, encoder, batch_size=args.eval_batch)
    k4.unload()
    lengths = [len(ids) for ids in tokenizer([e.context for e in held_out], add_special_tokens=False)["input_ids"]]
    minutes = {f"k{k}": json.loads((Path(args.work) / f"k{k}" / DONE_FILE).read_text())["train_minutes"]
               for k in (1, args.k)}
    result = {"model": args.model, "settings": vars(args), "accuracy": rows, "eval_count": len(held_out),
              "context_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
              "reference": {reference: reference_accuracy(held_out)}, "train_minutes": minutes}
    name = Path(args.model).name if args.model not in MODELS else args.model
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"llm_real_tree_{name}.json").write_text(json.dumps(result, indent=2))
    table = ["| setting | context kept | exact match |", "| --- | --- | --- |"]
    table += [f"| {row} | {_kept(row, args.k)} | {100 * acc:.1f}% |" for row, acc in rows.items()]
    table += [f"| {reference} | - | {100 * result['reference'][reference]:.1f}% |"]
    (report / f"llm_real_tree_{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return result


def run_real(args: argparse.Namespace) -> int:
    """Run ``args.stages`` of the real-weights tree protocol (training stages resume and are skipped once
    done); returns 0, or :data:`STOPPED` when the time limit ended a training stage."""
    torch.set_num_threads(args.threads)
    deadline = StageOptions.deadline(args)
    base, tokenizer = load_model(args.model)
    if args.grad_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    training = TREE_TASKS[args.task][0](args.train_trees, *(args.train_nodes or args.nodes), seed=args.seed,
                                        questions=args.questions)
    if args.reconstruct:
        training = [with_reconstruction(example) for example in training]
    for stage in _stage_order(args):
        if stage == "eval":
            evaluate_real(args, base, tokenizer)
            continue
        k = 1 if stage == "k1" else args.k
        options = StageOptions.from_args(args, init_adapter=_k1_adapter(args) if k > 1 and args.k_from_k1 else None)
        if train_stage(base, tokenizer, training, k, Path(args.work) / f"k{k}", options, deadline) is None:
            print(f"stopped during stage {stage}; run the same command again to continue")
            return STOPPED
    return 0


def _k1_adapter(args: argparse.Namespace) -> str:
    """The finished K=1 stage's adapter folder, which ``--k-from-k1`` starts the K stage from.

    Raises:
        ValueError: the k1 stage is not finished in ``args.work``.
    """
    k1 = Path(args.work) / "k1"
    if not (k1 / DONE_FILE).is_file():
        raise ValueError(f"--k-from-k1: the k1 stage is not finished in {k1}; run it first (--stages k1 k4 eval)")
    return str(k1 / LORA_DIR)


def _stage_order(args: argparse.Namespace) -> list[str]:
    """``args.stages`` in the order they run: as given, but with ``--k-from-k1`` the K=1 stage first."""
    if not args.k_from_k1:
        return list(args.stages)
    return sorted(args.stages, key=("k1", "k4", "eval").index)


def run_code(args: argparse.Namespace) -> int:
    """Run ``args.stages`` of the standard-library code protocol (training resumes and is skipped once done);
    returns 0, or :data:`STOPPED` when the time limit ended training."""
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
            return STOPPED
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
                  "train_minutes": json.loads((directory / DONE_FILE).read_text())["train_minutes"]}
        (report / f"llm_real_code_{name}.json").write_text(json.dumps(result, indent=2))
        table = ["| prefix | kept | next-line loss / token | exact match |", "| --- | --- | --- | --- |"]
        table += [f"| {row} | {_kept(row, args.k)} | {m['loss']:.3f} | {100 * m['exact_match']:.1f}% |"
                  for row, m in rows.items()]
        (report / f"llm_real_code_{name}.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
    return 0
