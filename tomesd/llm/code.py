"""Real code on every machine, no download: continuing Python's own standard library source.

Each example cuts a source file at a line: the ``context_lines`` lines before the last ``tail_lines`` are
the context (compressed), those last lines stay uncompressed (the tail, the question of a
:class:`~tomesd.llm.task.QAExample`), and the next non-blank line is the answer to predict. Files are split
into training and held-out sets by a hash of their path inside the standard library, so the split is the
same on every machine with the same Python, and no held-out module is ever trained on.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from .compress import IGNORE_INDEX
from .encoder import KTokenEncoder
from .generate import generate_text
from .task import QAExample
from .train import answer_loss, encode_training_batch

__all__ = ["code_examples", "next_line_metrics", "split_files", "stdlib_files"]

# Skipped: the test suite (much of it data, not code) and installed third-party packages.
EXCLUDED_PARTS = ("test", "tests", "site-packages", "idlelib")


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The ``.py`` files under ``root`` (default: this Python's standard library), sorted, tests excluded."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & set(EXCLUDED_PARTS))


def split_files(files: list[Path], root: str | Path | None = None, held_out_share: float = 0.1) -> tuple[
        list[Path], list[Path]]:
    """(training files, held-out files): a file is held out when the hash of its path under ``root`` says so.

    Raises:
        ValueError: ``held_out_share`` outside (0, 1).
    """
    if not 0 < held_out_share < 1:
        raise ValueError(f"held_out_share must be in (0, 1), got {held_out_share}")
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    training, held_out = [], []
    for path in files:
        digest = hashlib.sha256(path.relative_to(root).as_posix().encode()).digest()
        (held_out if int.from_bytes(digest[:4], "big") / 2**32 < held_out_share else training).append(path)
    return training, held_out


def code_examples(
    files: list[Path], count: int, seed: int, context_lines: int = 32, tail_lines: int = 4
) -> list[QAExample]:
    """``count`` cuts of random ``files`` at random lines (reproducible by ``seed``).

    Each is ``QAExample(context, question=tail, answer=next line)``; every part keeps its line breaks, the
    answer without its own. Cuts whose context holds no code, or whose next line is blank, are not used.

    Raises:
        ValueError: no file long enough for one cut.
    """
    rng = random.Random(seed)
    span = context_lines + tail_lines
    sources = [lines for lines in (p.read_text(encoding="utf-8", errors="replace").splitlines(True) for p in files)
               if len(lines) > span]
    if not sources:
        raise ValueError(f"no file has more than {span} lines (context_lines + tail_lines)")
    examples: list[QAExample] = []
    while len(examples) < count:
        lines = rng.choice(sources)
        cut = rng.randrange(span, len(lines))
        context = "".join(lines[cut - span : cut - tail_lines])
        answer = lines[cut].rstrip("\n")
        if answer.strip() and len(context.strip()) >= 16:
            examples.append(QAExample(context, "".join(lines[cut - tail_lines : cut]), answer))
    return examples


@torch.no_grad()
def next_line_metrics(
    model: Any,
    tokenizer: Any,
    examples: Sequence[QAExample],
    k: int,
    encoder: KTokenEncoder | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """How well ``model`` continues each example's tail with its next line, the context compressed by ``k``.

    Returns:
        ``loss``: the cross-entropy per answer token (teacher-forced, averaged over all answer tokens);
        ``exact_match``: the share of examples whose greedy continuation's first line is the next line exactly.
    """
    loss_sum, tokens, matches = 0.0, 0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc=f"next-line eval K={k}", unit="batch"):
        chunk = list(examples[start : start + batch_size])
        batch = encode_training_batch(tokenizer, chunk, answer_eos=False)
        labelled = int((batch["tail_labels"] != IGNORE_INDEX).sum())
        loss_sum += float(answer_loss(model, batch, k, encoder)) * labelled
        tokens += labelled
        budget = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in chunk) + 2
        lines = generate_text(model, tokenizer, [e.context for e in chunk], [e.question for e in chunk], k, encoder,
                              max_new_tokens=budget, do_sample=False)
        matches += sum(line.split("\n")[0] == e.answer for line, e in zip(lines, chunk))
    return {"loss": loss_sum / tokens, "exact_match": matches / len(examples)}
