"""Training runs around :mod:`tomesd.llm.train`: a K-token encoder + LoRA adapters on a local Hugging Face
causal LM and a question-answering data set (a JSON-lines file or the built-in tree task), evaluated before
and after (the engine of ``tomesd train-ktoken`` and ``scripts/train_ktoken.py``), and the small Qwen2 the
miniature reproduction trains from scratch. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import torch

from tomesd.llm.encoder import KTokenEncoder
from tomesd.llm.task import QAExample, build_tree_tokenizer, tree_examples
from tomesd.llm.train import LengthCurriculum, accuracy, add_lora, save_checkpoint, train

__all__ = ["load_examples", "small_qwen2", "train_ktoken"]

TREE_EXAMPLES = 20000  # trees drawn for the built-in task


def load_examples(data: str | None, seed: int, tree_nodes: tuple[int, int] = (4, 12),
                  tree_questions: int = 1) -> list[QAExample]:
    """The training + evaluation examples, shuffled reproducibly.

    Args:
        data: a JSON-lines file of ``{context, question, answer}`` objects, or None for the tree task.
        seed: the shuffle's (or the trees') seed.
        tree_nodes: (min, max) tree sizes of the tree task.
        tree_questions: questions labelled per training context of the tree task.
    """
    if data is None:
        return tree_examples(TREE_EXAMPLES, *tree_nodes, seed=seed, questions=tree_questions)
    with open(data) as f:
        examples = [QAExample(**{key: row[key] for key in ("context", "question", "answer")})
                    for row in map(json.loads, filter(str.strip, f))]
    random.Random(seed).shuffle(examples)
    return examples


def train_ktoken(model_dir: str, out: str, examples: list[QAExample], tokenizer: Any | None = None, k: int = 4,
                 steps: int = 1000, batch_size: int = 16, lr: float = 1e-3, lora_rank: int = 8,
                 curriculum_start: int | None = None, ramp_fraction: float = 0.5, eval_count: int = 200,
                 seed: int = 0) -> dict[str, Any]:
    """Train, save the encoder + LoRA checkpoint and ``summary.json`` to ``out``; returns the summary.

    Args:
        model_dir: local directory of a Hugging Face causal LM.
        out: checkpoint directory.
        examples: the first ``eval_count`` are held out, the rest train.
        tokenizer: the tokenizer (default: the tree task's word-level one).
        k: block length: k context tokens become one.
        curriculum_start: longest context (tokens) admitted at the start (None: no curriculum).
        ramp_fraction: share of the steps until all lengths are admitted.

    Raises:
        ValueError: there are not more examples than ``eval_count``.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tree_tokenizer() if tokenizer is None else tokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if len(examples) <= eval_count:
        raise ValueError(f"need more than --eval-count={eval_count} examples, got {len(examples)}")
    held_out, training = examples[:eval_count], examples[eval_count:]
    lengths = [len(ids) for ids in tokenizer([e.context for e in training])["input_ids"]]
    start = curriculum_start if curriculum_start is not None else max(lengths)
    curriculum = LengthCurriculum(training, lengths, start, int(ramp_fraction * steps), seed=seed)

    before = accuracy(model, tokenizer, held_out, k)
    encoder = KTokenEncoder(model.get_input_embeddings().embedding_dim, k)
    model = add_lora(model, rank=lora_rank, alpha=2 * lora_rank)
    began = time.perf_counter()
    losses = train(model, tokenizer, curriculum, k, steps, batch_size, lr, encoder)
    minutes = (time.perf_counter() - began) / 60
    after = accuracy(model, tokenizer, held_out, k, encoder)
    save_checkpoint(out, encoder, model)
    last = losses[-20:]
    summary = {"k": k, "steps": steps, "train_minutes": minutes, "final_loss": sum(last) / len(last),
               "accuracy_mean_merge": before, "accuracy_trained": after, "eval_count": len(held_out)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def small_qwen2(vocab_size: int, hidden: int, layers: int) -> Any:
    """A small Qwen2 causal LM from scratch (random init, seeded by the caller): ``hidden // 32`` heads,
    ``hidden // 64`` key-value heads, 512 positions, tied embeddings, pad id 0 and end id 1 (the tree
    task's tokenizer)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

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
