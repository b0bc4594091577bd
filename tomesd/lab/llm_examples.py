"""One prompt answered by a real model uncompressed, at K=2 and K=4 (mean), and with a trained K=4 encoder:
the engine of ``tomesd llm-examples`` (and ``scripts/llm_examples.py``).

The document is compressed; the question stays uncompressed after it. Models with a chat template (the
Qwen2.5-Coder *Instruct* model) get the template around the prompt: its opening kept uncompressed before
the document (``head``), its closing after the question. Greedy decoding.
"""

from __future__ import annotations

from typing import Any

from tomesd.llm import generate_text
from tomesd.llm.tokens import chat_parts
from tomesd.llm.train import load_checkpoint

__all__ = ["DOCUMENT", "QUESTION", "answer_table", "answers"]

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


def answers(model: Any, tokenizer: Any, document: str, question: str, max_new_tokens: int = 40,
            encoder_dir: str | None = None) -> dict[str, str]:
    """Greedy answers per prompt setting: uncompressed, K=2 mean, K=4 mean and (with ``encoder_dir``, a
    trained K=4 checkpoint of encoder + LoRA) the trained encoder."""
    head, tail = chat_parts(tokenizer, question)
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, head=head)
    result = {}
    for name, k in (("uncompressed", 1), ("K=2, mean", 2), ("K=4, mean", 4)):
        result[name] = generate_text(model, tokenizer, document, tail, k=k, **options)[0]
    if encoder_dir is not None:
        encoder, trained = load_checkpoint(encoder_dir, model)
        result["K=4, trained encoder + LoRA"] = generate_text(trained, tokenizer, document, tail, k=4,
                                                              encoder=encoder, **options)[0]
    return result


def answer_table(model_name: str, document_tokens: int, max_new_tokens: int, answered: dict[str, str]) -> str:
    """The answers as markdown: one line on the setting, then a table of prompt setting and answer."""
    lines = [f"Model: `{model_name}`; document: {document_tokens} tokens (compressed), question kept; greedy, "
             f"{max_new_tokens} new tokens at most.", "", "| prompt | answer |", "| --- | --- |"]
    lines += [f"| {name} | {' '.join(text.split()).replace('|', '/')} |" for name, text in answered.items()]
    return "\n".join(lines)
