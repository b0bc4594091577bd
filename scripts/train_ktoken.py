"""Train a K-token encoder + LoRA adapters on a local Hugging Face causal LM (nothing is downloaded).

Data: a JSON-lines file with one ``{"context": ..., "question": ..., "answer": ...}`` object per line
(``--data``), or the built-in synthetic textualized-tree task (``--task tree``, which also builds its own
word-level tokenizer). The context is compressed by ``--k``; the loss is on the answer tokens only. The
encoder (safetensors) and the LoRA adapter (PEFT, safetensors) are saved to ``--out``; a held-out split is
evaluated before (training-free mean merge) and after training.

    .venv/bin/python scripts/train_ktoken.py --model path/to/causal-lm --data train.jsonl --k 4 --out outputs/k4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tomesd.llm import KTokenEncoder
from tomesd.llm.task import QAExample, build_tree_tokenizer, tree_examples
from tomesd.llm.train import LengthCurriculum, accuracy, add_lora, save_checkpoint, train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser.parse_args()


def load_examples(args: argparse.Namespace) -> list[QAExample]:
    """The training + evaluation examples, shuffled reproducibly."""
    if args.task == "tree":
        return tree_examples(20000, *args.tree_nodes, seed=args.seed, questions=args.tree_questions)
    with open(args.data) as f:
        examples = [QAExample(**{key: row[key] for key in ("context", "question", "answer")})
                    for row in map(json.loads, filter(str.strip, f))]
    random.Random(args.seed).shuffle(examples)
    return examples


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.task == "tree":
        tokenizer = build_tree_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    examples = load_examples(args)
    if len(examples) <= args.eval_count:
        raise ValueError(f"need more than --eval-count={args.eval_count} examples, got {len(examples)}")
    held_out, training = examples[: args.eval_count], examples[args.eval_count :]
    lengths = [len(ids) for ids in tokenizer([e.context for e in training])["input_ids"]]
    start = args.curriculum_start if args.curriculum_start is not None else max(lengths)
    curriculum = LengthCurriculum(training, lengths, start, int(args.ramp_fraction * args.steps), seed=args.seed)

    before = accuracy(model, tokenizer, held_out, args.k)
    encoder = KTokenEncoder(model.get_input_embeddings().embedding_dim, args.k)
    model = add_lora(model, rank=args.lora_rank, alpha=2 * args.lora_rank)
    began = time.perf_counter()
    losses = train(model, tokenizer, curriculum, args.k, args.steps, args.batch_size, args.lr, encoder)
    minutes = (time.perf_counter() - began) / 60
    after = accuracy(model, tokenizer, held_out, args.k, encoder)
    save_checkpoint(args.out, encoder, model)
    last = losses[-20:]
    summary = {"k": args.k, "steps": args.steps, "train_minutes": minutes, "final_loss": sum(last) / len(last),
               "accuracy_mean_merge": before, "accuracy_trained": after, "eval_count": len(held_out)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
