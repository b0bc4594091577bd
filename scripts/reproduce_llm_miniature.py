"""Miniature reproduction of K-token merging, offline on a CPU.

1. A small Qwen2-architecture model is trained from scratch, uncompressed (K=1), on the synthetic
   textualized-tree task (loss on answer tokens only; several questions about each training context,
   since with one answer per context the model stayed at the level of guessing among the parents).
2. It is evaluated on held-out trees at K=1 and at K=4 with the training-free mean merge.
3. A K-token encoder (K=4) and LoRA adapters are trained on the frozen model (curriculum over context
   length in the first half), then evaluated at K=4. Evaluation always asks one question per context.

Writes the accuracy table (markdown + JSON) and a loss plot to ``--report`` and the checkpoints to
``--out``. The defaults take about 12 minutes of one CPU thread.

    .venv/bin/python scripts/reproduce_llm_miniature.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tomesd.llm import KTokenEncoder
from tomesd.llm.task import build_tree_tokenizer, parent_guess_accuracy, tree_examples
from tomesd.llm.train import LengthCurriculum, accuracy, add_lora, save_checkpoint, train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser.parse_args()


def build_model(vocab_size: int, hidden: int, layers: int) -> Qwen2ForCausalLM:
    """A small Qwen2 from scratch (random init, seeded by the caller)."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    tokenizer = build_tree_tokenizer()
    model = build_model(len(tokenizer), args.hidden, args.layers)
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
    for name, acc in rows:
        kept = "100%" if name.startswith("K=1") else f"{100 / args.k:.0f}%"
        table.append(f"| {name} | {kept} | {100 * acc:.1f}% |")
    guess = parent_guess_accuracy(held_out)
    table.append(f"| reference: guess among the context's parents (no model) | - | {100 * guess:.1f}% |")
    text = "\n".join(table)
    print(text)
    print(json.dumps(timings, indent=2))
    with open(report / "llm_miniature.json", "w") as f:
        json.dump({"settings": vars(args), "accuracy": dict(rows), "parent_guess_accuracy": guess,
                   "timings": timings, "final_losses": {"pretrain": pretrain_losses[-1], "adapt": adapt_losses[-1]}},
                  f, indent=2)


if __name__ == "__main__":
    main()
