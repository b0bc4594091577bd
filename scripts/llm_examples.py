"""One prompt answered by a real model uncompressed, at K=2 and K=4 (mean), and with a trained K=4 encoder.

The document is compressed; the question stays uncompressed after it. Models with a chat template (the
Qwen2.5-Coder *Instruct* model) get the template around the prompt: its opening kept uncompressed before
the document (``head``), its closing after the question. Greedy decoding; the answers are printed and,
with ``--out``, written as markdown.

    .venv/bin/python scripts/llm_examples.py --model qwen2.5-coder-0.5b --out samples/llm_examples_qwen.md
    .venv/bin/python scripts/llm_examples.py --model qwen2.5-coder-0.5b --encoder-dir outputs/llm_real/k4
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tomesd.llm import generate_text
from tomesd.llm.tokens import chat_parts
from tomesd.llm.train import load_checkpoint
from tomesd.llm.weights import MODELS, load_model

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
    "\"La dame de fer\" (French for \"Iron Lady\"), it was constructed as the centrepiece of the 1889 World's Fair, "
    "and to crown the centennial anniversary of the French Revolution. Although initially criticised by some of "
    "France's leading artists and intellectuals for its design, it has since become a global cultural icon of "
    "France and one of the most recognisable structures in the world. The tower received 5,889,000 visitors in "
    "2022. It is 330 metres tall, about the same height as an 81-storey building, and was the tallest man-made "
    "structure in the world until the Chrysler Building in New York City was finished in 1930."
)
QUESTION = "Question: Who designed the tower, and how tall is it? Answer in one sentence."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help=f"one of {', '.join(MODELS)} (tomesd.llm.weights), or a local Hugging Face folder")
    parser.add_argument("--encoder-dir", default=None, help="a trained K=4 checkpoint (encoder + LoRA)")
    parser.add_argument("--document", default=DOCUMENT, help="the text compressed (default: a paragraph on the "
                        "Eiffel Tower)")
    parser.add_argument("--question", default=QUESTION, help="the question kept uncompressed after it")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="markdown file for the answers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    head, tail = chat_parts(tokenizer, args.question)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=False, head=head)
    answers = {}
    for name, k in (("uncompressed", 1), ("K=2, mean", 2), ("K=4, mean", 4)):
        answers[name] = generate_text(model, tokenizer, args.document, tail, k=k, **options)[0]
    if args.encoder_dir is not None:
        encoder, trained = load_checkpoint(args.encoder_dir, model)
        answers["K=4, trained encoder + LoRA"] = generate_text(trained, tokenizer, args.document, tail, k=4,
                                                               encoder=encoder, **options)[0]
    document_tokens = len(tokenizer(args.document, add_special_tokens=False)["input_ids"])
    lines = [f"Model: `{args.model}`; document: {document_tokens} tokens (compressed), question kept; greedy, "
             f"{args.max_new_tokens} new tokens at most.", "", "| prompt | answer |", "| --- | --- |"]
    lines += [f"| {name} | {' '.join(text.split()).replace('|', '/')} |" for name, text in answers.items()]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return answers


if __name__ == "__main__":
    main()
