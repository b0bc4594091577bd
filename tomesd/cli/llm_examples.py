"""``tomesd llm-examples`` (and ``scripts/llm_examples.py``): one prompt answered by a real model
uncompressed, at K=2 and K=4 (mean), and with a trained K=4 encoder (see :mod:`tomesd.lab.llm_examples`).
The answers are printed and, with ``--out``, written as markdown.

    tomesd llm-examples --model qwen2.5-coder-0.5b --out samples/llm_examples_qwen.md
    tomesd llm-examples --model qwen2.5-coder-0.5b --encoder-dir outputs/llm_real/k4
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line."""
    from tomesd.lab.llm_examples import DOCUMENT, QUESTION
    from tomesd.llm.weights import MODELS

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help=f"one of {', '.join(MODELS)} (tomesd.llm.weights), or a local Hugging Face folder")
    parser.add_argument("--encoder-dir", default=None, help="a trained K=4 checkpoint (encoder + LoRA)")
    parser.add_argument("--document", default=DOCUMENT, help="the text compressed (default: a paragraph on the "
                        "Eiffel Tower)")
    parser.add_argument("--question", default=QUESTION, help="the question kept uncompressed after it")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="markdown file for the answers")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Answer, print and (with ``--out``) write the table; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tomesd.lab.llm_examples import answer_table, answers
    from tomesd.llm.weights import load_model

    args = build_parser(prog).parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    answered = answers(model, tokenizer, args.document, args.question, args.max_new_tokens, args.encoder_dir)
    document_tokens = len(tokenizer(args.document, add_special_tokens=False)["input_ids"])
    text = answer_table(args.model, document_tokens, args.max_new_tokens, answered)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
